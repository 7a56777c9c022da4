"""Store what the default graphs compute, to prove later changes leave them bit for bit.

Run from the repository root, on the code whose outputs are to be kept:

    PYTHONPATH=$PWD .venv/bin/python tests/data/make_defaults_regression.py

It writes tests/data/defaults_regression.npz: for each spec below, fixed inputs (a seeded
generator, ranks 2 and 4, with large logits, ties and ignored labels) and the four forms of the
TensorFlow graph (`build_graph`'s `SpecLoss.forms`) and of the ONNX model (`export.onnx_conversion.
convert`, run by ONNX Runtime's CPU provider). tests/test_defaults_regression.py compares.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

from export.onnx_conversion import convert
from export.runtime import open_session
from focal_graph.graph import SpecLoss
from focal_graph.spec import FocalSpec

SPECS = {
    "variant_sparse_softmax": FocalSpec(variant="sparse_softmax", ignore_index=-1, alpha=[0.25, 1.0, 0.5, 2.0]),
    "variant_sparse_softmax_r4": FocalSpec(variant="sparse_softmax", ignore_index=255, rank=4),
    "variant_softmax": FocalSpec(variant="softmax", label_smoothing=0.1),
    "variant_softmax_r4": FocalSpec(variant="softmax", rank=4, class_counts=[5, 10, 20, 40]),
    "variant_sigmoid": FocalSpec(variant="sigmoid", alpha=0.25),
    "variant_sigmoid_r4": FocalSpec(variant="sigmoid", rank=4, gamma=[0.5, 2.0, 0.0, 1.0]),
    "variant_sigmoid_probs": FocalSpec(variant="sigmoid", from_logits=False),
    "preset_multilabel_lsr": FocalSpec(preset="multilabel_lsr", class_counts=[5, 10, 20, 40]),
    "preset_multi_category": FocalSpec(preset="multi_category", class_counts=[100, 200, 50, 10]),
    "preset_sparse_softmax": FocalSpec(preset="sparse_softmax", alpha=[1.0, 2.0, 0.5, 1.0]),
}
FORMS = ("loss", "per_sample", "sum", "mean")


def inputs(spec: FocalSpec, rng: np.random.Generator):
    shape = (6,) + (3,) * (spec.rank - 2) + (4,)
    logits = (rng.normal(size=shape) * 4).astype(np.float32)
    logits.reshape(-1, 4)[0] = [30.0, -30.0, 0.0, 80.0]  # large logits
    logits.reshape(-1, 4)[1] = 1.5  # ties
    if spec.sparse:
        y_true = rng.integers(0, 4, size=shape[:-1]).astype(np.int64)
        if spec.ignore_index is not None:
            y_true.reshape(-1)[2] = spec.ignore_index
    else:
        y_true = rng.uniform(size=shape).astype(np.float32)
        y_true.reshape(-1, 4)[3] = [0.0, 1.0, 0.0, 1.0]
    predictions = logits if spec.from_logits else tf.nn.sigmoid(logits).numpy() if spec.multi_label else tf.nn.softmax(logits).numpy()
    return y_true, predictions


def main() -> None:
    rng = np.random.default_rng(11)
    stored = {}
    for key, spec in SPECS.items():
        y_true, predictions = inputs(spec, rng)
        stored[f"{key}/spec"] = np.array(spec.to_json())
        stored[f"{key}/y_true"], stored[f"{key}/predictions"] = y_true, predictions
        forms = SpecLoss(spec).forms(tf.constant(y_true), tf.constant(predictions))
        session = open_session(convert(spec).SerializeToString(), "cpu")
        onnx_forms = session.run(dict(zip(spec.input_names, (y_true, predictions))))
        for form in FORMS:
            stored[f"{key}/tf/{form}"] = forms[form].numpy()
            stored[f"{key}/onnx/{form}"] = onnx_forms[form]
    np.savez_compressed(Path(__file__).with_name("defaults_regression.npz"), **stored)


if __name__ == "__main__":
    main()
