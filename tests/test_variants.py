"""Each variant against the float64 numpy transcription in reference.py, on shapes of rank 2 to 5."""

import numpy as np
import pytest
import tensorflow as tf

import focal_graph as fg
import reference

RTOL, ATOL = 2e-5, 1e-6  # float32 computation against a float64 reference


def random_shape(rng, rank):
    return tuple(int(d) for d in rng.integers(1, 5, size=rank - 1)) + (int(rng.integers(2, 8)),)


def random_logits(rng, shape, scale=4.0):
    return (rng.normal(size=shape) * scale).astype(np.float32)


def random_probabilities(rng, shape):
    return tf.nn.softmax(random_logits(rng, shape)).numpy()


PARAMETER_SETS = {
    "defaults": {},
    "gamma_0.5_scalar_alpha": dict(gamma=0.5, alpha=0.25),
    "per_class_gamma_alpha_weight": "per_class",
    "gamma_0": dict(gamma=0.0),
}


def parameters(name, rng, num_classes, *, sigmoid=False):
    chosen = PARAMETER_SETS[name]
    if chosen != "per_class":
        return dict(chosen)
    return dict(
        gamma=rng.uniform(0, 5, num_classes).round(3).tolist(),
        alpha=rng.uniform(0, 1 if sigmoid else 3, num_classes).round(3).tolist(),
        class_weight=rng.uniform(0.1, 2, num_classes).round(3).tolist(),
    )


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("parameter_set", sorted(PARAMETER_SETS))
@pytest.mark.parametrize("from_logits", [True, False])
def test_sparse_softmax_matches_numpy_reference(rng, rank, parameter_set, from_logits):
    shape = random_shape(rng, rank)
    kwargs = parameters(parameter_set, rng, shape[-1])
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    predictions = random_logits(rng, shape) if from_logits else random_probabilities(rng, shape)
    got = fg.sparse_softmax_focal_loss(labels, predictions, from_logits=from_logits, **kwargs)
    want = reference.sparse_softmax_focal(labels, predictions, from_logits=from_logits, **kwargs)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(got.numpy(), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("parameter_set", sorted(PARAMETER_SETS))
@pytest.mark.parametrize("from_logits", [True, False])
def test_softmax_matches_numpy_reference(rng, rank, parameter_set, from_logits):
    shape = random_shape(rng, rank)
    kwargs = parameters(parameter_set, rng, shape[-1])
    targets = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype(np.float32)  # soft targets
    predictions = random_logits(rng, shape) if from_logits else random_probabilities(rng, shape)
    got = fg.softmax_focal_loss(targets, predictions, from_logits=from_logits, label_smoothing=0.1, **kwargs)
    want = reference.softmax_focal(targets, predictions, from_logits=from_logits, label_smoothing=0.1, **kwargs)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(got.numpy(), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("parameter_set", sorted(PARAMETER_SETS))
@pytest.mark.parametrize("from_logits", [True, False])
def test_sigmoid_matches_numpy_reference(rng, rank, parameter_set, from_logits):
    shape = random_shape(rng, rank)
    kwargs = parameters(parameter_set, rng, shape[-1], sigmoid=True)
    targets = rng.integers(0, 2, size=shape).astype(np.float32)
    logits = random_logits(rng, shape)
    predictions = logits if from_logits else tf.sigmoid(logits).numpy()
    got = fg.sigmoid_focal_loss(targets, predictions, from_logits=from_logits, label_smoothing=0.05, **kwargs)
    want = reference.sigmoid_focal(targets, predictions, from_logits=from_logits, label_smoothing=0.05, **kwargs)
    assert got.shape == shape
    np.testing.assert_allclose(got.numpy(), want, rtol=RTOL, atol=ATOL)


def test_ignore_index_positions_are_zero_and_leave_the_mean(rng):
    logits = random_logits(rng, (6, 5))
    labels = np.array([0, -100, 4, 2, -100, 1])
    loss = fg.sparse_softmax_focal_loss(labels, logits, ignore_index=-100)
    want = reference.sparse_softmax_focal(labels, logits, ignore_index=-100)
    np.testing.assert_allclose(loss.numpy(), want, rtol=RTOL, atol=ATOL)
    assert loss.numpy()[1] == 0 and loss.numpy()[4] == 0
    spec_mean = fg.SpecLoss(fg.FocalSpec(variant="sparse_softmax", ignore_index=-100, reduction="mean"))
    np.testing.assert_allclose(spec_mean(labels, logits).numpy(), want[labels != -100].mean(), rtol=RTOL)


def test_ignore_index_inside_the_class_range_is_ignored(rng):
    logits = random_logits(rng, (4, 3))
    labels = np.array([0, 1, 2, 0])
    loss = fg.sparse_softmax_focal_loss(labels, logits, ignore_index=0).numpy()
    assert loss[0] == 0 and loss[3] == 0 and loss[1] > 0 and loss[2] > 0


def test_invalid_label_is_nan_inside_a_graph():
    graph = fg.build_graph(fg.FocalSpec(variant="sparse_softmax", ignore_index=-1))
    labels = tf.constant([0, 3, -1, -2, 2], tf.int64)
    loss = graph(labels, tf.zeros([5, 3])).numpy()
    assert np.isfinite(loss[[0, 4]]).all() and loss[2] == 0
    assert np.isnan(loss[1]) and np.isnan(loss[3])


def test_invalid_label_makes_a_graph_mean_nan_not_a_number():
    graph = fg.build_graph(fg.FocalSpec(variant="sparse_softmax", reduction="mean"))
    assert np.isnan(graph(tf.constant([0, 7], tf.int64), tf.zeros([2, 3])).numpy())


def test_fractional_float_labels_are_invalid():
    loss = tf.function(lambda y, z: fg.sparse_softmax_focal_loss(y, z))(tf.constant([1.0, 1.5]), tf.zeros([2, 3]))
    assert np.isfinite(loss.numpy()[0]) and np.isnan(loss.numpy()[1])


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float64])
def test_other_dtypes_compute_accurately_and_return_their_dtype(rng, dtype):
    logits = random_logits(rng, (4, 3, 6), scale=2.0)
    labels = rng.integers(0, 6, size=(4, 3))
    cast = tf.cast(logits, dtype)
    loss = fg.sparse_softmax_focal_loss(labels, cast, gamma=2.0, alpha=0.5)
    assert loss.dtype == dtype
    # the reference sees the same rounded inputs; the error left is the output's own rounding
    want = reference.sparse_softmax_focal(labels, tf.cast(cast, tf.float64).numpy(), gamma=2.0, alpha=0.5)
    rtol = {tf.float16: 1e-3, tf.bfloat16: 8e-3, tf.float64: 1e-12}[dtype]
    np.testing.assert_allclose(tf.cast(loss, tf.float64).numpy(), want, rtol=rtol, atol=rtol * 1e-2)


def test_reduce_loss_sum_and_mean(rng):
    loss = rng.uniform(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(fg.reduce_loss(loss, "sum").numpy(), loss.sum(dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(fg.reduce_loss(loss, "mean").numpy(), loss.mean(dtype=np.float64), rtol=1e-6)
    np.testing.assert_array_equal(fg.reduce_loss(loss, "none").numpy(), loss)
    mask = loss > 0.5
    np.testing.assert_allclose(fg.reduce_loss(loss, "mean", mask).numpy(), loss[mask].mean(), rtol=1e-6)


def test_reduce_loss_of_nothing_is_zero():
    empty = tf.zeros([0, 3])
    assert fg.reduce_loss(empty, "mean").numpy() == 0.0
    assert fg.reduce_loss(empty, "sum").numpy() == 0.0
    all_masked = fg.reduce_loss(tf.ones([2]), "mean", tf.constant([False, False]))
    assert all_masked.numpy() == 0.0
