"""The three focal-loss variants (Lin et al., "Focal Loss for Dense Object Detection", 2017).

Every variant is ``FL = -w * (1 - p_t)**gamma * log p_t`` with a different ``p_t``:

- `sparse_softmax_focal_loss`: integer labels, ``p_t`` the softmax probability of the label.
- `softmax_focal_loss`: one-hot or soft targets, summed over classes (Keras's
  CategoricalFocalCrossentropy, without its clipping when given logits).
- `sigmoid_focal_loss`: independent binary problems per class (RetinaNet; Keras's
  BinaryFocalCrossentropy with class balancing).

Arguments follow Keras: targets first, predictions second. Predictions have any rank >= 2 with
the class axis last, or at ``axis`` (channels-first (N, C, H, W): ``axis=1``); every dimension
may be unknown at trace time. Options beyond Lin et al.: ``poly_epsilon`` (Poly-1, Leng et al.,
ICLR 2022), ``gamma_negative`` and ``probability_margin`` (the sigmoid variant's asymmetric loss,
Ridnik et al., ICCV 2021), and ``weights`` (per position, multiplied in). Each returns the unreduced
loss (use `focal_graph.reduction.reduce_loss`). float16 and bfloat16 are computed in float32 and
cast back.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from focal_graph import params
from focal_graph.probabilities import log1p_negative, sigmoid_focal_terms, softmax_log_prob_at, softmax_log_probs
from focal_graph.reduction import reduce_classes

def sparse_softmax_focal_loss(
    labels,
    logits,
    *,
    gamma=2.0,
    alpha=None,
    class_weight=None,
    from_logits: bool = True,
    ignore_index: int | None = None,
    epsilon: float = params.KERAS_EPSILON,
    axis: int = -1,
    poly_epsilon: float = 0.0,
    weights=None,
) -> tf.Tensor:
    """Softmax focal loss with integer labels; generalises seed 002 to any rank.

    ``loss = -alpha_t * class_weight_t * (1 - p_t)**gamma_t * log p_t``, with
    ``log p_t = z_t - logsumexp(z)`` (no clipping) from logits. Exact in absolute terms; as
    p_t -> 1 the relative error is at most ``(1 + eta)**(gamma + 1) - 1 + 4 eps``,
    ``eta = ((C + 1) / (1 - p_t) + Z) eps / 2`` (`focal_graph.probabilities`;
    tests/test_softmax_bound.py).

    Args:
        labels: integer class indices, shape (...). Float labels are accepted if integral (Keras
            passes labels as floats).
        logits: predictions, shape (..., C): logits, or probabilities if ``from_logits=False``.
        gamma: focusing parameter >= 0, scalar or one per class (indexed by the label).
        alpha: scalar or per-class weight >= 0 (indexed by the label); None means 1.
        class_weight: per-class multipliers (e.g. `focal_graph.class_weights`); None means 1.
        from_logits: whether ``logits`` are logits (default) or probabilities.
        ignore_index: label value whose positions get loss 0 (and are not counted by a mean).
        epsilon: probability clip, used only when ``from_logits=False``.
        axis: the class axis of the predictions (default -1; 1 for channels-first (N, C, H, W));
            any axis but the first, the batch. Moved last inside the graph (a transpose).
        poly_epsilon: Poly-1's epsilon >= -1 (Leng et al., "PolyLoss", ICLR 2022): adds
            ``epsilon * (1 - p_t)**(gamma_t + 1)``, not weighted by alpha or the class weights.
            The loss stays >= 0 for epsilon >= -w, w the weight of the position's focal term,
            since ``FL >= w (1 - p_t)**(gamma + 1)``: for epsilon >= -1 when w >= 1.
        weights: optional, shape (...) (the labels'), >= 0, multiplied into the loss; a weight of
            0 removes a position whose loss is finite (an invalid label stays NaN).

    Returns:
        Loss of shape (...), the dtype of ``logits``. A label outside [0, C) that is not
        ``ignore_index`` gives NaN at its position inside graphs (asserts do not survive ONNX
        export, NaN does); called eagerly, it raises ValueError naming the value.
    """
    logits, out_dtype = predictions_in_compute_dtype("logits", logits)
    axis = params.class_axis(axis, logits.shape.rank)
    poly_epsilon = params.poly_epsilon(poly_epsilon)
    logits = classes_last(logits, axis)
    labels = _labels(labels, logits)
    weights = _weights(weights, logits.shape[:-1], logits.dtype)
    num_classes = logits.shape[-1]
    gamma = _per_class_value("gamma", gamma, num_classes, logits.dtype)
    weight = _class_weight(alpha, class_weight, num_classes, logits.dtype)
    epsilon = params.epsilon(epsilon)

    num_classes_t = tf.cast(tf.shape(logits)[-1], labels.dtype)
    in_range = tf.logical_and(labels >= 0, labels < num_classes_t)
    if labels.dtype.is_floating:
        in_range = tf.logical_and(in_range, tf.equal(labels, tf.floor(labels)))
    ignored = None
    if ignore_index is not None:
        ignored = tf.equal(labels, tf.cast(params.integer("ignore_index", ignore_index), labels.dtype))
    if tf.executing_eagerly():
        _raise_on_bad_labels(labels, in_range, ignored, ignore_index, int(tf.shape(logits)[-1]))
    class_index = tf.cast(tf.where(in_range, labels, tf.zeros_like(labels)), tf.int64)

    log_p_t = softmax_log_prob_at(logits, class_index, from_logits=from_logits, epsilon=epsilon)
    one_minus_p_t = 1.0 - tf.exp(log_p_t)
    loss = _focal_term(-log_p_t, one_minus_p_t, _at(gamma, class_index), _at(weight, class_index))
    if poly_epsilon:
        loss = loss + _poly_term(one_minus_p_t, _at(gamma, class_index), poly_epsilon)

    counted = in_range
    if ignored is not None:
        loss = _where_exact(ignored, tf.zeros_like(loss), loss)  # 0 even where the logits are not finite
        counted = tf.logical_or(in_range, ignored)
    loss = tf.where(counted, loss, tf.constant(np.nan, loss.dtype))  # a NaN branch: a real Where in ONNX
    loss = loss * _same_shape_guard(labels, logits, drop_classes=True)
    if weights is not None:
        loss = _weighted(loss, weights)
    return tf.cast(loss, out_dtype)


def softmax_focal_loss(
    targets,
    y_pred,
    *,
    gamma=2.0,
    alpha=None,
    class_weight=None,
    from_logits: bool = True,
    label_smoothing: float = 0.0,
    epsilon: float = params.KERAS_EPSILON,
    axis: int = -1,
    poly_epsilon: float = 0.0,
    weights=None,
) -> tf.Tensor:
    """Softmax focal loss with one-hot or soft targets.

    ``loss = -sum_c alpha_c * class_weight_c * y_c * (1 - p_c)**gamma_c * log p_c`` with
    ``log p = log_softmax(z)`` from logits (no clipping); the relative error as p_t -> 1 is
    bounded as for `sparse_softmax_focal_loss`. A scalar ``alpha`` multiplies the loss,
    as in Keras's CategoricalFocalCrossentropy. ``label_smoothing`` ls replaces y by
    ``y * (1 - ls) + ls / C``.

    Args:
        targets: shape (..., C), one-hot or a distribution per position.
        y_pred: shape (..., C): logits, or probabilities if ``from_logits=False`` (normalised to
            sum 1, then clipped to [epsilon, 1 - epsilon]).
        axis: the class axis of the predictions (default -1; 1 for channels-first (N, C, H, W));
            any axis but the first, the batch. Moved last inside the graph (a transpose).
        poly_epsilon: Poly-1's epsilon >= -1 (Leng et al., "PolyLoss", ICLR 2022): adds
            ``epsilon * (1 - p_t)**(gamma_t + 1)``, not weighted by alpha or the class weights.
            The loss stays >= 0 for epsilon >= -w, w the weight of the position's focal term,
            since ``FL >= w (1 - p_t)**(gamma + 1)``: for epsilon >= -1 when w >= 1.
            Here ``p_t = sum_c y_c p_c`` and ``gamma_t = sum_c y_c gamma_c`` (the label's for
            one-hot targets).
        weights: optional, shape (...) (the loss's), >= 0, multiplied into the loss.

    Returns:
        Loss of shape (...), the class axis removed. Targets and predictions of different runtime shapes give NaN inside
        graphs rather than a silently broadcast number.
    """
    y_pred, out_dtype = predictions_in_compute_dtype("y_pred", y_pred)
    targets = _targets(targets, y_pred)
    axis = params.class_axis(axis, y_pred.shape.rank)
    poly_epsilon = params.poly_epsilon(poly_epsilon)
    weights = _weights(weights, _without(y_pred.shape, axis), y_pred.dtype)
    y_pred, targets = classes_last(y_pred, axis), classes_last(targets, axis)
    num_classes = y_pred.shape[-1]
    gamma = _per_class_value("gamma", gamma, num_classes, y_pred.dtype)
    weight = _class_weight(alpha, class_weight, num_classes, y_pred.dtype)
    label_smoothing = params.label_smoothing(label_smoothing)
    epsilon = params.epsilon(epsilon)

    guard = _target_guard(targets, y_pred)
    if label_smoothing:
        num_classes_t = tf.cast(tf.shape(y_pred)[-1], y_pred.dtype)
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes_t
    log_p = softmax_log_probs(y_pred, from_logits=from_logits, epsilon=epsilon)
    per_class = _focal_term(-log_p * targets, 1.0 - tf.exp(log_p), gamma, weight)
    per_class = _guarded(per_class, guard)
    loss = reduce_classes(tf.reduce_sum, per_class)
    if poly_epsilon:
        # p_t = sum_c y_c p_c, and the focusing exponent the targets' mix of the classes' gammas
        # (the label's gamma for one-hot targets, as in the sparse variant)
        one_minus_p_t = 1.0 - reduce_classes(tf.reduce_sum, targets * tf.exp(log_p))
        gamma_t = gamma if isinstance(gamma, float) else reduce_classes(tf.reduce_sum, targets * gamma)
        loss = loss + _poly_term(one_minus_p_t, gamma_t, poly_epsilon)
    if weights is not None:
        loss = _weighted(loss, weights)
    return tf.cast(loss, out_dtype)


def sigmoid_focal_loss(
    targets,
    y_pred,
    *,
    gamma=2.0,
    alpha=None,
    class_weight=None,
    from_logits: bool = True,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    epsilon: float = params.KERAS_EPSILON,
    axis: int = -1,
    poly_epsilon: float = 0.0,
    gamma_negative=None,
    probability_margin: float = 0.0,
    weights=None,
) -> tf.Tensor:
    """Sigmoid (multi-label) focal loss: every class an independent binary problem.

    ``p_t = y p + (1 - y)(1 - p)``,
    ``loss = a_t * class_weight_c * (1 - p_t)**gamma_c * BCE(y, p)`` with
    ``a_t = y alpha + (1 - y)(1 - alpha)`` (RetinaNet's balance; 1 when ``alpha`` is None) and
    ``BCE = -(y log p + (1 - y) log(1 - p))``. From logits both are computed in log space with no
    clipping and no cancellation (`focal_graph.probabilities.sigmoid_focal_terms`): relative
    error within 2e-6 of float64 for every float32 logit, gamma and alpha
    (tests/test_sigmoid_exactness.py). ``label_smoothing`` ls
    replaces y by ``y * (1 - ls) + ls / 2``, as Keras's BinaryFocalCrossentropy does.

    Args:
        targets: shape (..., C), values in [0, 1].
        y_pred: shape (..., C): logits, or probabilities if ``from_logits=False``.
        gamma: focusing parameter >= 0, scalar or one per class.
        alpha: scalar or per-class value in [0, 1]; None means no balance (a_t = 1).
        class_weight: per-class multipliers; None means 1.
        from_logits: whether ``y_pred`` are logits (default) or probabilities.
        label_smoothing: ls in [0, 1].
        ignore_index: target value (an integer outside [0, 1], e.g. RetinaNet's -1 for anchors
            between the IoU thresholds) whose elements get loss exactly 0, whatever the
            prediction there (NaN and inf included); reductions leave them out (`positive_targets`,
            `focal_graph.reduction.reductions`).
        epsilon: probability clip, used only when ``from_logits=False``.
        axis: the class axis of the predictions (default -1; 1 for channels-first (N, C, H, W));
            any axis but the first, the batch. Moved last inside the graph (a transpose).
        poly_epsilon: Poly-1's epsilon >= -1 (Leng et al., "PolyLoss", ICLR 2022): adds
            ``epsilon * (1 - p_t)**(gamma_t + 1)``, not weighted by alpha or the class weights.
            The loss stays >= 0 for epsilon >= -w, w the weight of the position's focal term,
            since ``FL >= w (1 - p_t)**(gamma + 1)``: for epsilon >= -1 when w >= 1.
        gamma_negative: the asymmetric loss's focusing of negatives (Ridnik et al., ICCV 2021),
            >= 0, scalar or per class; None means ``gamma``. With it or ``probability_margin``
            set, the loss is ``y a+ w (1 - p)**gamma (-log p) + (1 - y) a- w p_m**gamma_negative
            (-log(1 - p_m))`` with ``p_m = max(p - probability_margin, 0)``, ``a+ = alpha``,
            ``a- = 1 - alpha`` (see `_asymmetric_sigmoid`); the defaults give the loss above exactly.
        probability_margin: m in [0, 1), the asymmetric loss's probability shift of negatives.
        weights: optional, shape (..., C) (the loss's, in the predictions' layout), >= 0,
            multiplied into the loss.

    Returns:
        Loss of shape (..., C) in the predictions' layout, one value per class (Keras's
        BinaryFocalCrossentropy is its mean over the last axis), the dtype of ``y_pred``. A target
        outside [0, 1] or NaN that is not ``ignore_index`` gives NaN at its position inside
        graphs; called eagerly, it raises ValueError naming the value. Targets and predictions of
        different runtime shapes give NaN.
    """
    y_pred, out_dtype = predictions_in_compute_dtype("y_pred", y_pred)
    targets = _targets(targets, y_pred)
    axis = params.class_axis(axis, y_pred.shape.rank)
    poly_epsilon = params.poly_epsilon(poly_epsilon)
    weights = _weights(weights, y_pred.shape, y_pred.dtype)
    y_pred, targets = classes_last(y_pred, axis), classes_last(targets, axis)
    weights = None if weights is None else classes_last(weights, axis)
    num_classes = y_pred.shape[-1]
    gamma_values = params.per_class("gamma", gamma, num_classes=num_classes)
    gamma_negative_values = gamma_values if gamma_negative is None else params.per_class(
        "gamma_negative", gamma_negative, num_classes=num_classes)
    probability_margin = params.probability_margin(probability_margin)
    gamma = _per_class_value("gamma", gamma_values, num_classes, y_pred.dtype)
    if alpha is not None:
        alpha = np.asarray(params.per_class("alpha", alpha, num_classes=num_classes, high=1.0))
    class_weight = _class_weight(None, class_weight, num_classes, y_pred.dtype)
    label_smoothing = params.label_smoothing(label_smoothing)
    epsilon = params.epsilon(epsilon)

    ignored = None
    if ignore_index is not None:
        ignored = ignored_targets(targets, ignore_index)  # checks ignore_index
        # An ignored element computes as a negative (target 0), so it neither trips the target
        # check nor feeds a -1 into the formula (whose gradient would then be that of a wrong
        # number); its loss is replaced by 0 below.
        targets = tf.where(ignored, tf.zeros_like(targets), targets)
    guard = _target_guard(targets, y_pred)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if gamma_negative_values != gamma_values or probability_margin:
        loss, one_minus_p_t = _asymmetric_sigmoid(
            targets, y_pred, gamma_values, gamma_negative_values, probability_margin, alpha, class_weight,
            from_logits=from_logits, epsilon=epsilon)
        if poly_epsilon:
            loss = loss + _poly_term(one_minus_p_t, gamma, poly_epsilon)
        loss = _guarded(loss, guard)
        return _sigmoid_output(loss, weights, axis, out_dtype, ignored)
    terms = sigmoid_focal_terms(targets, y_pred, from_logits=from_logits, epsilon=epsilon)
    weight = class_weight
    if alpha is not None:
        alpha_t = _alpha_t(alpha, targets, 1.0 - targets)
        weight = alpha_t if weight is None else alpha_t * weight
    # one_minus_p_t is a sum of non-negative terms, never a rounded 1 - p below 0: with every
    # gamma >= 1 the floor in _focal_term has nothing to guard, and the graph is one pass shorter.
    floor = bool(np.min(gamma_values) < 1.0)
    loss = _focal_term(terms.cross_entropy, terms.one_minus_p_t, gamma, weight, floor=floor)
    if poly_epsilon:
        loss = loss + _poly_term(terms.one_minus_p_t, gamma, poly_epsilon)
    loss = _guarded(loss, guard)
    return _sigmoid_output(loss, weights, axis, out_dtype, ignored)


def _sigmoid_output(loss, weights, axis: int, out_dtype, ignored=None):
    """The per-class loss (..., C): 0 at ``ignored`` elements (even where the logits are not
    finite), weighted, in the caller's layout and dtype."""
    if ignored is not None:
        loss = _where_exact(ignored, tf.zeros_like(loss), loss)
    if weights is not None:
        loss = _weighted(loss, weights)
    return tf.cast(classes_back(loss, axis), out_dtype)


def _asymmetric_sigmoid(targets, y_pred, gamma, gamma_negative, margin: float, alpha, class_weight, *,
                        from_logits: bool, epsilon: float):
    """The asymmetric loss (Ridnik et al., "Asymmetric Loss for Multi-Label Classification", ICCV
    2021) and ``1 - p_t``, both (..., C), for ``gamma``, ``gamma_negative`` canonical per-class values,
    ``alpha`` a canonical array or None and ``class_weight`` a `_class_weight` constant or None::

        loss = y a_+ w (1 - p)**gamma (-log p) + (1 - y) a_- w p_m**gamma_negative (-log(1 - p_m))

    with ``p_m = max(p - margin, 0)``, ``a_+ = alpha``, ``a_- = 1 - alpha`` (1 and 1 without
    alpha) and ``w`` the class weight. For binary targets it is the paper's L+ and L-.

    Numerics: ``-log p``, ``1 - p``, ``-log(1 - p)`` and ``p`` are `sigmoid_focal_terms` at targets
    1 and 0, exact from logits; without a margin nothing else is computed. ``p - margin`` is
    exact where p is close to the margin (Sterbenz), so ``p_m`` carries only p's own rounding,
    amplified by ``p / p_m`` just above the margin (the problem's own condition). ``-log(1 - p_m)``
    is `log1p_negative` (``-log(v)`` of the rounded ``v = 1 - p_m`` alone is 0 for p_m below
    6e-8). Against float64 over logits -80..80,
    the relative error is within 8e-7 without a margin and within that condition's bound with
    one (tests/test_options.py).
    """
    positive = sigmoid_focal_terms(tf.ones_like(targets), y_pred, from_logits=from_logits, epsilon=epsilon)
    negative = sigmoid_focal_terms(tf.zeros_like(targets), y_pred, from_logits=from_logits, epsilon=epsilon)
    probability = negative.one_minus_p_t
    if margin:
        shifted = tf.maximum(probability - margin, 0.0)
        negative_cross_entropy = -log1p_negative(shifted)
    else:
        shifted, negative_cross_entropy = probability, negative.cross_entropy
    dtype = y_pred.dtype
    num_classes = y_pred.shape[-1]
    floor = bool(np.min(gamma) < 1.0)
    positive_loss = _focal_term(positive.cross_entropy, positive.one_minus_p_t,
                                _per_class_value("gamma", gamma, num_classes, dtype), None, floor=floor)
    # p_m is 0 below the margin: the floor keeps p_m**gamma_negative's derivative finite there
    negative_loss = _focal_term(negative_cross_entropy, shifted,
                                _per_class_value("gamma_negative", gamma_negative, num_classes, dtype), None)
    if alpha is not None:  # the caller's canonical array, scalar or (C,)
        positive_loss = positive_loss * (float(alpha) if alpha.ndim == 0 else tf.constant(alpha, dtype))
        negative_loss = negative_loss * (float(1.0 - alpha) if alpha.ndim == 0 else tf.constant(1.0 - alpha, dtype))
    loss = targets * positive_loss + (1.0 - targets) * negative_loss
    if class_weight is not None:  # the caller's constant (`_class_weight`)
        loss = loss * class_weight
    one_minus_p_t = targets * positive.one_minus_p_t + (1.0 - targets) * probability
    return loss, one_minus_p_t


def _poly_term(one_minus_p_t, gamma, poly_epsilon: float):
    """Poly-1's added term ``epsilon * (1 - p_t)**(gamma + 1)`` (Leng et al., "PolyLoss", ICLR 2022),
    not multiplied by alpha or the class weights, as in the paper's own code. ``1 - p_t`` is
    floored at 0: a rounded ``1 - exp(log p_t)`` can be -6e-8, and the exponent is >= 1, so the
    floor keeps the value and the gradient finite."""
    return poly_epsilon * tf.pow(tf.maximum(one_minus_p_t, 0.0), gamma + 1.0)


def classes_last(tensor: tf.Tensor, axis: int) -> tf.Tensor:
    """``tensor`` with its (non-negative) axis ``axis`` moved to the end; unchanged when it is there."""
    rank = tensor.shape.rank
    if axis == rank - 1:
        return tensor
    return tf.transpose(tensor, [i for i in range(rank) if i != axis] + [axis])


def classes_back(tensor: tf.Tensor, axis: int) -> tf.Tensor:
    """The inverse of `classes_last`: the last axis moved back to ``axis``."""
    rank = tensor.shape.rank
    if axis == rank - 1:
        return tensor
    return tf.transpose(tensor, list(range(axis)) + [rank - 1] + list(range(axis, rank - 1)))


def _without(shape: tf.TensorShape, axis: int) -> tf.TensorShape:
    return tf.TensorShape(shape[:axis]).concatenate(shape[axis + 1:])


def _weights(weights, expected: tf.TensorShape, dtype):
    """``weights`` as a float tensor of the unreduced loss's shape ``expected`` (the caller's
    layout), or None. Called eagerly, a negative or NaN weight raises a ValueError naming it
    (inside graphs it gives NaN there, see `_weighted`)."""
    if weights is None:
        return None
    weights = tf.convert_to_tensor(weights)
    if not (weights.dtype.is_floating or weights.dtype.is_integer):
        raise ValueError(f"weights: expected numbers, got dtype {weights.dtype.name}")
    if weights.shape.rank != expected.rank or not weights.shape.is_compatible_with(expected):
        raise ValueError(f"weights: expected the unreduced loss's shape {expected}, got {weights.shape}")
    weights = tf.cast(weights, dtype)
    if tf.executing_eagerly():
        values = weights.numpy()
        bad = np.argwhere(~(values >= 0))
        if bad.size:
            first = tuple(int(i) for i in bad[0])
            raise ValueError(f"weights: {float(values[first])!r} at index {first} is not a weight >= 0")
    return weights


def _weighted(loss, weights):
    """``weights * loss``: NaN where a weight is negative or NaN, and everywhere when the runtime
    shapes differ (they would otherwise broadcast). A weight of 0 gives 0 where the loss is finite;
    a NaN loss (an invalid label) stays NaN."""
    loss = loss * weights * _same_shape_guard(weights, loss)
    return tf.where(weights >= 0.0, loss, tf.constant(np.nan, loss.dtype))  # a NaN branch: a real Where in ONNX


def ignored_targets(targets, ignore_index) -> tf.Tensor:
    """Where ``targets`` (..., C) equal the sigmoid ``ignore_index`` (see `focal_graph.params.sigmoid_ignore_index`):
    a boolean tensor of the targets' shape."""
    targets = tf.convert_to_tensor(targets)
    value = params.sigmoid_ignore_index(ignore_index)
    compute = targets.dtype if targets.dtype.is_floating else tf.float64
    return tf.equal(tf.cast(targets, compute), tf.cast(value, compute))


def positive_targets(targets, ignore_index=None) -> tf.Tensor:
    """The positives RetinaNet normalises by: targets > 0.5 at counted (not ``ignore_index``)
    elements, a boolean tensor of the targets' shape (..., C)."""
    targets = tf.convert_to_tensor(targets)
    if not targets.dtype.is_floating:
        targets = tf.cast(targets, tf.float32)
    positive = tf.greater(targets, 0.5)
    if ignore_index is None:
        return positive
    return tf.logical_and(positive, tf.logical_not(ignored_targets(targets, ignore_index)))


def _focal_term(cross_entropy, one_minus_p, gamma, weight, *, floor: bool = True):
    """The one place the focal factor is applied: ``weight * (1 - p)**gamma * cross_entropy``."""
    if not (isinstance(gamma, float) and gamma == 0.0):
        if floor:
            # (1 - p)**gamma has an infinite derivative at p = 1 when gamma < 1, and a base
            # rounded below 0 (1 - exp(log p) can be -6e-8) gives NaN for a non-integer gamma;
            # flooring 1 - p at the smallest normal number keeps both finite and changes no loss
            # value by more than that number.
            one_minus_p = tf.maximum(one_minus_p, np.finfo(one_minus_p.dtype.as_numpy_dtype).tiny)
        cross_entropy = cross_entropy * _power(one_minus_p, gamma)
    return cross_entropy if weight is None else cross_entropy * weight


def _power(base, gamma):
    """``base**gamma``; for gamma 1 and 2 (RetinaNet's and Keras's default) without Pow: ``base``
    and ``base * base`` are what a correctly rounded power gives, so no value changes, and ONNX
    Runtime's CPU Pow with a constant exponent of 2 cost 1.4x a multiply (16.4M float32
    elements, minima of 9 interleaved rounds, one thread: 17.8 ms against 12.4 ms)."""
    if isinstance(gamma, float) and gamma == 1.0:
        return base
    if isinstance(gamma, float) and gamma == 2.0:
        return base * base
    return tf.pow(base, gamma)


def _alpha_t(alpha: np.ndarray, targets: tf.Tensor, negatives: tf.Tensor) -> tf.Tensor:
    """RetinaNet's balance ``y alpha + (1 - y)(1 - alpha)`` for ``alpha`` a scalar or (C,) array.

    A scalar alpha takes one multiply-add, written so that both terms are non-negative (no
    cancellation: ``y (2 alpha - 1) + (1 - alpha)`` would be 6e-4 off at alpha = 1e-4, y = 1):
    ``alpha + (1 - y)(1 - 2 alpha)`` for alpha <= 1/2, ``(1 - alpha) + y (2 alpha - 1)`` above.
    """
    if alpha.ndim:
        return targets * tf.constant(alpha, targets.dtype) + negatives * tf.constant(1.0 - alpha, targets.dtype)
    alpha = float(alpha)
    if alpha <= 0.5:
        return alpha + negatives * (1.0 - 2.0 * alpha)
    return (1.0 - alpha) + targets * (2.0 * alpha - 1.0)


def predictions_in_compute_dtype(name: str, y_pred):
    """Predictions as a float tensor of rank >= 2 in the dtype to compute in, and their own dtype.
    The class axis is wherever the caller's ``axis`` says (`classes_last` moves it).

    16-bit predictions are computed in float32: (1 - p)**gamma and log p lose most of their
    digits in float16, and float16's range ends at 65504.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    if not y_pred.dtype.is_floating:
        raise ValueError(f"{name}: expected floating-point predictions, got dtype {y_pred.dtype.name}")
    if y_pred.shape.rank is None or y_pred.shape.rank < 2:
        raise ValueError(
            f"{name}: expected rank >= 2 (a batch axis and a class axis), got shape {y_pred.shape}"
        )
    out_dtype = y_pred.dtype
    if out_dtype in (tf.float16, tf.bfloat16):
        y_pred = tf.cast(y_pred, tf.float32)
    return y_pred, out_dtype


def _labels(labels, logits: tf.Tensor) -> tf.Tensor:
    labels = tf.convert_to_tensor(labels)
    if not (labels.dtype.is_integer or labels.dtype.is_floating):
        raise ValueError(f"labels: expected integer class indices, got dtype {labels.dtype.name}")
    expected = logits.shape[:-1]
    if labels.shape.rank != expected.rank or not labels.shape.is_compatible_with(expected):
        raise ValueError(
            f"labels: expected shape {expected} (the logits' shape {logits.shape} without the class axis), "
            f"got {labels.shape}"
        )
    if labels.dtype.is_floating:
        return tf.cast(labels, logits.dtype)
    return labels if labels.dtype == tf.int64 else tf.cast(labels, tf.int64)


def _targets(targets, y_pred: tf.Tensor) -> tf.Tensor:
    targets = tf.convert_to_tensor(targets)
    if targets.shape.rank != y_pred.shape.rank or not targets.shape.is_compatible_with(y_pred.shape):
        raise ValueError(f"targets: expected the predictions' shape {y_pred.shape}, got {targets.shape}")
    if not (targets.dtype.is_floating or targets.dtype.is_integer or targets.dtype == tf.bool):
        raise ValueError(f"targets: expected numeric targets, got dtype {targets.dtype.name}")
    return tf.cast(targets, y_pred.dtype)


def _where_exact(condition, x, y) -> tf.Tensor:
    """``tf.where(condition, x, y)`` that stays a selection after tf2onnx.

    tf2onnx 1.17 lowers a float ``tf.where`` to ``cond * x + (1 - cond) * y``, so a NaN or inf in
    the branch not taken leaks (NaN * 0 = NaN), unless the condition is an IsNaN or a branch is a
    NaN/inf constant (``Select.version_9`` in tf2onnx/onnx_opset/controlflow.py). The condition is
    therefore passed through a NaN marker and ``is_nan``: two Where ops on the condition's shape.
    """
    marker = tf.where(condition, tf.constant(np.nan, x.dtype), tf.constant(0.0, x.dtype))
    return tf.where(tf.math.is_nan(marker), x, y)


def _same_shape_guard(targets: tf.Tensor, y_pred: tf.Tensor, *, drop_classes: bool = False) -> tf.Tensor:
    """1, or NaN when the runtime shape of ``targets`` differs from that of ``y_pred`` (without its
    class axis, for labels): they would otherwise broadcast to a wrong number. For labels this
    matters after export: TensorFlow's gather raises on a batch mismatch, ONNX Runtime's GatherND
    broadcasts a batch of 1 silently."""
    if targets.shape.is_fully_defined() and y_pred.shape.is_fully_defined():
        return tf.constant(1.0, y_pred.dtype)
    expected = tf.shape(y_pred)[:-1] if drop_classes else tf.shape(y_pred)
    same = tf.reduce_all(tf.equal(tf.shape(targets), expected))
    return tf.where(same, tf.constant(1.0, y_pred.dtype), tf.constant(np.nan, y_pred.dtype))


def _target_guard(targets: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """0 where a target is a probability, NaN for anything else, shape of ``targets``; NaN
    everywhere when the runtime shapes of targets and predictions differ (see `_same_shape_guard`).

    ``sqrt(y (1 - y)) * t``: ``y (1 - y)`` is >= 0 exactly on [0, 1] and negative (or -inf, or
    NaN) for every other target, so its square root is finite there and NaN elsewhere; ``t`` is
    0, or NaN on a shape mismatch, so that guard costs no pass over the data. `_guarded` applies
    it to the loss. Called eagerly, a target outside [0, 1] raises a ValueError naming it; inside
    graphs the loss is NaN there (asserts do not survive ONNX export; NaN does).
    """
    threshold = _same_shape_guard(targets, y_pred) - 1.0  # 0, or NaN
    guard = tf.sqrt(targets * (1.0 - targets)) * threshold
    if tf.executing_eagerly() and bool(tf.reduce_any(tf.math.is_nan(guard))):
        values = targets.numpy()
        if values.shape == tuple(y_pred.shape):
            first = tuple(int(i) for i in np.argwhere(np.isnan(guard.numpy()))[0])
            raise ValueError(f"targets: {float(values[first])!r} at index {first} is not a probability in [0, 1]")
    return guard


def _guarded(loss: tf.Tensor, guard: tf.Tensor) -> tf.Tensor:
    """``loss - guard`` for a `_target_guard` of the loss's shape: the loss bit for bit where the
    guard is +0 (``x - 0`` is ``x`` for every x, -0 included), NaN where it is NaN. (The guard is -0
    only at a target of -0, where a loss of -0 would become +0.) It replaces ``tf.where(valid,
    loss, NaN)`` and its ``y (1 - y) >= t``: per 16384 x 1000 float32 elements ONNX Runtime's CPU
    provider took 45.3 ms for that Where and 5.6 ms for the GreaterOrEqual, 7.0 ms for the Sqrt,
    7.0 ms for the Mul by t and 10.0 ms for the Sub here (minima of ONNX Runtime's per-node
    profile, SessionOptions.enable_profiling, over 5 runs of the default sigmoid graph).
    The gradient is the Where's: the upstream one where the guard is 0, 0 where it is NaN, none
    into the targets (the guard's own would be NaN at targets 0 and 1)."""

    @tf.custom_gradient
    def subtract(loss):
        def gradient(upstream):
            return tf.where(tf.math.is_nan(guard), tf.zeros_like(upstream), upstream)
        return loss - guard, gradient

    return subtract(loss)


def _per_class_value(name, value, num_classes, dtype, *, high=np.inf):
    """A Python float (scalar) or a (C,) constant; built inside the caller's graph, never captured."""
    canonical = params.per_class(name, value, num_classes=num_classes, high=high)
    return canonical if isinstance(canonical, float) else tf.constant(canonical, dtype)


def _class_weight(alpha, class_weight, num_classes, dtype):
    """alpha * class_weight as one scalar or (C,) constant; None when both are absent."""
    weight = None
    if alpha is not None:
        weight = np.asarray(params.per_class("alpha", alpha, num_classes=num_classes))
    if class_weight is not None:
        per_class = np.asarray(
            params.per_class("class_weight", class_weight, num_classes=num_classes, allow_scalar=False)
        )
        if weight is not None and weight.ndim and weight.shape != per_class.shape:
            raise ValueError(f"class_weight: expected {weight.size} values to match alpha, got {per_class.size}")
        weight = per_class if weight is None else weight * per_class
    if weight is None:
        return None
    return float(weight) if weight.ndim == 0 else tf.constant(weight, dtype)


def _at(value, class_index):
    """A per-class value picked at each position's label; scalars pass through."""
    if value is None or isinstance(value, float):
        return value
    return tf.gather(value, class_index)


def _raise_on_bad_labels(labels, in_range, ignored, ignore_index, num_classes: int) -> None:
    bad = tf.logical_not(in_range)
    if ignored is not None:
        bad = tf.logical_and(bad, tf.logical_not(ignored))
    if not bool(tf.reduce_any(bad)):
        return
    first = tuple(int(i) for i in np.argwhere(bad.numpy())[0])
    value = labels.numpy()[first].item()
    allowed = f"[0, {num_classes})" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
    raise ValueError(f"labels: {value!r} at index {first} is not a class index in {allowed}")
