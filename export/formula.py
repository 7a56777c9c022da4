"""A spec's loss as a float64 numpy formula: what ``spec.json`` says the graphs compute.

numpy only (no TensorFlow, no onnxruntime). Used to confirm a spec against the files that compute
(`export.consistency`): an artifact whose ``spec.json`` says gamma 0.5 while its graphs compute
gamma 2 passed every other check. It is written from the docstrings' formulas, separately from
`focal_graph`'s TensorFlow code, and mirrors only the choices that decide a number:

- 16-bit predictions are computed in float32; probabilities are clipped to
  ``[epsilon, min(1 - epsilon, the largest number below 1)]`` in that compute dtype (seed 000's
  1e-8 is below float32's spacing at 1), and ``1 - p`` is floored at its smallest normal number
  before ``**gamma``;
- a sparse label outside [0, C) gives NaN, an ``ignore_index`` label (or sigmoid target) gives 0
  (whatever the logits), and a mean leaves ``ignore_index`` positions out of its denominator; a
  dense target outside [0, 1] (or NaN) that is not ``ignore_index`` gives NaN at its position;
- a sigmoid loss from logits is written as the graph writes it (`focal_graph.probabilities.
  sigmoid_focal_terms`, with ``m = -|x|``), which decides what an infinite logit gives: inf
  where ``log p = x - softplus(x)`` would give inf - inf = NaN;
- the forms are the artifact's: ``loss`` (unreduced, rounded once to the spec's dtype), then
  ``per_sample`` (the sum over every axis but the first), ``sum`` and ``mean`` of that rounded
  loss, as the graph reduces it, and float32 for a 16-bit spec (Keras's mixed-precision rule,
  `focal_graph.reduction.reduced_dtype`: a float16 sum overflows); for the sigmoid variant also
  ``normalized`` (``sum / max(1, P)``) and ``per_sample_normalized`` (``per_sample_n / max(1,
  P_n)``), P the targets > 0.5 that are not ``ignore_index``.

Everything else is float64, so the formula differs from a float32 graph by float32 rounding.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from focal_graph.params import KERAS_EPSILON
from focal_graph.spec import FocalSpec
from focal_graph.weights import class_weights


def spec_forms(spec: FocalSpec, y_true, predictions, weights=None) -> dict[str, np.ndarray]:
    """The forms of ``spec``'s loss: ``loss`` in the spec's dtype, the reduced forms in
    float32 for a 16-bit spec and in the spec's dtype otherwise.

    Args:
        spec: the loss.
        y_true: integer labels (...) for sparse losses, targets (..., C) otherwise.
        predictions: logits, or probabilities when ``spec.from_logits`` is false, (..., C), the
            class axis where ``spec.axis`` puts it.
        weights: for a weighted spec, the unreduced loss's shape: multiplied into the loss (NaN
            where negative), and the mean is ``sum(w loss) / sum(w)`` over counted positions.

    Returns:
        ``{"loss": (...) or (..., C) or (..., 1), "per_sample": (N,), "sum": (), "mean": ()}``,
        and ``"normalized": ()``, ``"per_sample_normalized": (N,)`` for the sigmoid variant.

    Raises:
        ValueError: inputs whose rank, class count or shapes do not fit the spec.
    """
    predictions = np.asarray(predictions)
    y_true = np.asarray(y_true)
    if predictions.ndim != spec.rank:
        raise ValueError(f"predictions: rank {predictions.ndim}; the spec has rank {spec.rank}")
    axis = spec.class_axis
    if spec.num_classes is not None and predictions.shape[axis] != spec.num_classes:
        raise ValueError(f"predictions: {predictions.shape[axis]} classes; the spec fixes C={spec.num_classes}")
    without_classes = predictions.shape[:axis] + predictions.shape[axis + 1:]
    expected = without_classes if spec.sparse else predictions.shape
    if y_true.shape != expected:
        raise ValueError(f"{spec.input_names[0]}: shape {y_true.shape}; expected {expected}")
    if (weights is None) == bool(spec.weighted):
        raise ValueError("weights: " + ("the spec is weighted; give them" if spec.weighted else "the spec is not weighted"))
    per_class = spec.loss_shape == "classes"
    if weights is not None:
        weights = np.asarray(weights, np.float64)
        if weights.shape != (predictions.shape if per_class else without_classes):
            raise ValueError(f"weights: shape {weights.shape}; expected the loss's")
    # computed classes-last, as the graph does after its transpose; masks and positives are read
    # in the caller's layout, the loss's
    y_in_layout = y_true
    predictions = np.moveaxis(predictions, axis, -1)
    if not spec.sparse:
        y_true = np.moveaxis(y_true, axis, -1)
    compute = np.float64 if spec.dtype == "float64" else np.float32
    with np.errstate(all="ignore"):  # non-finite predictions give what the graphs give: NaN or inf
        loss = _LOSSES[spec.kind](spec, y_true, predictions.astype(np.float64), compute)
        if per_class:
            loss = np.moveaxis(loss, -1, axis)
        if weights is not None:
            loss = np.where(weights >= 0.0, loss * weights, np.nan)
        loss = loss.astype(spec.dtype)
        reduced = loss.astype(np.float64)  # the graph reduces the loss it returns, rounded to its dtype
        counted = None
        if spec.ignore_index is not None:  # sparse labels, or sigmoid targets
            counted = y_in_layout != spec.ignore_index
        total = reduced.sum() if counted is None else np.where(counted, reduced, 0.0).sum()
        count = reduced.size if counted is None else int(counted.sum())
        if weights is not None:
            count = weights.astype(spec.dtype).astype(np.float64)
            count = (count if counted is None else np.where(counted, count, 0.0)).sum()
            count = count if count > 0 else 1.0
        reduced_dtype = np.float32 if spec.dtype in ("float16", "bfloat16") else spec.dtype
        axes = tuple(range(1, reduced.ndim))
        per_sample = reduced.sum(axis=axes)
        forms = {
            "loss": loss,
            "per_sample": per_sample.astype(reduced_dtype),
            "sum": np.asarray(total).astype(reduced_dtype),
            "mean": np.asarray(total / (count if weights is not None else max(count, 1))).astype(reduced_dtype),
        }
        if spec.normalized_by_positives:
            positive = y_in_layout.astype(np.float64) > 0.5
            if counted is not None:
                positive &= counted
            positives = positive.sum(axis=axes).astype(np.float64)
            forms["normalized"] = np.asarray(total / max(positives.sum(), 1.0)).astype(reduced_dtype)
            forms["per_sample_normalized"] = (per_sample / np.maximum(positives, 1.0)).astype(reduced_dtype)
        return forms


# Relative comparisons apply where the float64 loss is above this (and above the dtype's smallest
# normal number): below it a float32 loss may flush to 0 without being wrong.
RELATIVE_FLOOR = 1e-30


def relative_floor(dtype) -> float:
    """`RELATIVE_FLOOR`, or the dtype's smallest normal number where that is larger (float16)."""
    return max(RELATIVE_FLOOR, float(np.finfo(np.dtype(dtype)).tiny))


