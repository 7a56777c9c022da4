"""The one place losses are reduced."""

from __future__ import annotations

import tensorflow as tf

from focal_graph import params

# ONNX Runtime 1.31's CPU reductions return their input unchanged in shape when the input is
# empty: ReduceMax over C of a (0, 5) tensor gives (0, 5), not (0, 1), and a sum over every axis
# of a (0,) tensor gives (0,), not a scalar 0 (measured; microsoft/onnxruntime#7563 is the same
# code path). Every reduction in focal_graph goes through `reduce_classes` or `_repaired_sum`,
# which give TensorFlow's shapes in both backends, so an empty batch works after export too.


def reduce_classes(reduce, values, keepdims: bool = False) -> tf.Tensor:
    """``reduce(values, axis=-1, keepdims=keepdims)`` for ``reduce`` a ``tf.reduce_*`` function.

    With C >= 1 the result is empty exactly when ``values`` is, so a reshape to the shape it must
    have (a view, no copy) repairs ONNX Runtime's. The reshape works after tf2onnx although it
    writes ONNX Reshape without ``allowzero`` (a 0 in the target shape copies the input's size):
    ONNX Runtime's wrong result keeps the input's batch sizes, so a copied size is the right one.
    """
    reduced = reduce(values, axis=-1, keepdims=keepdims)
    batch = tf.shape(values)[:-1]
    return tf.reshape(reduced, tf.concat([batch, [1]], 0) if keepdims else batch)


def _repaired_sum(values, axis, size) -> tf.Tensor:
    """``tf.reduce_sum(values, axis)`` flattened to ``size`` elements: where ONNX Runtime returned
    nothing (an empty input), the zeros the sum of nothing is. Pads at most ``size`` elements."""
    reduced = tf.reshape(tf.reduce_sum(values, axis=axis), [-1])
    return tf.pad(reduced, [[0, size - tf.size(reduced)]])


def reduce_loss(loss, reduction: str = "mean", mask=None) -> tf.Tensor:
    """Reduce an unreduced loss to ``none`` (unchanged), ``sum`` or ``mean``.

    Args:
        loss: any shape.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
        mask: optional boolean tensor of the loss's shape: the positions that count. The mean
            divides by their number (ignored positions are not in the denominator); the sum
            leaves masked-out positions out.

    Returns:
        ``loss`` for ``none``; a scalar otherwise. The sum or mean over zero positions (an empty
        batch, or every position masked) is 0, as Keras's own reductions give. 16-bit losses are
        accumulated in float32 and cast back.
    """
    reduction = params.reduction(reduction)
    loss = tf.convert_to_tensor(loss)
    if reduction == "none":
        return loss
    out_dtype = loss.dtype
    if out_dtype in (tf.float16, tf.bfloat16):
        loss = tf.cast(loss, tf.float32)
    if mask is None:
        count = tf.size(loss, out_type=tf.int64)
    else:
        mask = tf.convert_to_tensor(mask)
        # tf2onnx lowers this to mask * loss: a NaN at a masked-out position would survive there
        # (focal_graph's own losses are 0 at ignored positions).
        loss = tf.where(mask, loss, tf.zeros_like(loss))
        count = tf.reshape(_repaired_sum(tf.cast(mask, tf.int64), None, 1), [])
    total = tf.reshape(_repaired_sum(loss, None, 1), [])
    if reduction == "mean":
        total = total / tf.cast(tf.maximum(count, 1), loss.dtype)
    return tf.cast(total, out_dtype)


def per_sample_loss(loss) -> tf.Tensor:
    """Each sample's total loss: the sum over every axis but the first, shape (N,).

    Sums add up: ``per_sample_loss(loss).sum()`` is ``reduce_loss(loss, "sum")``. A loss that is
    already (N,) comes back unchanged; ignored positions are 0 in the loss and add nothing. 16-bit
    losses are accumulated in float32 and cast back.
    """
    loss = tf.convert_to_tensor(loss)
    if loss.shape.rank == 1:
        return loss
    out_dtype = loss.dtype
    if out_dtype in (tf.float16, tf.bfloat16):
        loss = tf.cast(loss, tf.float32)
    per_sample = _repaired_sum(loss, list(range(1, loss.shape.rank)), tf.shape(loss)[0])
    return tf.cast(per_sample, out_dtype)
