"""Property tests: invariants that hold for every input hypothesis draws."""

import numpy as np
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import focal_graph as fg

finite_logits = st.floats(-50, 50, allow_nan=False, width=32)


@st.composite
def logits_and_labels(draw, min_rank=2, max_rank=4):
    rank = draw(st.integers(min_rank, max_rank))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=rank - 1, max_size=rank - 1))) + (draw(st.integers(2, 6)),)
    logits = draw(hnp.arrays(np.float32, shape, elements=finite_logits))
    labels = draw(hnp.arrays(np.int64, shape[:-1], elements=st.integers(0, shape[-1] - 1)))
    return logits, labels


@given(logits_and_labels())
def test_gamma_zero_equals_cross_entropy(case):
    logits, labels = case
    want = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    got = fg.sparse_softmax_focal_loss(labels, logits, gamma=0.0)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    targets = np.eye(logits.shape[-1], dtype=np.float32)[labels]
    dense = fg.softmax_focal_loss(targets, logits, gamma=0.0)
    np.testing.assert_allclose(dense.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


@given(logits_and_labels(min_rank=3, max_rank=5), st.sampled_from([0.5, 2.0, 3.0]))
def test_reshaping_extra_dims_does_not_change_per_position_losses(case, gamma):
    logits, labels = case
    num_classes = logits.shape[-1]
    full = fg.sparse_softmax_focal_loss(labels, logits, gamma=gamma, alpha=0.5)
    flat = fg.sparse_softmax_focal_loss(labels.reshape(-1), logits.reshape(-1, num_classes), gamma=gamma, alpha=0.5)
    np.testing.assert_array_equal(tf.reshape(full, [-1]).numpy(), flat.numpy())
    targets = (labels[..., None] == np.arange(num_classes)).astype(np.float32)
    sigmoid_full = fg.sigmoid_focal_loss(targets, logits, gamma=gamma, alpha=0.25)
    sigmoid_flat = fg.sigmoid_focal_loss(targets.reshape(-1, num_classes), logits.reshape(-1, num_classes), gamma=gamma, alpha=0.25)
    np.testing.assert_array_equal(tf.reshape(sigmoid_full, [-1, num_classes]).numpy(), sigmoid_flat.numpy())


@given(logits_and_labels(), st.randoms(use_true_random=False))
def test_permuting_classes_with_their_weights_does_not_change_the_loss(case, random):
    logits, labels = case
    num_classes = logits.shape[-1]
    permutation = list(range(num_classes))
    random.shuffle(permutation)
    permutation = np.array(permutation)
    inverse = np.argsort(permutation)  # class c moves to position inverse[c]
    gamma = np.linspace(0.0, 3.0, num_classes)
    alpha = np.linspace(0.1, 0.9, num_classes)
    weight = np.linspace(2.0, 0.5, num_classes)
    kwargs = dict(gamma=gamma.tolist(), alpha=alpha.tolist(), class_weight=weight.tolist())
    moved = dict(gamma=gamma[permutation].tolist(), alpha=alpha[permutation].tolist(), class_weight=weight[permutation].tolist())

    sparse = fg.sparse_softmax_focal_loss(labels, logits, **kwargs)
    sparse_moved = fg.sparse_softmax_focal_loss(inverse[labels], logits[..., permutation], **moved)
    np.testing.assert_allclose(sparse_moved.numpy(), sparse.numpy(), rtol=1e-5, atol=1e-6)

    targets = np.eye(num_classes, dtype=np.float32)[labels]
    dense = fg.softmax_focal_loss(targets, logits, **kwargs)
    dense_moved = fg.softmax_focal_loss(targets[..., permutation], logits[..., permutation], **moved)
    np.testing.assert_allclose(dense_moved.numpy(), dense.numpy(), rtol=1e-5, atol=1e-6)

    sigmoid = fg.sigmoid_focal_loss(targets, logits, **kwargs)
    sigmoid_moved = fg.sigmoid_focal_loss(targets[..., permutation], logits[..., permutation], **moved)
    np.testing.assert_allclose(sigmoid_moved.numpy(), sigmoid.numpy()[..., permutation], rtol=1e-5, atol=1e-6)
