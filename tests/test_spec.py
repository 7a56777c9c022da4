"""FocalSpec: validation naming the field, defaults made explicit, exact JSON round trip."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import focal_graph as fg
from focal_graph.spec import FocalSpec
import reference

EXAMPLES = [
    FocalSpec(variant="sparse_softmax"),
    FocalSpec(variant="sparse_softmax", num_classes=4, gamma=[0.0, 0.5, 2.0, 5.0], alpha=0.25, ignore_index=-100,
              reduction="mean", rank=4, dtype="float16"),
    FocalSpec(variant="softmax", from_logits=False, epsilon=1e-6, label_smoothing=0.1, class_weight=[1.0, 2.5]),
    FocalSpec(variant="sigmoid", alpha=[0.1, 0.9, 0.3], class_counts=[10, 20, 30], weighting="effective_number",
              beta=0.99, rank=3, dtype="float64"),
    FocalSpec(preset="multilabel_lsr", class_counts=[1, 2, 3]),
    FocalSpec(preset="multi_category", class_counts=[100.5, 200, 50, 10], gamma=1.0),
    FocalSpec(preset="sparse_softmax", alpha=[1.0, 0.5, 2.0], rank=3),
]


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda s: s.name)
def test_json_round_trip_is_exact(spec):
    text = spec.to_json()
    again = FocalSpec.from_json(text)
    assert again == spec
    assert again.to_json() == text


def test_defaults_are_explicit_after_construction():
    spec = FocalSpec(variant="sparse_softmax")
    assert (spec.gamma, spec.from_logits, spec.reduction, spec.rank, spec.dtype) == (2.0, True, "none", 2, "float32")
    assert spec.epsilon is None and spec.label_smoothing is None  # not used by this loss
    assert FocalSpec(variant="softmax", from_logits=False).epsilon == 1e-7
    assert FocalSpec(preset="sparse_softmax", alpha=[1, 1]).reduction == "mean"
    assert FocalSpec(variant="sigmoid", class_counts=[1, 2]).weighting == "inverse_frequency"


def test_num_classes_inferred_from_per_class_values():
    assert FocalSpec(variant="softmax", alpha=[0.1, 0.2, 0.3]).num_classes == 3
    assert FocalSpec(preset="multi_category", class_counts=[5, 6]).num_classes == 2


def test_hyphenated_keys_are_accepted():
    spec = FocalSpec.from_dict({"variant": "sparse_softmax", "ignore-index": -1, "from-logits": True})
    assert spec.ignore_index == -1


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(), "variant/preset"),
        (dict(variant="sigmoid", preset="multi_category", class_counts=[1]), "variant/preset"),
        (dict(variant="hinge"), "variant"),
        (dict(preset="seed_004"), "preset"),
        (dict(variant="softmax", num_classes=3, alpha=[1.0, 2.0]), "alpha"),
        (dict(variant="softmax", gamma=[1.0, 2.0], alpha=[1.0, 2.0, 3.0]), "alpha"),
        (dict(variant="softmax", gamma=-1.0), "gamma"),
        (dict(variant="sigmoid", alpha=2.0), "alpha"),
        (dict(variant="softmax", class_counts=[1, 0]), "class_counts"),
        (dict(variant="softmax", class_counts=[1, 2], class_weight=[1.0, 1.0]), "class_counts"),
        (dict(variant="softmax", weighting="effective_number"), "weighting"),
        (dict(variant="softmax", class_counts=[1, 2], beta=0.9), "beta"),
        (dict(variant="softmax", class_counts=[1, 2], weighting="effective_number", beta=1.0), "beta"),
        (dict(variant="softmax", class_counts=[1, 2], weighting="log"), "weighting"),
        (dict(variant="softmax", ignore_index=-1), "ignore_index"),
        (dict(variant="sparse_softmax", label_smoothing=0.1), "label_smoothing"),
        (dict(variant="sparse_softmax", epsilon=1e-7), "epsilon"),
        (dict(variant="softmax", from_logits=False, epsilon=0.6), "epsilon"),
        (dict(variant="softmax", from_logits=1), "from_logits"),
        (dict(variant="softmax", reduction="avg"), "reduction"),
        (dict(variant="softmax", rank=1), "rank"),
        (dict(variant="softmax", rank=2.0), "rank"),
        (dict(variant="softmax", dtype="int32"), "dtype"),
        (dict(variant="softmax", num_classes=0), "num_classes"),
        (dict(variant="sparse_softmax", ignore_index=1.5), "ignore_index"),
        (dict(preset="multi_category"), "class_counts"),
        (dict(preset="multi_category", class_counts=[1, 2], from_logits=True), "from_logits"),
        (dict(preset="multi_category", class_counts=[1, 2], alpha=0.25), "alpha"),
        (dict(preset="sparse_softmax"), "alpha"),
        (dict(preset="sparse_softmax", alpha=[1, 1], ignore_index=0), "ignore_index"),
    ],
)
def test_invalid_field_raises_naming_it(fields, named):
    with pytest.raises(ValueError, match=rf"^{named}: "):
        FocalSpec(**fields)


def test_from_json_rejects_unknown_fields_and_versions():
    with pytest.raises(ValueError, match=r"^gama: not a FocalSpec field"):
        FocalSpec.from_json(json.dumps({"variant": "softmax", "gama": 2}))
    with pytest.raises(ValueError, match=r"^spec_version: "):
        FocalSpec.from_json(json.dumps({"spec_version": 99, "variant": "softmax"}))
    with pytest.raises(ValueError, match=r"^spec: not valid JSON"):
        FocalSpec.from_json("{variant: softmax")


def test_spec_module_imports_without_tensorflow():
    code = "import sys, focal_graph.spec as s; s.FocalSpec(variant='sigmoid'); assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda s: s.name)
def test_build_graph_signature_follows_the_spec(spec):
    labels, predictions = fg.build_graph(spec).input_signature
    assert predictions.shape.as_list() == [None] * (spec.rank - 1) + [spec.num_classes]
    assert predictions.dtype == tf.as_dtype(spec.dtype)
    assert predictions.name == ("logits" if spec.from_logits else "probabilities")
    if spec.kind[1] == "sparse_softmax":
        assert (labels.name, labels.dtype, labels.shape.rank) == ("labels", tf.int64, spec.rank - 1)
    else:
        assert (labels.name, labels.shape.as_list()) == ("targets", predictions.shape.as_list())


@pytest.mark.parametrize("weighting, beta", [("inverse_frequency", None), ("effective_number", 0.9), ("effective_number", 0.0)])
def test_spec_loss_applies_class_counts_as_weights(rng, weighting, beta):
    spec = FocalSpec(variant="sigmoid", class_counts=[10, 20, 40], weighting=weighting, beta=beta)
    weights = reference.inverse_frequency([10, 20, 40]) if beta is None else reference.effective_number([10, 20, 40], beta)
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    targets = rng.integers(0, 2, size=(5, 3)).astype(np.float32)
    want = reference.sigmoid_focal(targets, logits, class_weight=weights)
    np.testing.assert_allclose(fg.SpecLoss(spec)(targets, logits).numpy(), want, rtol=1e-5, atol=1e-7)
