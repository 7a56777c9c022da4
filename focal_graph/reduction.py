"""The one place losses are reduced."""

from __future__ import annotations

import tensorflow as tf

from focal_graph import params


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
        count = tf.reduce_sum(tf.cast(mask, tf.int64))
    total = tf.reduce_sum(loss)
    if reduction == "mean":
        total = total / tf.cast(tf.maximum(count, 1), loss.dtype)
    return tf.cast(total, out_dtype)