def relative_tolerance(spec: FocalSpec, y_true, predictions, rtol: float) -> np.ndarray | None:
    """The relative error focal_graph guarantees for each element of the ``loss`` form on these
    inputs, or None where the spec makes no relative claim (only atol-or-rtol applies).

    - Sigmoid variant from logits (no ``probability_margin``, ``poly_epsilon >= 0``): every term
      is a sum of non-negative exact parts (`focal_graph.probabilities.sigmoid_focal_terms`), so
      ``rtol`` everywhere: within 2e-6 of float64 for every float32 logit.
    - Softmax variants from logits (``poly_epsilon >= 0``), and seed 002's preset (the sparse one): ``log p_t`` carries an absolute
      error from the sum over the classes, which ``1 - p_t`` and the loss see relatively as
      p_t -> 1 (`softmax_relative_bound`). ``q`` is ``1 - p_t`` (dense targets: the smallest
      ``1 - p_c`` among the classes with a positive target) and gamma the largest of the classes'.
    - Anything else (the two probability presets, probabilities, a margin, a negative Poly-1
      epsilon): None.
    """
    if not spec.from_logits or (spec.poly_epsilon or 0.0) < 0.0 or (
            spec.kind[0] != "variant" and spec.kind != ("preset", "sparse_softmax")):
        return None
    predictions = np.asarray(predictions, np.float64)
    compute = np.float64 if spec.dtype == "float64" else np.float32
    if spec.kind == ("variant", "sigmoid"):
        if spec.probability_margin:
            return None
        return np.full(predictions.shape, rtol)
    logits = np.moveaxis(predictions, spec.class_axis, -1)
    if logits.shape[-1] == 0:
        return None
    with np.errstate(all="ignore"):
        log_p = _log_softmax(logits)
        if spec.sparse:
            labels = np.asarray(y_true).astype(np.int64)
            index = np.clip(labels, 0, logits.shape[-1] - 1)[..., None]
            q = -np.expm1(np.take_along_axis(log_p, index, axis=-1)[..., 0])
        else:
            targets = np.moveaxis(np.asarray(y_true, np.float64), spec.class_axis, -1)
            q = np.where(targets > 0.0, -np.expm1(log_p), np.inf).min(axis=-1, initial=np.inf)
        spread = logits.max(axis=-1, initial=-np.inf) - logits.min(axis=-1, initial=np.inf)
        gamma = float(np.max(np.asarray(spec.gamma, np.float64)))
        bound = softmax_relative_bound(q, logits.shape[-1], gamma, spread, compute)
    return rtol + bound


