"""Against TensorFlow's own cross-entropies (gamma 0) and Keras's focal losses where they agree."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import focal_graph as fg


@pytest.fixture
def logits(rng):
    # moderate logits: Keras's clipping at 1e-7 stays inactive, so its semantics coincide with ours
    return (rng.normal(size=(16, 3, 7)) * 2.0).astype(np.float32)


def test_sparse_gamma_zero_equals_tf_sparse_softmax_cross_entropy(rng, logits):
    labels = rng.integers(0, 7, size=(16, 3))
    want = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    got = fg.sparse_softmax_focal_loss(labels, logits, gamma=0.0)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


def test_softmax_gamma_zero_equals_tf_softmax_cross_entropy(rng, logits):
    targets = rng.dirichlet(np.ones(7), size=(16, 3)).astype(np.float32)
    want = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    got = fg.softmax_focal_loss(targets, logits, gamma=0.0)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_sigmoid_gamma_zero_equals_tf_sigmoid_cross_entropy(rng, logits):
    targets = rng.uniform(size=logits.shape).astype(np.float32)
    want = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    got = fg.sigmoid_focal_loss(targets, logits, gamma=0.0)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 4.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("from_logits", [True, False])
def test_sigmoid_equals_keras_binary_focal_with_class_balancing(rng, logits, gamma, label_smoothing, from_logits):
    targets = rng.integers(0, 2, size=logits.shape).astype(np.float32)
    predictions = logits if from_logits else tf.sigmoid(logits).numpy()
    keras_loss = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.3, gamma=gamma, from_logits=from_logits,
        label_smoothing=label_smoothing, reduction=None,
    )
    want = keras_loss(targets, predictions)
    got = fg.sigmoid_focal_loss(
        targets, predictions, gamma=gamma, alpha=0.3, from_logits=from_logits, label_smoothing=label_smoothing
    )
    # Keras returns the mean over the class axis
    np.testing.assert_allclose(tf.reduce_mean(got, axis=-1).numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 4.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("from_logits", [True, False])
def test_softmax_equals_keras_categorical_focal(rng, logits, gamma, label_smoothing, from_logits):
    targets = np.eye(7, dtype=np.float32)[rng.integers(0, 7, size=logits.shape[:-1])]
    predictions = logits if from_logits else tf.nn.softmax(logits).numpy()
    keras_loss = keras.losses.CategoricalFocalCrossentropy(
        alpha=0.25, gamma=gamma, from_logits=from_logits, label_smoothing=label_smoothing, reduction=None
    )
    want = keras_loss(targets, predictions)
    got = fg.softmax_focal_loss(
        targets, predictions, gamma=gamma, alpha=0.25, from_logits=from_logits, label_smoothing=label_smoothing
    )
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_sparse_equals_keras_categorical_focal_on_one_hot_targets(rng, logits):
    labels = rng.integers(0, 7, size=logits.shape[:-1])
    keras_loss = keras.losses.CategoricalFocalCrossentropy(alpha=0.25, gamma=2.0, from_logits=True, reduction=None)
    want = keras_loss(np.eye(7, dtype=np.float32)[labels], logits)
    got = fg.sparse_softmax_focal_loss(labels, logits, gamma=2.0, alpha=0.25)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
