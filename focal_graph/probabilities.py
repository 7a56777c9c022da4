"""The one place that turns predictions into log-probabilities.

From logits nothing is clipped: every quantity is computed in log space, so logits of any finite
size give the exact loss and finite gradients. From probabilities, predictions are clipped to
[epsilon, 1 - epsilon] (there is no other way to keep log(0) out).

Only ops tf2onnx converts are used: no Log1p, Expm1 or Xlogy (see shared/TOOLCHAIN.md), and no
`tf.reduce_logsumexp` (it converts to a ~33-node graph).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

# exp(-40) ~ 4e-18 is below half an ulp of 1 in float32 and float64, so clamping log p at -40
# changes no value of 1 - p, and it keeps exp/log away from underflow.
_LOG_P_FLOOR = -40.0


def log_normalizer(logits: tf.Tensor) -> tf.Tensor:
    """``log(sum_c exp(z_c))`` over the class axis, shape (...): the stable max-shifted form."""
    shift = tf.stop_gradient(tf.reduce_max(logits, axis=-1, keepdims=True))
    total = tf.reduce_sum(tf.exp(logits - shift), axis=-1)
    return tf.squeeze(shift, axis=-1) + tf.math.log(total)


def softmax_log_probs(y_pred: tf.Tensor, *, from_logits: bool, epsilon: float) -> tf.Tensor:
    """``log p_c`` for every class, shape (..., C).

    From logits: ``z_c - logsumexp(z)``. From probabilities: ``log(clip(p_c / sum_k p_k,
    epsilon, 1 - epsilon))``, normalised first as Keras's categorical losses do.
    """
    if from_logits:
        return y_pred - log_normalizer(y_pred)[..., None]
    return tf.math.log(_clip(y_pred / tf.reduce_sum(y_pred, axis=-1, keepdims=True), epsilon))


def softmax_log_prob_at(
    y_pred: tf.Tensor, class_index: tf.Tensor, *, from_logits: bool, epsilon: float
) -> tf.Tensor:
    """``log p_t`` of class ``class_index`` (shape (...), int, in range) at every position.

    From logits this gathers ``z_t`` and subtracts the log-normaliser, so the full (..., C)
    log-softmax is never written out.
    """
    batch_dims = y_pred.shape.rank - 1
    # gather with batch_dims and a trailing index axis converts to GatherND; axis=-1 does not.
    picked = tf.gather(y_pred, class_index[..., None], batch_dims=batch_dims)[..., 0]
    if from_logits:
        return picked - log_normalizer(y_pred)
    return tf.math.log(_clip(picked / tf.reduce_sum(y_pred, axis=-1), epsilon))


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


def one_minus_exp(log_p: tf.Tensor) -> tf.Tensor:
    """``1 - exp(log_p)`` for ``log_p <= 0``, accurate to a few ulp as ``log_p`` goes to 0.

    ``1 - exp(x)`` alone cancels for small |x| (x = -1e-3 keeps 4 of float32's 7 digits), and
    Expm1 has no tf2onnx handler. Kahan's correction: with ``u = exp(x)`` rounded,
    ``1 - e**x = (1 - u) * x / log(u)`` to working precision; where u rounds to 1, ``1 - e**x = -x``.
    The ratio ``x / log(u)`` is ~1 and only corrects rounding, so no gradient flows through it.
    """
    x = tf.maximum(log_p, _LOG_P_FLOOR)
    u = tf.exp(x)
    rounds_to_one = tf.equal(u, 1.0)
    log_u = tf.where(rounds_to_one, tf.ones_like(u), tf.math.log(u))
    correction = tf.stop_gradient(x / log_u)
    return tf.where(rounds_to_one, -x, (1.0 - u) * correction)


def _clip(probabilities: tf.Tensor, epsilon: float) -> tf.Tensor:
    return tf.clip_by_value(probabilities, epsilon, 1.0 - epsilon)