def softmax_relative_bound(one_minus_p_t, num_classes: int, gamma: float, spread, compute=np.float32):
    """The relative error bound of a softmax focal loss from logits as p_t -> 1::

        (1 + eta)**(gamma + 1) - 1 + 4 eps,   eta = ((C + 1) / (1 - p_t) + Z) * eps / 2

    with eps the compute dtype's machine epsilon (2**-23 in float32), C the number of classes
    and Z the row's logit spread (largest minus smallest, at most 104 in float32: beyond it a
    class's exp underflows and adds nothing).

    Why: ``log p_t = z_t - M - log(sum_c exp(z_c - M))``; the sum is about 1 and its C - 1
    roundings (recursive summation's worst case) plus log's and exp's put an absolute error
    below ``(C + 1) eps / 2`` on log p_t, and ``z_c - M`` rounds by at most ``Z eps / 2``
    relative in each exp. ``-log p_t`` and ``1 - p_t`` are both about ``1 - p_t`` there, so each
    is off by a relative eta, and the loss, about ``(1 - p_t)**(gamma + 1)``, by
    ``(1 + eta)**(gamma + 1) - 1``; 4 eps covers the final products and Pow. Measured
    (tests/test_softmax_bound.py): TensorFlow eagerly, in tf.function, with XLA and ONNX
    Runtime stay within it on gaps 0..80, C 2 to 1000 and gamma 0, 0.5, 2 and 5; the largest
    use of it was at C = 5 (the sum's roundings are random beyond a few classes).
    """
    eps = float(np.finfo(compute).eps)
    limit = -float(np.log(np.finfo(compute).smallest_subnormal))
    spread = np.minimum(np.asarray(spread, np.float64), limit)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        # |q|: -expm1 of a log p_t that rounded to 0 is -0.0, whose reciprocal is -inf
        eta = ((num_classes + 1) / np.abs(np.asarray(one_minus_p_t, np.float64)) + spread) * eps / 2
        bound = (1.0 + eta) ** (gamma + 1.0) - 1.0 + 4 * eps
        return np.where(np.isnan(bound), np.inf, bound)


# ---------------------------------------------------------------------------------------------
# Building blocks: every quantity in float64; `compute` is the dtype the graph works in.


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """``z_c - logsumexp(z)`` over the last axis. A row whose largest logit is not finite (NaN,
    +inf, or every logit -inf) is NaN throughout, as TensorFlow's log_softmax gives it."""
    top = logits.max(axis=-1, keepdims=True, initial=-np.inf)
    shifted = logits - np.where(np.isfinite(top), top, np.nan)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _clip(probabilities: np.ndarray, epsilon: float, compute) -> np.ndarray:
    """``probabilities`` clipped to [epsilon, 1 - epsilon] with both bounds as the graph holds
    them: rounded to ``compute``, the upper one strictly below 1."""
    lower = float(compute(epsilon))
    upper = float(min(compute(1.0 - epsilon), np.nextafter(compute(1.0), compute(0.0))))
    return np.clip(probabilities, lower, upper)


