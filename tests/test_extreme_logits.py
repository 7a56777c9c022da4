"""Large logits give exact losses and finite gradients: nothing is clipped when given logits."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import focal_graph as fg
from focal_graph import presets
import reference

GAMMAS = [0.0, 0.5, 1.0, 2.0, 5.0]


def test_true_class_30_logits_below_is_exact_where_keras_clips():
    # 5 classes, alpha 0.25, the true class 30 below the other four: the example
    logits = np.array([[-30.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    exact = 0.25 * (30.0 + np.log(4.0 + np.exp(-30.0)))  # -alpha * log p_t, (1 - p_t)**2 = 1 - 4e-14
    assert round(exact, 2) == 7.85
    sparse = fg.sparse_softmax_focal_loss([0], logits, alpha=0.25)
    dense = fg.softmax_focal_loss(np.eye(5, dtype=np.float32)[[0]], logits, alpha=0.25)
    np.testing.assert_allclose(sparse.numpy(), [exact], rtol=1e-6)
    np.testing.assert_allclose(dense.numpy(), [exact], rtol=1e-6)
    keras_value = keras.losses.CategoricalFocalCrossentropy(alpha=0.25, from_logits=True, reduction=None)(
        np.eye(5, dtype=np.float32)[[0]], logits
    )
    assert abs(float(keras_value[0]) - 4.03) < 0.01  # Keras's clip at 1e-7 caps it at 0.25 * 16.1


# logit gaps from "certainly right" to "certainly wrong", as p_t goes to 1 and to 0
GAPS = [1e4, 100.0, 30.0, 17.0, 9.0, 3.0, 0.0, -3.0, -30.0, -100.0, -1e4]


def sparse_case():
    logits = np.array([[gap, 0.0, -1.0] for gap in GAPS], np.float32)
    return np.zeros(len(GAPS), np.int64), logits


@pytest.mark.parametrize("gamma", GAMMAS)
def test_sparse_softmax_extreme_logits_exact_and_finite_gradients(gamma):
    labels, logits = sparse_case()
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = fg.sparse_softmax_focal_loss(labels, variable, gamma=gamma, alpha=0.25)
    gradient = tape.gradient(loss, variable)
    want = reference.sparse_softmax_focal(labels, logits, gamma=gamma, alpha=0.25)
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5, atol=1e-6)
    assert np.isfinite(gradient.numpy()).all()


@pytest.mark.parametrize("gamma", GAMMAS)
def test_softmax_extreme_logits_exact_and_finite_gradients(gamma):
    labels, logits = sparse_case()
    targets = np.eye(3, dtype=np.float32)[labels]
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = fg.softmax_focal_loss(targets, variable, gamma=gamma, label_smoothing=0.1)
    gradient = tape.gradient(loss, variable)
    want = reference.softmax_focal(targets, logits, gamma=gamma, label_smoothing=0.1)
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5, atol=1e-6)
    assert np.isfinite(gradient.numpy()).all()


@pytest.mark.parametrize("gamma", GAMMAS)
def test_sigmoid_extreme_logits_exact_and_finite_gradients(gamma):
    logits = np.array([GAPS, GAPS], np.float32)
    targets = np.array([np.ones(len(GAPS)), np.zeros(len(GAPS))], np.float32)
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = fg.sigmoid_focal_loss(targets, variable, gamma=gamma, alpha=0.25)
    gradient = tape.gradient(loss, variable)
    want = reference.sigmoid_focal(targets, logits, gamma=gamma, alpha=0.25)
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5, atol=1e-6)
    assert np.isfinite(gradient.numpy()).all()


def test_gradient_is_the_exact_one_for_a_confidently_wrong_logit():
    # d/dz of -log softmax(z)_0 at z = (-1e4, 0) is softmax(z) - onehot = (-1, 1); gamma 0
    variable = tf.Variable([[-1e4, 0.0]])
    with tf.GradientTape() as tape:
        loss = fg.sparse_softmax_focal_loss([0], variable, gamma=0.0)
    np.testing.assert_allclose(tape.gradient(loss, variable).numpy(), [[-1.0, 1.0]])


@pytest.mark.parametrize("gap", [4.0, 6.0, 8.0, 10.0, 12.0, 14.0])
def test_error_as_p_t_goes_to_one_stays_within_float32_rounding_of_one(gap):
    # log p_t = -log(1 + r) is rounded at 1, as in TF's own cross-entropy: the absolute error is a
    # few 6e-8 while the loss itself falls to ~1e-16; the relative digits are not promised
    logits = np.array([[gap, 0.0, 0.0]], np.float32)
    bound = 4 * np.finfo(np.float32).eps
    want = reference.sparse_softmax_focal([0], logits, gamma=2.0)
    np.testing.assert_allclose(fg.sparse_softmax_focal_loss([0], logits, gamma=2.0).numpy(), want, rtol=0, atol=bound)
    targets = np.eye(3, dtype=np.float32)[[0]]
    want_dense = reference.softmax_focal(targets, logits, gamma=0.0)
    tf_error = abs(tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits).numpy() - want_dense)
    ours_error = abs(fg.softmax_focal_loss(targets, logits, gamma=0.0).numpy() - want_dense)
    assert ours_error <= max(tf_error, bound)


def test_probabilities_of_exactly_zero_and_one_are_clipped_to_finite_values():
    probabilities = tf.Variable([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with tf.GradientTape(persistent=True) as tape:
        sparse = fg.sparse_softmax_focal_loss([0, 0], probabilities, from_logits=False, gamma=0.5)
        sigmoid = fg.sigmoid_focal_loss([[1.0, 0, 0], [1, 0, 0]], probabilities, from_logits=False, gamma=0.5)
    assert np.isfinite(sparse.numpy()).all() and np.isfinite(sigmoid.numpy()).all()
    np.testing.assert_allclose(sparse.numpy()[1], -np.log(1e-7) * (1 - 1e-7) ** 0.5, rtol=1e-5)
    assert np.isfinite(tape.gradient(sparse, probabilities).numpy()).all()
    assert np.isfinite(tape.gradient(sigmoid, probabilities).numpy()).all()


def test_seed000_epsilon_keeps_a_saturated_sigmoid_output_finite():
    """1 - 1e-8 rounds to 1 in float32; the clip's upper bound stays below 1 all the same, so a
    sigmoid output of exactly 1 on a negative class trains instead of turning to NaN."""
    probabilities = tf.Variable([[0.98, 1.0, 0.99, 0.9998]])
    loss_fn = presets.multilabel_lsr([60, 80, 50, 66], gamma=2.0, epsilon=0.1)
    with tf.GradientTape() as tape:
        loss = loss_fn(tf.constant([[0.0, 0.0, 0.0, 1.0]]), probabilities)
    assert np.isfinite(loss.numpy()).all()
    assert np.isfinite(tape.gradient(loss, probabilities).numpy()).all()
    clipped = fg.sigmoid_focal_loss([[0.0]], [[1.0]], from_logits=False, gamma=0.0, epsilon=1e-8)
    np.testing.assert_allclose(clipped.numpy(), [[-np.log(np.float32(2.0**-24))]], rtol=1e-6)


def test_a_row_of_all_zero_probabilities_is_clipped_not_divided_by_zero():
    probabilities = tf.Variable([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    with tf.GradientTape(persistent=True) as tape:
        sparse = fg.sparse_softmax_focal_loss([0, 0], probabilities, from_logits=False)
        dense = fg.softmax_focal_loss([[1.0, 0, 0], [1, 0, 0]], probabilities, from_logits=False)
    np.testing.assert_allclose(sparse.numpy()[0], -np.log(1e-7) * (1 - 1e-7) ** 2, rtol=1e-5)
    assert np.isfinite(dense.numpy()).all()
    assert np.isfinite(tape.gradient(sparse, probabilities).numpy()).all()
    assert np.isfinite(tape.gradient(dense, probabilities).numpy()).all()
