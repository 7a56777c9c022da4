"""Default options compute what they computed before the options of issue 11 existed, bit for bit.

tests/data/defaults_regression.npz holds fixed inputs and the outputs of the code as it was
before (main at beaa1b2), made by

    PYTHONPATH=$PWD .venv/bin/python tests/data/make_defaults_regression.py

A change that legitimately changes the rounding of a default graph (a faster formulation)
regenerates that file with the command above, on the new code, and says so in its commit.
"""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from focal_graph.graph import SpecLoss
from focal_graph.spec import FocalSpec

STORED = np.load(Path(__file__).parent / "data" / "defaults_regression.npz")
KEYS = sorted({name.split("/")[0] for name in STORED.files})
FORMS = ("loss", "per_sample", "sum", "mean")


def _stored(key):
    spec = FocalSpec.from_json(str(STORED[f"{key}/spec"]))
    return spec, STORED[f"{key}/y_true"], STORED[f"{key}/predictions"]


@pytest.mark.parametrize("key", KEYS)
def test_default_graph_outputs_are_unchanged_bit_for_bit(key):
    spec, y_true, predictions = _stored(key)
    forms = SpecLoss(spec).forms(tf.constant(y_true), tf.constant(predictions))
    for form in FORMS:
        np.testing.assert_array_equal(forms[form].numpy(), STORED[f"{key}/tf/{form}"], err_msg=f"{key} {form}")


@pytest.mark.slow
@pytest.mark.parametrize("key", ["variant_sparse_softmax_r4", "variant_softmax", "variant_sigmoid", "preset_multilabel_lsr"])
def test_default_onnx_outputs_are_unchanged_bit_for_bit(key):
    from export.onnx_conversion import convert
    from export.runtime import open_session

    spec, y_true, predictions = _stored(key)
    session = open_session(convert(spec).SerializeToString(), "cpu")
    forms = session.run(dict(zip(spec.input_names, (y_true, predictions))))
    for form in FORMS:
        np.testing.assert_array_equal(forms[form], STORED[f"{key}/onnx/{form}"], err_msg=f"{key} {form}")
