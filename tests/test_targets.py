"""Targets outside [0, 1] never give a silent number (the softmax and sigmoid variants).

Sigmoid targets of -1 (a common "ignore this anchor" encoding) gave 13.9, targets of 2 gave -0.69,
softmax targets [-1, 2, 0] gave -0.39. Now, as for sparse labels out of range: NaN at that position
inside graphs (which survives ONNX export) and a ValueError naming the value when called eagerly.
"""

import numpy as np
import onnxruntime
import pytest
import tensorflow as tf

import focal_graph as fg
import reference
from exporting import exported, run_cli

BAD = (-1.0, 2.0, np.nan)
LOSSES = {"sigmoid": (fg.sigmoid_focal_loss, reference.sigmoid_focal), "softmax": (fg.softmax_focal_loss, reference.softmax_focal)}


def targets_with(bad, variant):
    """Three positions of three classes; the middle position holds the bad value at class 1."""
    targets = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
    if variant == "sigmoid":
        targets[0] = [0.3, 1.0, 0.0]
    targets[1, 1] = bad
    return targets


LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0], [-4.0, 1.0, 1.0]], np.float32)


def nan_where_bad(loss, variant):
    """The positions that must be NaN: (1, 1) for sigmoid (per class), row 1 for softmax."""
    expected = np.zeros(loss.shape, bool)
    expected[(1, 1) if variant == "sigmoid" else 1] = True
    return expected


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("variant", sorted(LOSSES))
def test_eagerly_a_target_outside_0_1_raises_naming_it(variant, bad):
    function, _ = LOSSES[variant]
    with pytest.raises(ValueError, match=r"targets: (-1\.0|2\.0|nan) at index \(1, 1\) is not a probability in \[0, 1\]"):
        function(targets_with(bad, variant), LOGITS)


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("variant", sorted(LOSSES))
def test_in_a_graph_a_bad_target_gives_nan_at_its_position_only(variant, bad):
    function, formula = LOSSES[variant]
    graph = tf.function(lambda y, x: function(y, x), autograph=False)
    targets = targets_with(bad, variant)
    loss = graph(tf.constant(targets), tf.constant(LOGITS)).numpy()
    expected_nan = nan_where_bad(loss, variant)
    np.testing.assert_array_equal(np.isnan(loss), expected_nan)
    clean = targets.copy()
    clean[1, 1] = 0.0
    np.testing.assert_allclose(loss[~expected_nan], formula(clean, LOGITS)[~expected_nan], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(LOSSES))
def test_exported_onnx_gives_nan_at_bad_targets(tmp_path, variant):
    exported(tmp_path / "loss", fg.FocalSpec(variant=variant, label_smoothing=0.1), format="onnx", validate=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "loss" / "model.onnx"), providers=["CPUExecutionProvider"])
    for bad in BAD:
        loss = session.run(["loss"], {"targets": targets_with(bad, variant), "logits": LOGITS})[0]
        np.testing.assert_array_equal(np.isnan(loss), nan_where_bad(loss, variant), err_msg=f"target {bad}")


def test_targets_0_and_1_exactly_are_valid_and_smoothing_applies_after_the_check():
    targets = np.array([[0.0, 1.0]], np.float32)
    loss = fg.sigmoid_focal_loss(targets, np.array([[0.5, -0.5]], np.float32), label_smoothing=0.2).numpy()
    assert np.isfinite(loss).all()


@pytest.mark.slow
@pytest.mark.parametrize("bad", BAD)
def test_eval_refuses_bad_targets_in_one_line(tmp_path, bad):
    exported(tmp_path / "loss", fg.FocalSpec(variant="sigmoid"), format="onnx", validate=False)
    np.save(tmp_path / "logits.npy", LOGITS)
    np.save(tmp_path / "targets.npy", targets_with(bad, "sigmoid"))
    result = run_cli("eval", tmp_path / "loss", "--predictions", tmp_path / "logits.npy",
                     "--labels", tmp_path / "targets.npy", "--out", tmp_path / "losses.npy")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--labels" in lines[0] and "row 1" in lines[0], result.stderr
    assert not (tmp_path / "losses.npy").exists()
