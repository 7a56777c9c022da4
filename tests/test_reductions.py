"""Reduced outputs (per_sample, sum, mean) at the sizes users run, against float64.

A float32 running sum that is exact on 64 rows drifts on 16 million elements: ONNX Runtime's
ReduceSum over every axis of a 16384 x 1000 sigmoid loss was 1.6e-3 off float64 (1.1e-2 at
65536 x 1000). The references here are float64 sums of the float64 numpy formulas
(tests/reference.py), computed in row chunks to bound memory.
"""

import numpy as np
import onnxruntime
import pytest
import tensorflow as tf

import focal_graph as fg
import reference
from exporting import exported
from focal_graph.reduction import per_sample_loss

SIZES = [(16384, 1000), (65536, 1000)]
VARIANTS = ("sparse_softmax", "softmax", "sigmoid")
CHUNK = 4096


def inputs(variant, shape, dtype, rng):
    """(y_true, logits) as a model would feed them; one-hot targets for softmax, 30% positives for sigmoid."""
    rows, classes = shape
    logits = (rng.standard_normal(shape, dtype=np.float32) * 3).astype(dtype)
    labels = rng.integers(0, classes, rows)
    if variant == "sparse_softmax":
        return labels, logits
    if variant == "softmax":
        targets = np.zeros(shape, dtype)
        targets[np.arange(rows), labels] = 1
        return targets, logits
    return (rng.random(shape, dtype=np.float32) < 0.3).astype(dtype), logits


def float64_reduced(variant, y_true, logits):
    """per_sample (float64), sum, mean from the float64 formula, chunk by chunk."""
    function = {"sparse_softmax": reference.sparse_softmax_focal, "softmax": reference.softmax_focal,
                "sigmoid": reference.sigmoid_focal}[variant]
    per_sample, elements = [], 0
    for start in range(0, len(logits), CHUNK):
        loss = function(y_true[start:start + CHUNK], logits[start:start + CHUNK], gamma=2.0, alpha=0.25)
        per_sample.append(loss.reshape(len(loss), -1).sum(axis=1))
        elements += loss.size
    per_sample = np.concatenate(per_sample)
    total = float(np.sum(per_sample))
    return {"per_sample": per_sample, "sum": total, "mean": total / elements}


def assert_reductions_close(got, want, rtol, what, per_sample_rtol=None):
    """Every reduced form within ``rtol`` of float64; ``per_sample_rtol`` (one per row), where
    given, replaces ``rtol`` for per_sample."""
    for form in ("per_sample", "sum", "mean"):
        actual = np.asarray(got[form], np.float64)
        assert np.isfinite(actual).all(), f"{what} {form}"
        relative = np.abs(actual - want[form]) / np.abs(want[form])
        bound = per_sample_rtol if form == "per_sample" and per_sample_rtol is not None else rtol
        excess = np.max(relative / bound)
        assert excess <= 1, f"{what} {form}: {np.max(relative):.2e} relative off float64 ({excess:.2f} x the bound)"


def softmax_per_sample_rtol(variant, y_true, logits):
    """The per-sample bound for rank-2 softmax losses, whose per_sample is the element loss:
    1e-5, or 8 float32 epsilons / (1 - p_t) where p_t is near 1. There ``log p_t`` and
    ``1 - exp(log p_t)`` are exact in absolute terms only (README, "Numerics"; measured worst
    7 eps / (1 - p_t) over three 65536 x 1000 draws). Sums and means are not affected."""
    if variant == "sigmoid":
        return None
    labels = y_true if variant == "sparse_softmax" else np.argmax(y_true, axis=-1)
    one_minus_p_t = []
    for start in range(0, len(logits), CHUNK):
        log_p = reference.log_softmax(logits[start:start + CHUNK].astype(np.float64))
        picked = np.take_along_axis(log_p, labels[start:start + CHUNK, None], axis=-1)[:, 0]
        one_minus_p_t.append(-np.expm1(picked))
    return np.maximum(1e-5, 8 * np.finfo(np.float32).eps / np.concatenate(one_minus_p_t))


