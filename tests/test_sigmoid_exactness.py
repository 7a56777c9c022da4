"""The sigmoid focal loss from logits is exact for confident predictions, in TensorFlow and in the
exported ONNX model run by bare onnxruntime.

References: float64 numpy (`reference.sigmoid_focal`, log p = -logaddexp(0, -x)), TensorFlow's own
`sigmoid_cross_entropy_with_logits`, and torchvision's focal-loss identity
FL / CE = (1 - p_t)**gamma * alpha_t (test/test_ops.py, TestFocalLoss, rtol 1e-5).
"""

import numpy as np
import onnxruntime
import pytest
import tensorflow as tf

import focal_graph as fg
import reference
from exporting import exported

# -80..80 every 0.01 (float32-exact grid points), plus the rows other projects' tests failed on
LOGITS = np.concatenate([np.arange(-8000, 8001) / 100.0, [5.128, 12.0, 16.0, 16.6, 17.0, 30.0, 40.0, -17.0, -30.0]]).astype(np.float32)
TARGETS = (0.0, 1.0, 0.3)
GAMMAS = (0.0, 0.5, 2.0)
ALPHAS = (None, 0.25)
RTOL = 1e-5
FLOOR = 1e-30  # the relative error is measured wherever the true loss is above this


def grid():
    """(targets, logits) of shape (len(LOGITS), 3): every logit against each target."""
    logits = np.repeat(LOGITS[:, None], len(TARGETS), axis=1)
    targets = np.broadcast_to(np.array(TARGETS, np.float32), logits.shape).copy()
    return targets, logits


def assert_relatively_exact(got, want, what):
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), what
    counted = want > FLOOR
    relative = np.abs(got[counted] - want[counted]) / want[counted]
    worst = int(np.argmax(relative))
    assert relative[worst] <= RTOL, (
        f"{what}: relative error {relative[worst]:.2e} at logit {np.broadcast_to(LOGITS[:, None], want.shape)[counted][worst]}"
    )


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_library_matches_float64_for_every_logit(gamma, alpha):
    targets, logits = grid()
    got = fg.sigmoid_focal_loss(targets, logits, gamma=gamma, alpha=alpha).numpy()
    want = reference.sigmoid_focal(targets, logits, gamma=gamma, alpha=alpha)
    assert_relatively_exact(got, want, f"TensorFlow, gamma={gamma}, alpha={alpha}")


@pytest.mark.slow
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_exported_onnx_matches_float64_for_every_logit(tmp_path, gamma, alpha):
    exported(tmp_path / "loss", fg.FocalSpec(variant="sigmoid", gamma=gamma, alpha=alpha), format="onnx", validate=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "loss" / "model.onnx"), providers=["CPUExecutionProvider"])
    targets, logits = grid()
    got = session.run(["loss"], {"targets": targets, "logits": logits})[0]
    want = reference.sigmoid_focal(targets, logits, gamma=gamma, alpha=alpha)
    assert_relatively_exact(got, want, f"ONNX Runtime, gamma={gamma}, alpha={alpha}")
    big = np.array([[1e4, -1e4, 1e4, -1e4]], np.float32)
    both = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
    finite = session.run(["loss"], {"targets": both, "logits": big})[0]
    assert np.isfinite(finite).all()
    np.testing.assert_allclose(finite[0], reference.sigmoid_focal(both, big, gamma=gamma, alpha=alpha)[0], rtol=RTOL)


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_gamma_zero_equals_tensorflows_sigmoid_cross_entropy(target):
    """At gamma 0 the focal loss is binary cross-entropy; TensorFlow's own kernel is within 1e-9
    of float64 at the logits where x - softplus(x) lost every digit (5.128, 12, 16, 40)."""
    logits = np.array([[5.128, 12.0, 16.0, 40.0, -5.128, -12.0, -16.0, -40.0]], np.float32)
    targets = np.full_like(logits, target)
    ours = fg.sigmoid_focal_loss(targets, logits, gamma=0.0).numpy()
    theirs = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_torchvision_identity_focal_over_cross_entropy():
    """torchvision's own check: FL / CE = (1 - p_t)**gamma * alpha_t, rtol 1e-5."""
    targets, logits = grid()
    gamma, alpha = 2.0, 0.25
    focal = fg.sigmoid_focal_loss(targets, logits, gamma=gamma, alpha=alpha).numpy().astype(np.float64)
    ce = fg.sigmoid_focal_loss(targets, logits, gamma=0.0).numpy().astype(np.float64)
    x, y = logits.astype(np.float64), targets.astype(np.float64)
    p = np.exp(-np.logaddexp(0.0, -x))
    q = np.exp(-np.logaddexp(0.0, x))
    factor = (y * q + (1 - y) * p) ** gamma * (y * alpha + (1 - y) * (1 - alpha))
    counted = factor * ce > FLOOR
    np.testing.assert_allclose(focal[counted] / ce[counted], factor[counted], rtol=1e-5)


@pytest.mark.parametrize("target", [0.0, 0.3, 1.0])
def test_gradient_equals_tensorflows_including_at_zero(target):
    """dBCE/dx = p - y everywhere, x = 0 included (an abs() there would give 0, and a
    zero-initialised classification head would never learn)."""
    logits = tf.Variable([[0.0, 1e-30, -1e-30, 3.0, -3.0, 40.0, -40.0]])
    targets = tf.fill(logits.shape, target)
    with tf.GradientTape(persistent=True) as tape:
        ours = fg.sigmoid_focal_loss(targets, logits, gamma=0.0)
        theirs = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    np.testing.assert_allclose(tape.gradient(ours, logits).numpy(), tape.gradient(theirs, logits).numpy(), rtol=1e-6, atol=1e-30)
    assert tape.gradient(ours, logits).numpy()[0, 0] == pytest.approx(0.5 - target)


def test_small_alpha_balance_keeps_its_digits():
    """alpha_t = y alpha + (1 - y)(1 - alpha) at alpha = 1e-4 and 0.9999, y = 1 and 0: no
    cancellation in either order of the terms."""
    logits = np.array([[2.0, -2.0]], np.float32)
    for alpha in (1e-4, 0.9999):
        for target in (0.0, 1.0):
            targets = np.full_like(logits, target)
            got = fg.sigmoid_focal_loss(targets, logits, gamma=2.0, alpha=alpha).numpy()
            np.testing.assert_allclose(got, reference.sigmoid_focal(targets, logits, gamma=2.0, alpha=alpha), rtol=1e-6)
