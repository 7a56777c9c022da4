"""Graphs traced with unknown dimensions run on every shape, including size-1 and size-0 axes."""

import numpy as np
import pytest
import tensorflow as tf

import focal_graph as fg
import reference

SHAPES_RANK_3 = [(2, 3, 5), (1, 1, 5), (4, 1, 5), (0, 3, 5), (3, 0, 5), (0, 0, 5)]


def inputs(rng, spec, shape):
    logits = rng.normal(size=shape).astype(np.float32)
    if spec.variant == "sparse_softmax":
        return rng.integers(0, shape[-1], size=shape[:-1]), logits
    if spec.variant == "softmax":
        return np.eye(shape[-1], dtype=np.float32)[rng.integers(0, shape[-1], size=shape[:-1])], logits
    return rng.integers(0, 2, size=shape).astype(np.float32), logits


REFERENCES = {
    "sparse_softmax": reference.sparse_softmax_focal,
    "softmax": reference.softmax_focal,
    "sigmoid": reference.sigmoid_focal,
}


@pytest.mark.parametrize("variant", sorted(REFERENCES))
def test_one_trace_serves_every_shape(rng, variant):
    spec = fg.FocalSpec(variant=variant, rank=3)
    graph = fg.build_graph(spec)
    concrete = graph.get_concrete_function()
    assert [d for d in concrete.structured_input_signature[0][1].shape] == [None, None, None]
    for shape in SHAPES_RANK_3:
        y_true, logits = inputs(rng, spec, shape)
        got = concrete(tf.constant(y_true, concrete.structured_input_signature[0][0].dtype), tf.constant(logits))
        want = REFERENCES[variant](y_true, logits)
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=1e-6)
    assert graph.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("variant", sorted(REFERENCES))
def test_unknown_class_count_when_nothing_fixes_it(rng, variant):
    graph = fg.build_graph(fg.FocalSpec(variant=variant, rank=2))
    for num_classes in (1, 2, 9):
        y_true, logits = inputs(rng, fg.FocalSpec(variant=variant), (3, num_classes))
        got = graph(tf.constant(y_true, graph.input_signature[0].dtype), tf.constant(logits))
        np.testing.assert_allclose(got.numpy(), REFERENCES[variant](y_true, logits), rtol=2e-5, atol=1e-6)
    assert graph.experimental_get_tracing_count() == 1


def test_per_class_parameters_fix_the_class_axis():
    spec = fg.FocalSpec(variant="sigmoid", alpha=[0.1, 0.2, 0.3], rank=4)
    assert fg.input_signature(spec)[1].shape.as_list() == [None, None, None, 3]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_empty_batch_reduces_to_zero(reduction):
    graph = fg.build_graph(fg.FocalSpec(variant="sparse_softmax", rank=3, reduction=reduction))
    got = graph(tf.zeros([0, 4], tf.int64), tf.zeros([0, 4, 6]))
    assert got.shape == () and got.numpy() == 0.0


def test_empty_batch_unreduced_is_empty():
    graph = fg.build_graph(fg.FocalSpec(variant="sigmoid", rank=2))
    assert graph(tf.zeros([0, 3]), tf.zeros([0, 3])).shape == (0, 3)


def test_runtime_shape_mismatch_is_nan_not_a_broadcast_number():
    graph = fg.build_graph(fg.FocalSpec(variant="softmax", rank=2))
    got = graph(tf.constant([[0.0, 1.0]]), tf.zeros([3, 2]))  # (1, C) targets would broadcast
    assert got.shape == (3,) and np.isnan(got.numpy()).all()
    sigmoid = fg.build_graph(fg.FocalSpec(variant="sigmoid", rank=2))
    assert np.isnan(sigmoid(tf.constant([[0.0, 1.0]]), tf.zeros([3, 2])).numpy()).all()


def test_sparse_label_batch_mismatch_is_an_error_in_the_graph():
    graph = fg.build_graph(fg.FocalSpec(variant="sparse_softmax", rank=2))
    with pytest.raises(tf.errors.InvalidArgumentError):
        graph(tf.constant([0], tf.int64), tf.zeros([3, 2]))
