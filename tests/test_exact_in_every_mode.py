"""The sigmoid focal loss is exact in every way TensorFlow runs it, not only eagerly.

Grappler (every `tf.function`, every loaded SavedModel) and XLA (``jit_compile=True``) rewrite
arithmetic: a compensated ``log(u) - ((u - 1) - e)`` for log(1 + e) came out 2x the true loss
for |x| >= 16.6 under `tf.function`, and 0.0 under XLA on a (1, 1) input and in a loaded
SavedModel. So the grid of tests/test_sigmoid_exactness.py (logits -80..80, targets 0, 1, 0.3,
gamma 0, 0.5, 2, alpha None and 0.25) runs in each of the ways users run the loss: eagerly, in
`tf.function` with Grappler's defaults, in ``tf.function(jit_compile=True)``, through a saved
and reloaded SavedModel, and in Keras ``evaluate``/``fit`` compiled with ``jit_compile`` False
and True. Values are checked 1e-5 relative wherever the float64 loss exceeds 1e-30; gradients
1e-4 relative to the float64 analytic gradient written below.

References: `reference.sigmoid_focal` (float64 numpy) for the values; for the gradient, with
``p = sigmoid(x)``, ``CE = -(y log p + (1 - y) log(1 - p))``, ``q = y (1 - p) + (1 - y) p`` and
``a_t`` RetinaNet's balance::

    dL/dx = a_t (gamma q**(gamma - 1) dq/dx CE + q**gamma dCE/dx),
    dCE/dx = p - y,  dq/dx = (1 - 2y) p (1 - p).

For y = 0 and y = 1 both terms have the same sign; for y = 0.3 they cancel where the gradient
changes sign, so the error is measured against the sum of the terms' magnitudes (the gradient's
own condition), which for y in {0, 1} is the gradient itself.
"""

import numpy as np
import pytest
import tensorflow as tf

import focal_graph as fg
import reference
from test_sigmoid_exactness import ALPHAS, FLOOR, GAMMAS, LOGITS, RTOL, TARGETS, grid

GRADIENT_RTOL = 1e-4
MODES = ("eager", "tf.function", "jit_compile", "saved_model")


def analytic_gradient(targets, logits, gamma, alpha):
    """dL/dx in float64 and the sum of its two terms' magnitudes (see the module docstring)."""
    x, y = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    log_p, log_q = -np.logaddexp(0.0, -x), -np.logaddexp(0.0, x)
    p, p_negative = np.exp(log_p), np.exp(log_q)
    cross_entropy = -(y * log_p + (1 - y) * log_q)
    q = y * p_negative + (1 - y) * p
    d_cross_entropy = np.where(y == 1.0, -p_negative, p - y)  # p - 1 without cancellation at y = 1
    d_q = (1 - 2 * y) * p * p_negative
    balance = 1.0 if alpha is None else y * alpha + (1 - y) * (1 - alpha)
    focusing = gamma * q ** (gamma - 1.0) * d_q * cross_entropy if gamma else np.zeros_like(x)
    direct = q**gamma * d_cross_entropy
    return balance * (focusing + direct), balance * (np.abs(focusing) + np.abs(direct))


def assert_within(got, want, scale, rtol, targets, logits, what):
    """|got - want| <= rtol * scale wherever scale (the float64 value's size) is above FLOOR."""
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), what
    counted = scale > FLOOR
    assert counted.any(), f"{what}: nothing above {FLOOR}"
    relative = np.abs(got[counted] - want[counted]) / scale[counted]
    worst = int(np.argmax(relative))
    at = np.broadcast_to(logits, want.shape)[counted][worst], np.broadcast_to(targets, want.shape)[counted][worst]
    assert relative[worst] <= rtol, f"{what}: off by {relative[worst]:.2e} relative at logit, target {at}"


def assert_values(got, targets, logits, gamma, alpha, what):
    want = reference.sigmoid_focal(targets, logits, gamma=gamma, alpha=alpha)
    assert_within(got, want, want, RTOL, targets, logits, f"{what}: loss")


def assert_gradients(got, targets, logits, gamma, alpha, what):
    want, scale = analytic_gradient(targets, logits, gamma, alpha)
    assert_within(got, want, scale, GRADIENT_RTOL, targets, logits, f"{what}: gradient")