def _tiny(compute) -> float:
    return float(np.finfo(compute).tiny)


def _total(probabilities: np.ndarray, compute, keepdims: bool = False) -> np.ndarray:
    """The sum over the classes, floored at the smallest normal number (an all-zero row)."""
    return np.maximum(probabilities.sum(axis=-1, keepdims=keepdims), _tiny(compute))


def _focal(cross_entropy, one_minus_p, gamma, weight, compute) -> np.ndarray:
    """``weight * max(1 - p, tiny)**gamma * cross_entropy``."""
    loss = cross_entropy * np.maximum(one_minus_p, _tiny(compute)) ** gamma
    return loss if weight is None else loss * weight


def _per_class(value) -> np.ndarray | None:
    return None if value is None else np.asarray(value, np.float64)


def _weight(spec: FocalSpec, alpha=None) -> np.ndarray | None:
    """``alpha * class_weight``, ``class_weight`` derived from ``class_counts`` when given."""
    weight = _per_class(spec.class_weight)
    if spec.class_counts is not None:
        beta = {} if spec.beta is None else {"beta": spec.beta}
        weight = class_weights(spec.class_counts, spec.weighting or "inverse_frequency", **beta)
    if alpha is not None:
        weight = _per_class(alpha) if weight is None else _per_class(alpha) * weight
    return weight


def _valid_targets(targets: np.ndarray) -> np.ndarray:
    """Where a dense target is a probability: ``y (1 - y) >= 0``, False outside [0, 1] and for NaN."""
    return targets * (1.0 - targets) >= 0.0


def _sigmoid_terms(targets, predictions, from_logits: bool, epsilon: float, compute):
    """``cross_entropy = -(y log p + (1 - y) log(1 - p))`` and ``one_minus_p_t = y (1 - p) +
    (1 - y) p`` of a per-class sigmoid output. From logits x, with ``m = -|x|``, ``e = exp(m)``
    and ``a = |[x > 0] - y|``: ``log(1 + e) - a m`` and ``(e + a (1 - e)) / (1 + e)``."""
    if from_logits:
        m = np.minimum(predictions, -predictions)
        e = np.exp(m)
        far = np.abs((predictions > 0.0) - targets)
        return np.log1p(e) - far * m, (e + far * (1.0 - e)) / (1.0 + e)
    p = _clip(predictions, epsilon, compute)
    q = (compute(1.0) - p.astype(compute)).astype(np.float64)  # exact, as the graph's 1 - p is
    return -(targets * np.log(p) + (1.0 - targets) * np.log(q)), targets * q + (1.0 - targets) * p


# ---------------------------------------------------------------------------------------------
# The losses, one per spec kind.


def _sparse_softmax(spec: FocalSpec, labels, logits, compute, *, alpha=None, gamma=None, from_logits=None,
                    epsilon=None, ignore_index=None) -> np.ndarray:
    """``-w_t * max(1 - p_t, tiny)**gamma_t * log p_t``; NaN for a label outside [0, C), 0 for
    ``ignore_index``."""
    labels = labels.astype(np.int64)
    classes = logits.shape[-1]
    valid = (labels >= 0) & (labels < classes)
    index = np.where(valid, labels, 0)
    if from_logits:
        log_p_t = np.take_along_axis(_log_softmax(logits), index[..., None], axis=-1)[..., 0]
    else:
        picked = np.take_along_axis(logits, index[..., None], axis=-1)[..., 0]
        log_p_t = np.log(_clip(picked / _total(logits, compute), epsilon, compute))
    gamma = np.asarray(gamma, np.float64)
    gamma_t = gamma if gamma.ndim == 0 else gamma[index]
    weight = _weight(spec, alpha)
    weight_t = None if weight is None else (weight if weight.ndim == 0 else weight[index])
    loss = _focal(-log_p_t, -np.expm1(log_p_t), gamma_t, weight_t, compute)
    loss = loss + _poly(spec, -np.expm1(log_p_t), gamma_t)
    loss = np.where(valid, loss, np.nan)
    if ignore_index is not None:
        loss = np.where(labels == ignore_index, 0.0, loss)
    return loss


