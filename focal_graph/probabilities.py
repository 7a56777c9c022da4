"""The one place that turns predictions into log-probabilities.

From logits nothing is clipped: every quantity is computed in log space, so logits of any finite
size give the exact loss and finite gradients. From probabilities, predictions are clipped to
[epsilon, 1 - epsilon] (there is no other way to keep log(0) out).

Precision: where p_t is close to 1, log p_t = -log(1 + r) carries an absolute error of a few
roundings of 1 (the sum over the classes), exactly as TensorFlow's own softmax cross-entropy does,
so 1 - p_t and the softmax losses there (about (1 - p_t)**(gamma + 1)) are exact in absolute terms
but not to the last relative digit: their relative error is at most

    (1 + eta)**(gamma + 1) - 1 + 4 eps,   eta = ((C + 1) / (1 - p_t) + Z) * eps / 2

(eps = 2**-23 in float32, C classes, Z the row's logit spread capped at 104;
`export.formula.softmax_relative_bound` says why). At C = 5 and gamma 2 the error reached 13.8
eps / (1 - p_t), in TensorFlow eagerly and in tf.function (4.7 with XLA); tests/test_softmax_bound.py
checks the bound on gaps up to 80, C of 2 to 1000 and gamma 0, 0.5, 2 and 5, in TensorFlow and ONNX
Runtime. Recovering those digits would need a second pass over the classes. The sigmoid losses
have no such sum: relative error within 2e-6 of float64 for every float32 logit.

Only ops tf2onnx converts are used, with one exception: the sigmoid losses use TensorFlow's own
Log1p (`log1p_exp`), which tf2onnx does not convert; focalgraph's conversion gives it a handler
(`export.onnx_conversion.CUSTOM_OP_HANDLERS`). No Expm1 or Xlogy (tf2onnx 1.17 has no handler for them), and no
Sigmoid or Softplus for sigmoid losses (see `sigmoid_focal_terms`). From
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


class BinaryFocalTerms(NamedTuple):
    """The two per-element quantities a binary focal loss needs, shape of the targets:
    ``cross_entropy = -(y log p + (1 - y) log(1 - p))`` and ``one_minus_p_t = y (1 - p) + (1 - y) p``."""

    cross_entropy: tf.Tensor
    one_minus_p_t: tf.Tensor


def sigmoid_focal_terms(targets: tf.Tensor, y_pred: tf.Tensor, *, from_logits: bool, epsilon: float) -> BinaryFocalTerms:
    """`BinaryFocalTerms` of ``p = sigmoid(x)`` for targets y in [0, 1], without cancellation.

    From logits x, with ``m = -|x|``, ``e = exp(m)``, ``u = 1 + e`` and
    ``s = log(1 + e)`` (`log1p_exp`), p and 1 - p are ``1/u`` and ``e/u`` (in the order of x's
    sign), so with ``a = |[x > 0] - y|`` (y for x <= 0, 1 - y for x > 0)::

        cross_entropy = softplus(x) - y x = s - a m
        one_minus_p_t = (e + a (1 - e)) / u

    Every term is non-negative: relative error within 2e-6 of float64 for every float32 logit
    (tests/test_sigmoid_exactness.py), where ``log p = x - softplus(x)`` cancels (7% off at
    x = 12, 0 instead of 1.1e-7 at x = 16) and ONNX Runtime's CPU Sigmoid returns 0 below x = -17.
    One Exp and one Log per element, the two costly ops (ONNX Runtime's Softplus took 120-170 ms
    per 16.4M elements against about 8 ms for a multiply). ``m`` is `negative_abs`, whose
    gradient at x = 0 gives the true ``1/2 - y``.

    From probabilities: p clipped to [epsilon, 1 - epsilon], then the definitions.
    """
    if from_logits:
        m = negative_abs(y_pred)
        e = tf.exp(m)
        far = tf.abs(tf.cast(y_pred > 0.0, targets.dtype) - targets)
        cross_entropy = log1p_exp(e) - far * m
        one_minus_p_t = (e + far * (1.0 - e)) / (1.0 + e)
        return BinaryFocalTerms(cross_entropy, one_minus_p_t)
    p = _clip(y_pred, epsilon)
    q = 1.0 - p
    cross_entropy = -(targets * tf.math.log(p) + (1.0 - targets) * tf.math.log(q))
    return BinaryFocalTerms(cross_entropy, targets * q + (1.0 - targets) * p)


@tf.custom_gradient
def negative_abs(x: tf.Tensor) -> tf.Tensor:
    """``-|x|`` with the derivative ``-sign(x)`` taken as 1 at x = 0 (``min(x, -x)``'s in
    TensorFlow, which gives a tie's gradient to its first argument).

    ``abs``'s own derivative at 0 is 0: the sigmoid losses' gradient at x = 0 would be 0 instead
    of ``1/2 - y``, and a zero-initialised head would never train. ``min(x, -x)`` has the same
    values (but for the sign of m at x = 0, which no loss sees: there m meets only ``exp`` and a
    product subtracted from ``log 2``) and that gradient, but ONNX Runtime's CPU Min is a slow
    kernel: per 16384 x 1000 float32 elements Neg + Min took 27.0 ms, Abs + Neg 14.0 ms (minima of
    ONNX Runtime's per-node profile over 5 runs of the default sigmoid graph). The custom gradient
    leaves an IdentityN, which tf2onnx drops.
    """

    def gradient(upstream):
        return tf.where(x > 0.0, -upstream, upstream)

    return -tf.abs(x), gradient


def log1p_exp(e: tf.Tensor) -> tf.Tensor:
    """``log(1 + e)`` for ``e`` in [0, 1]: TensorFlow's own ``Log1p``, within float32's rounding.

    Not a compensated ``log(u) - ((u - 1) - e)`` with ``u = 1 + e``: compilers rewrite that
    expression and undo the compensation. Grappler's arithmetic optimizer turns ``Log(1 + e)``
    into ``Log1p`` inside every `tf.function` (and a loaded SavedModel), after which the
    correction is subtracted from an already exact value: the sigmoid loss was 2x the true value
    for ``|x| >= 16.6``. XLA simplified ``(u - 1) - e`` to 0 and returned 0.0 there. ``Log1p`` is
    a primitive in TF's kernels and in XLA, so there is nothing left to rewrite.

    ONNX has no Log1p (nor does tf2onnx convert it); the exported graph gets the compensated form
    at conversion time, where no optimiser touches it (`export.onnx_conversion`), and ONNX
    Runtime runs it as written.
    """
    return tf.math.log1p(e)


def log1p_negative(p: tf.Tensor) -> tf.Tensor:
    """``log(1 - p)`` for ``p`` in [0, 1], exact where p is small (``-p`` to the last digit below
    6e-8, where ``log(1 - p)`` alone is 0); ``Log1p`` for the reasons `log1p_exp` gives."""
    return tf.math.log1p(-p)


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