def loss_and_gradient(gamma, alpha):
    """A function of (targets, logits) -> (loss, dsum(loss)/dlogits), the loss's own gradient
    per element since each element's loss depends on its own logit only."""

    def compute(targets, logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = fg.sigmoid_focal_loss(targets, logits, gamma=gamma, alpha=alpha)
        return loss, tape.gradient(loss, logits)

    return compute


SIGNATURE = [tf.TensorSpec([None, None], tf.float32, name="targets"), tf.TensorSpec([None, None], tf.float32, name="logits")]


def runner(mode, gamma, alpha, tmp_path):
    compute = loss_and_gradient(gamma, alpha)
    if mode == "eager":
        return compute
    if mode == "tf.function":
        return tf.function(compute, input_signature=SIGNATURE)
    if mode == "jit_compile":
        return tf.function(compute, jit_compile=True)  # traced per input shape, as Keras's XLA steps are
    module = tf.Module()
    module.loss_and_gradient = tf.function(compute, input_signature=SIGNATURE)
    tf.saved_model.save(module, str(tmp_path / "saved_model"))
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    return loaded.loss_and_gradient


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_sigmoid_grid_is_exact(tmp_path, mode, gamma, alpha):
    run = runner(mode, gamma, alpha, tmp_path)
    targets, logits = grid()
    loss, gradient = run(tf.constant(targets), tf.constant(logits))
    what = f"{mode}, gamma={gamma}, alpha={alpha}"
    assert_values(loss.numpy(), targets, logits, gamma, alpha, what)
    assert_gradients(gradient.numpy(), targets, logits, gamma, alpha, what)
    # the shapes XLA once got wrong: one element (0.0 there), and two
    for x, y in ((-18.0, 0.0), (18.0, 1.0), (-16.0, 0.0), (-12.0, 0.0)):
        for shape in ((1, 1), (1, 2)):
            small_logits, small_targets = np.full(shape, x, np.float32), np.full(shape, y, np.float32)
            loss, gradient = run(tf.constant(small_targets), tf.constant(small_logits))
            assert_values(loss.numpy(), small_targets, small_logits, gamma, alpha, f"{what}, {shape} input")
            assert_gradients(gradient.numpy(), small_targets, small_logits, gamma, alpha, f"{what}, {shape} input")


# ---------------------------------------------------------------------------------------------
# Keras: evaluate and fit, compiled without and with XLA


def keras_run(gamma, alpha, jit_compile):
    """The grid through Keras as a user compiles it: `focal_graph.keras.SigmoidFocalLoss` on a
    model whose output is its input plus one trainable offset per row (zeros), one class per row
    so that Keras's per-sample value is the element's loss.

    ``evaluate`` runs the compiled test step; a metric inside it keeps the loss per element
    (the same `SigmoidFocalLoss`, unreduced), and the reported loss is their mean. One ``fit``
    step of SGD with learning rate N (the mean's 1/N undone) moves each offset by minus that
    element's gradient.
    """
    import keras

    from focal_graph.keras import SigmoidFocalLoss

    targets, logits = grid()
    targets, logits = targets.reshape(-1, 1), logits.reshape(-1, 1)
    rows = len(logits)

    class Offsets(keras.layers.Layer):
        def build(self, input_shape):
            self.offsets = self.add_weight(shape=(rows, 1), initializer="zeros", name="offsets")

        def call(self, inputs):
            return inputs + self.offsets

    class PerElement(keras.metrics.Metric):
        def __init__(self):
            super().__init__(name="per_element")
            self.loss = SigmoidFocalLoss(gamma=gamma, alpha=alpha, reduction=None)
            self.values = self.add_variable(shape=(rows,), initializer="zeros", name="values")

        def update_state(self, y_true, y_pred, sample_weight=None):
            self.values.assign(tf.reshape(self.loss(y_true, y_pred), [-1]))

        def result(self):
            return tf.reduce_sum(self.values)

    inputs = keras.Input(shape=(1,))
    model = keras.Model(inputs, Offsets()(inputs))
    metric = PerElement()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=float(rows)), loss=SigmoidFocalLoss(gamma=gamma, alpha=alpha),
                  metrics=[metric], jit_compile=jit_compile)
    reported = model.evaluate(logits, targets, batch_size=rows, verbose=0, return_dict=True)
    values = metric.values.numpy().reshape(-1, 1)
    model.fit(logits, targets, batch_size=rows, epochs=1, shuffle=False, verbose=0)
    gradients = -model.layers[-1].offsets.numpy()
    return targets, logits, reported["loss"], values, gradients


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_sigmoid_grid_is_exact_in_keras_evaluate_and_fit(gamma, alpha, jit_compile):
    targets, logits, reported, values, gradients = keras_run(gamma, alpha, jit_compile)
    what = f"Keras jit_compile={jit_compile}, gamma={gamma}, alpha={alpha}"
    assert_values(values, targets, logits, gamma, alpha, what)
    assert_gradients(gradients, targets, logits, gamma, alpha, what)
    want = reference.sigmoid_focal(targets, logits, gamma=gamma, alpha=alpha).mean()
    assert reported == pytest.approx(want, rel=RTOL), what


def test_the_grid_covers_the_logits_that_failed():
    """The rows the issue measured (-18 and 18: 2x; -16: 0.941x; -12: 0.991x) are on the grid,
    with the targets that make them tiny."""
    for logit in (-18.0, 18.0, -16.0, -12.0):
        assert logit in LOGITS
    assert set(TARGETS) >= {0.0, 1.0}


@pytest.mark.slow
@pytest.mark.parametrize("xla", [True, False])
def test_an_exported_artifacts_saved_model_signatures_are_exact(tmp_path, xla):
    """What a serving stack runs: the artifact's own SavedModel (its signatures compiled with XLA
    by default), loaded back, on the grid and on (1, 1) and (1, 2) inputs."""
    from exporting import exported

    gamma, alpha = 2.0, 0.25
    exported(tmp_path / "loss", fg.FocalSpec(variant="sigmoid", gamma=gamma, alpha=alpha), format="savedmodel",
             validate=False, xla=xla)
    signature = tf.saved_model.load(str(tmp_path / "loss" / "saved_model")).signatures["serving_default"]
    targets, logits = grid()
    got = signature(targets=tf.constant(targets), logits=tf.constant(logits))["loss"].numpy()
    assert_values(got, targets, logits, gamma, alpha, f"SavedModel (xla={xla})")
    for x, y in ((-18.0, 0.0), (18.0, 1.0), (-16.0, 0.0)):
        for shape in ((1, 1), (1, 2)):
            small_logits, small_targets = np.full(shape, x, np.float32), np.full(shape, y, np.float32)
            got = signature(targets=tf.constant(small_targets), logits=tf.constant(small_logits))["loss"].numpy()
            assert_values(got, small_targets, small_logits, gamma, alpha, f"SavedModel (xla={xla}), {shape} input")
