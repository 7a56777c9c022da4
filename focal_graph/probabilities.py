"""The one place that turns predictions into log-probabilities.

From logits nothing is clipped: every quantity is computed in log space, so logits of any finite
size give the exact loss and finite gradients. From probabilities, predictions are clipped to
[epsilon, 1 - epsilon] (there is no other way to keep log(0) out).

Precision: where p_t is close to 1, log p_t = -log(1 + r) carries an absolute error of about one
rounding of 1 (6e-8 in float32), exactly as TensorFlow's own softmax cross-entropy does, so
1 - p_t and the loss there (about (1 - p_t)**(gamma + 1)) are exact in absolute terms, to a few
float32 epsilons (tests/test_extreme_logits.py), but not to the last relative digit. Recovering those digits needs a second pass over the classes.

Only ops tf2onnx converts are used: no Log1p, Expm1 or Xlogy (see shared/TOOLCHAIN.md). From
logits, ``tf.nn.log_softmax`` is the one fused kernel in both backends (MLAS's LogSoftmax in ONNX
Runtime); `tf.reduce_logsumexp` would convert to a ~33-node graph.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from focal_graph.reduction import reduce_classes


def softmax_log_probs(y_pred: tf.Tensor, *, from_logits: bool, epsilon: float) -> tf.Tensor:
    """``log p_c`` for every class, shape (..., C).

    From logits: ``z_c - logsumexp(z)``. From probabilities: ``log(clip(p_c / sum_k p_k,
    epsilon, 1 - epsilon))``, normalised first as Keras's categorical losses do.
    """
    if from_logits:
        return tf.nn.log_softmax(y_pred)  # one fused kernel in TF and in ONNX Runtime (MLAS)
    return tf.math.log(_clip(y_pred / _total(y_pred, keepdims=True), epsilon))


def softmax_log_prob_at(
    y_pred: tf.Tensor, class_index: tf.Tensor, *, from_logits: bool, epsilon: float
) -> tf.Tensor:
    """``log p_t`` of class ``class_index`` (shape (...), int, in range) at every position.

    From logits this gathers from ``log_softmax``: one fused kernel (TF's, and MLAS's LogSoftmax
    in ONNX Runtime) measured 3x faster in ONNX Runtime than the same max/exp/sum written as
    separate ops (`focalgraph bench`).
    """
    batch_dims = y_pred.shape.rank - 1
    if from_logits:
        y_pred = tf.nn.log_softmax(y_pred)
    # gather with batch_dims and a trailing index axis converts to GatherND; axis=-1 does not.
    picked = tf.gather(y_pred, class_index[..., None], batch_dims=batch_dims)[..., 0]
    if from_logits:
        return picked
    return tf.math.log(_clip(picked / _total(y_pred), epsilon))


class BinaryLogProbs(NamedTuple):
    """Per-element probabilities of a sigmoid output: ``log p``, ``log(1 - p)``, ``p``, ``1 - p``."""

    log_p: tf.Tensor
    log_q: tf.Tensor
    p: tf.Tensor
    q: tf.Tensor


def sigmoid_log_probs(y_pred: tf.Tensor, *, from_logits: bool, epsilon: float) -> BinaryLogProbs:
    """Element-wise ``p = sigmoid(x)`` and ``1 - p``, with their logs, each without cancellation.

    From logits: ``log(1 - p) = -softplus(x)`` and ``log p = x - softplus(x)``; ``p`` and ``1 - p``
    are the exps of those (tf.nn.sigmoid_cross_entropy_with_logits would emit Log1p).
    """
    if from_logits:
        softplus = tf.math.softplus(y_pred)
        log_p = y_pred - softplus
        log_q = -softplus
        return BinaryLogProbs(log_p, log_q, tf.exp(log_p), tf.exp(log_q))
    p = _clip(y_pred, epsilon)
    q = 1.0 - p
    return BinaryLogProbs(tf.math.log(p), tf.math.log(q), p, q)


def _total(probabilities: tf.Tensor, keepdims: bool = False) -> tf.Tensor:
    """The sum over the classes, floored at the smallest normal number: a row whose
    probabilities all underflowed to 0 (sigmoid outputs of very negative logits) would otherwise
    divide 0 by 0, and one NaN in a batch ends a training run. Such a row is then clipped to
    epsilon like any other zero."""
    tiny = np.finfo(probabilities.dtype.as_numpy_dtype).tiny
    return tf.maximum(reduce_classes(tf.reduce_sum, probabilities, keepdims=keepdims), tiny)


def _clip(probabilities: tf.Tensor, epsilon: float) -> tf.Tensor:
    """``probabilities`` clipped to [epsilon, 1 - epsilon], the upper bound strictly below 1 in
    their dtype: seed 000's epsilon of 1e-8 is below float32's spacing at 1 (6e-8), so
    ``1 - 1e-8`` rounds to 1, log(1 - p) was -inf for a saturated sigmoid output, and training
    turned to NaN."""
    dtype = probabilities.dtype.as_numpy_dtype
    upper = min(dtype(1.0 - epsilon), np.nextafter(dtype(1.0), dtype(0.0)))
    return tf.clip_by_value(probabilities, epsilon, float(upper))
