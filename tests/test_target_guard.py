"""The target check is arithmetic, not a select: ``loss - sqrt(y (1 - y)) * t`` (t = 0, or NaN on a
runtime shape mismatch; `focal_graph.focal._target_guard`). A mistake in it would be silent, a
number where NaN belongs or NaN where a number does, so it is checked here in ONNX Runtime, the
backend it was written for, against a float64 numpy formula of its own (``0 <= y <= 1``).
"""

import numpy as np
import onnxruntime
import pytest
import tensorflow as tf

import focal_graph as fg
import reference

BAD = np.array([-0.5, 1.5, np.nan, np.inf, -np.inf, 1e30, -1e30, 1.0 + 2.0**-23, -(2.0**-24)], np.float32)
EDGES = np.array([0.0, 1.0, -0.0, 2.0**-24, 1.0 - 2.0**-24], np.float32)
FORMULAS = {"sigmoid": reference.sigmoid_focal, "softmax": reference.softmax_focal}


def session(spec):
    from export.onnx_conversion import convert

    return onnxruntime.InferenceSession(convert(spec).SerializeToString(), providers=["CPUExecutionProvider"])


def case(rng, variant, rank, num_classes=5):
    """Targets (..., C) with bad values at a few elements and the edges 0, 1, -0 elsewhere; logits
    of the same shape."""
    shape = (6,) + (3,) * (rank - 2) + (num_classes,)
    logits = (rng.normal(size=shape) * 4).astype(np.float32)
    if variant == "sigmoid":
        targets = rng.uniform(size=shape).astype(np.float32)
    else:
        targets = rng.dirichlet(np.ones(num_classes), shape[:-1]).astype(np.float32)
    flat = targets.reshape(-1)
    places = rng.choice(flat.size, BAD.size + EDGES.size, replace=False)
    flat[places[:BAD.size]] = BAD
    flat[places[BAD.size:]] = EDGES
    return targets, logits


def expected_nan(targets, variant):
    valid = (targets.astype(np.float64) >= 0.0) & (targets.astype(np.float64) <= 1.0)
    return ~valid if variant == "sigmoid" else ~valid.all(axis=-1)


@pytest.mark.slow
@pytest.mark.parametrize("rank", [2, 4])
@pytest.mark.parametrize("variant", ["sigmoid", "softmax"])
def test_onnx_runtime_gives_nan_exactly_at_targets_outside_0_1(rng, variant, rank):
    spec = fg.FocalSpec(variant=variant, rank=rank, **({"alpha": 0.25} if variant == "sigmoid" else {}))
    targets, logits = case(rng, variant, rank)
    loss = session(spec).run(["loss"], {"targets": targets, "logits": logits})[0]
    nan = expected_nan(targets, variant)
    np.testing.assert_array_equal(np.isnan(loss), nan)
    clean = np.where(np.isfinite(targets) & (targets >= 0) & (targets <= 1), targets, 0.0)
    want = FORMULAS[variant](clean, logits, **({"alpha": 0.25} if variant == "sigmoid" else {}))
    np.testing.assert_allclose(loss[~nan], want[~nan], rtol=1e-5, atol=1e-30)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sigmoid", "softmax"])
def test_onnx_runtime_never_broadcasts_targets_of_another_shape(rng, variant):
    """NaN everywhere, or a refusal: the inputs' declared dims (N, C) tie targets to logits, and
    ONNX Runtime's buffer planner may reject the mismatch itself (it does for softmax)."""
    targets, logits = case(rng, variant, 2)
    targets = np.clip(np.nan_to_num(targets[:1]), 0.0, 1.0)  # (1, C): valid, and would broadcast
    try:
        loss = session(fg.FocalSpec(variant=variant)).run(["loss"], {"targets": targets, "logits": logits})[0]
    except onnxruntime.capi.onnxruntime_pybind11_state.Fail as error:
        assert "Shape mismatch" in str(error)
    else:
        assert loss.shape == logits.shape[:2 if variant == "sigmoid" else 1] and np.isnan(loss).all()


def gradients(function, targets, logits):
    @tf.function(autograph=False)
    def both(targets, logits):
        with tf.GradientTape() as tape:
            tape.watch([targets, logits])
            loss = function(targets, logits)
        return tape.gradient(loss, [targets, logits])

    return [g.numpy() for g in both(tf.constant(targets), tf.constant(logits))]


@pytest.mark.parametrize("function", [fg.sigmoid_focal_loss, fg.softmax_focal_loss])
def test_gradient_into_targets_is_finite_at_targets_0_and_1(function):
    """The check adds no gradient of its own: sqrt's derivative is infinite at y (1 - y) = 0."""
    into_targets, into_logits = gradients(function, [[0.0, 1.0, 0.0], [0.3, 0.5, 0.2]], [[0.5, -1.0, 2.0], [1.0, -2.0, 0.0]])
    assert np.isfinite(into_targets).all() and np.isfinite(into_logits).all()


def test_gradient_into_logits_is_zero_at_a_bad_target():
    """As the select's it replaced: the element's NaN loss sends nothing back."""
    _, into_logits = gradients(fg.sigmoid_focal_loss, [[0.3, 1.5, -0.5]], [[1.0, -2.0, 0.5]])
    np.testing.assert_array_equal(into_logits[0, 1:], [0.0, 0.0])
    assert into_logits[0, 0] != 0.0