def _softmax(spec: FocalSpec, targets, predictions, compute, *, gamma, alpha, label_smoothing, from_logits,
             epsilon) -> np.ndarray:
    """``-sum_c w_c * y_c * max(1 - p_c, tiny)**gamma_c * log p_c``, y smoothed towards 1/C."""
    targets = targets.astype(np.float64)
    valid = _valid_targets(targets)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / predictions.shape[-1]
    if from_logits:
        log_p = _log_softmax(predictions)
    else:
        log_p = np.log(_clip(predictions / _total(predictions, compute, keepdims=True), epsilon, compute))
    gamma = np.asarray(gamma, np.float64)
    per_class = _focal(-log_p * targets, -np.expm1(log_p), gamma, _weight(spec, alpha), compute)
    # Poly-1's p_t = sum_c y_c p_c, its exponent the targets' mix of the classes' gammas
    poly = _poly(spec, 1.0 - (targets * np.exp(log_p)).sum(axis=-1), gamma if gamma.ndim == 0 else (targets * gamma).sum(axis=-1))
    return np.where(valid, per_class, np.nan).sum(axis=-1) + poly


def _sigmoid(spec: FocalSpec, targets, predictions, compute, *, gamma, alpha, label_smoothing, from_logits, epsilon,
             class_weight=True) -> np.ndarray:
    """``a_t * w_c * max(1 - p_t, tiny)**gamma_c * BCE(y, p)`` per class, y smoothed towards 1/2."""
    targets = targets.astype(np.float64)
    valid = _valid_targets(targets)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if spec.kind == ("variant", "sigmoid") and (spec.gamma_negative != spec.gamma or spec.probability_margin):
        return np.where(valid, _asymmetric(spec, targets, predictions, compute), np.nan)
    cross_entropy, one_minus_p_t = _sigmoid_terms(targets, predictions, from_logits, epsilon, compute)
    weight = _weight(spec) if class_weight else None
    if alpha is not None:
        alpha = _per_class(alpha)
        alpha_t = targets * alpha + (1.0 - targets) * (1.0 - alpha)
        weight = alpha_t if weight is None else alpha_t * weight
    loss = _focal(cross_entropy, one_minus_p_t, np.asarray(gamma, np.float64), weight, compute)
    loss = loss + _poly(spec, one_minus_p_t, np.asarray(gamma, np.float64))
    return np.where(valid, loss, np.nan)


def _poly(spec: FocalSpec, one_minus_p_t, gamma) -> np.ndarray | float:
    """Poly-1's ``epsilon * (1 - p_t)**(gamma + 1)`` (Leng et al. 2022), not weighted; 0 without it."""
    if not spec.poly_epsilon:
        return 0.0
    return spec.poly_epsilon * np.maximum(one_minus_p_t, 0.0) ** (gamma + 1.0)


def _asymmetric(spec: FocalSpec, targets, predictions, compute) -> np.ndarray:
    """Ridnik et al. 2021, per class: ``y a+ w (1 - p)**gamma (-log p) + (1 - y) a- w
    p_m**gamma_negative (-log(1 - p_m))``, ``p_m = max(p - m, 0)`` with the margin m as the graph
    holds it (rounded to ``compute``), ``a+ = alpha``, ``a- = 1 - alpha``; plus Poly-1's term."""
    positive_ce, one_minus_p = _sigmoid_terms(np.ones_like(targets), predictions, spec.from_logits, spec.epsilon, compute)
    negative_ce, p = _sigmoid_terms(np.zeros_like(targets), predictions, spec.from_logits, spec.epsilon, compute)
    margin = float(compute(spec.probability_margin))
    if margin:
        p_m = np.maximum(p - margin, 0.0)
        negative_ce = -np.log1p(-p_m)
    else:
        p_m = p
    gamma, gamma_negative = np.asarray(spec.gamma, np.float64), np.asarray(spec.gamma_negative, np.float64)
    positive = _focal(positive_ce, one_minus_p, gamma, None, compute)
    negative = _focal(negative_ce, p_m, gamma_negative, None, compute)
    if spec.alpha is not None:
        alpha = _per_class(spec.alpha)
        positive, negative = positive * alpha, negative * (1.0 - alpha)
    loss = targets * positive + (1.0 - targets) * negative
    weight = _weight(spec)
    if weight is not None:
        loss = loss * weight
    return loss + _poly(spec, targets * one_minus_p + (1.0 - targets) * p, gamma)