@pytest.fixture(scope="module")
def onnx_sessions(tmp_path_factory):
    sessions = {}
    for variant in VARIANTS:
        out = tmp_path_factory.mktemp(variant) / "loss"
        exported(out, fg.FocalSpec(variant=variant, gamma=2.0, alpha=0.25), format="onnx", validate=False)
        sessions[variant] = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    return sessions


@pytest.mark.slow
@pytest.mark.parametrize("shape", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", VARIANTS)
def test_reduced_outputs_within_1e5_of_float64_in_onnx_runtime_and_tensorflow(onnx_sessions, variant, shape, rng):
    y_true, logits = inputs(variant, shape, np.float32, rng)
    want = float64_reduced(variant, y_true, logits)
    true_name = "labels" if variant == "sparse_softmax" else "targets"
    session = onnx_sessions[variant]
    got = dict(zip(["per_sample", "sum", "mean"], session.run(["per_sample", "sum", "mean"], {true_name: y_true, "logits": logits})))
    per_sample_rtol = softmax_per_sample_rtol(variant, y_true, logits)
    assert_reductions_close(got, want, 1e-5, f"ONNX Runtime {variant} {shape}", per_sample_rtol)
    loss = fg.SpecLoss(fg.FocalSpec(variant=variant, gamma=2.0, alpha=0.25))
    graph = tf.function(loss.forms, autograph=False)
    got = graph(tf.constant(y_true), tf.constant(logits))
    assert_reductions_close(got, want, 1e-5, f"TensorFlow {variant} {shape}", per_sample_rtol)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_float16_reduced_outputs_are_float32_finite_and_close(tmp_path, variant, rng):
    """A float16 sigmoid artifact's sum of 40000 x 100 losses was inf (float16 ends at 65504)."""
    out = tmp_path / "loss"
    exported(out, fg.FocalSpec(variant=variant, gamma=2.0, alpha=0.25, dtype="float16"), format="onnx", validate=False)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    y_true, logits = inputs(variant, (40000, 100), np.float16, rng)
    true_name = "labels" if variant == "sparse_softmax" else "targets"
    outputs = dict(zip(["loss", "per_sample", "sum", "mean"], session.run(None, {true_name: y_true, "logits": logits})))
    assert outputs["loss"].dtype == np.float16
    for form in ("per_sample", "sum", "mean"):
        assert outputs[form].dtype == np.float32, form
    want = float64_reduced(variant, y_true if variant == "sparse_softmax" else y_true.astype(np.float64),
                           logits.astype(np.float64))
    assert want["sum"] > 65504  # would overflow float16
    assert_reductions_close(outputs, want, 1e-3, f"ONNX Runtime float16 {variant}")


def test_library_reductions_of_16bit_losses_are_float32_and_finite():
    loss = tf.fill([40000, 100], tf.constant(2.0, tf.float16))
    for dtype in (tf.float16, tf.bfloat16):
        values = tf.cast(loss, dtype)
        for reduction in ("sum", "mean"):
            reduced = fg.reduce_loss(values, reduction)
            assert reduced.dtype == tf.float32
        assert float(fg.reduce_loss(values, "sum")) == 8e6
        assert float(fg.reduce_loss(values, "mean")) == 2.0
        assert per_sample_loss(values).dtype == tf.float32
    assert fg.reduce_loss(loss, "none").dtype == tf.float16


def test_sum_of_sixteen_million_equal_terms_is_exact():
    """float32(0.1) added 2**24 times: a sequential float32 sum gives 1935089 (15% high: numpy's
    cumsum, measured), the staged sum 1677721.6 to within a float32 row sum's rounding."""
    loss = tf.fill([16384, 1024], 0.1)
    assert float(fg.reduce_loss(loss, "sum")) == pytest.approx(float(np.float32(0.1)) * 2**24, rel=1e-6)