def _variant_sparse_softmax(spec, labels, logits, compute):
    return _sparse_softmax(spec, labels, logits, compute, alpha=spec.alpha, gamma=spec.gamma,
                           from_logits=spec.from_logits, epsilon=spec.epsilon, ignore_index=spec.ignore_index)


def _variant_softmax(spec, targets, predictions, compute):
    return _softmax(spec, targets, predictions, compute, gamma=spec.gamma, alpha=spec.alpha,
                    label_smoothing=spec.label_smoothing, from_logits=spec.from_logits, epsilon=spec.epsilon)


def _variant_sigmoid(spec, targets, predictions, compute):
    """The sigmoid loss; 0 where the target is ``ignore_index`` (whatever the prediction)."""
    if spec.ignore_index is None:
        return _sigmoid(spec, targets, predictions, compute, gamma=spec.gamma, alpha=spec.alpha,
                        label_smoothing=spec.label_smoothing, from_logits=spec.from_logits, epsilon=spec.epsilon)
    ignored = targets == spec.ignore_index
    loss = _sigmoid(spec, np.where(ignored, 0.0, targets), predictions, compute, gamma=spec.gamma, alpha=spec.alpha,
                    label_smoothing=spec.label_smoothing, from_logits=spec.from_logits, epsilon=spec.epsilon)
    return np.where(ignored, 0.0, loss)


def _preset_multilabel_lsr(spec, targets, probabilities, compute):
    """Seed 000: ``(1 - e) * mean_c[y_c * w_c * focal_c] + e * CE(uniform, p / sum p)``; the
    focal term is the sigmoid loss with alpha 1 (so a_t = y), the LSR term a softmax loss with
    gamma 0 clipped at Keras's epsilon."""
    focal = _sigmoid(spec, targets, probabilities, compute, gamma=spec.gamma, alpha=1.0, label_smoothing=0.0,
                     from_logits=False, epsilon=spec.epsilon)
    uniform = np.full(probabilities.shape, 1.0 / probabilities.shape[-1])
    smoothing = _softmax(_unweighted(spec), uniform, probabilities, compute, gamma=0.0, alpha=None, label_smoothing=0.0,
                         from_logits=False, epsilon=KERAS_EPSILON)
    return (1.0 - spec.label_smoothing) * focal.mean(axis=-1) + spec.label_smoothing * smoothing


def _preset_multi_category(spec, targets, probabilities, compute):
    """Seed 001: ``sum_c w_c * max(1 - pt_c, tiny)**gamma * -log pt_c``, shape (..., 1)."""
    focal = _sigmoid(spec, targets, probabilities, compute, gamma=spec.gamma, alpha=None, label_smoothing=0.0,
                     from_logits=False, epsilon=spec.epsilon)
    return focal.sum(axis=-1, keepdims=True)


def _preset_sparse_softmax(spec, labels, logits, compute):
    """Seed 002: the sparse softmax loss from logits with per-class alpha."""
    return _sparse_softmax(spec, labels, logits, compute, alpha=spec.alpha, gamma=spec.gamma, from_logits=True)


def _unweighted(spec: FocalSpec) -> FocalSpec:
    """A stand-in whose `_weight` is None (seed 000's LSR term has no class weights)."""
    return FocalSpec(variant="softmax")


_LOSSES: dict[tuple[str, str], Callable] = {
    ("variant", "sparse_softmax"): _variant_sparse_softmax,
    ("variant", "softmax"): _variant_softmax,
    ("variant", "sigmoid"): _variant_sigmoid,
    ("preset", "multilabel_lsr"): _preset_multilabel_lsr,
    ("preset", "multi_category"): _preset_multi_category,
    ("preset", "sparse_softmax"): _preset_sparse_softmax,
}
