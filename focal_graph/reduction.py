"""The one place losses are reduced."""

from __future__ import annotations

import tensorflow as tf

from focal_graph import params

# ONNX Runtime 1.31's CPU reductions return their input unchanged in shape when the input is
# empty: ReduceMax over C of a (0, 5) tensor gives (0, 5), not (0, 1), and a sum over every axis
# of a (0,) tensor gives (0,), not a scalar 0 (measured; microsoft/onnxruntime#7563 is the same
# code path). Every reduction in focal_graph goes through `reduce_classes` or `_repaired_sum`,
# which give TensorFlow's shapes in both backends, so an empty batch works after export too.
# Loss totals are summed in stages, the last in float64 (`_per_sample_wide`): a single float32
# ReduceSum over 16M elements in ONNX Runtime was 1.6e-3 off float64.


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


def reduced_dtype(dtype: tf.DType) -> tf.DType:
    """The dtype of a reduced loss (``per_sample``, ``sum``, ``mean``): float32 for 16-bit losses,
    as Keras keeps losses under mixed precision (a float16 sum of 40000 x 100 losses was inf),
    else the loss's own dtype. The unreduced loss keeps its dtype."""
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def _per_sample_wide(loss: tf.Tensor) -> tf.Tensor:
    """Each sample's sum as float64 (N,), reduced in stages.

    One running float32 sum over millions of terms drifts: ONNX Runtime's ReduceSum over every
    axis of a 16384 x 1000 loss was 1.6e-3 off float64, 1.1e-2 at 65536 x 1000. Here the last
    axis (C for element-wise losses, the innermost position otherwise) is summed in float32 (at
    least), which shrinks the tensor by that axis's size in one pass; what remains is summed in
    float64, axis group by axis group, so no float32 accumulator sees more than one row.
    """
    values = tf.cast(loss, reduced_dtype(loss.dtype))
    rank = values.shape.rank
    if rank == 2:
        values = _repaired_sum(values, 1, tf.shape(values)[0])
    elif rank > 2:
        # Unrepaired: on an empty input ONNX Runtime returns the input's shape, which is still
        # empty, and the float64 stage's flatten-and-pad below turns it into the zeros it must
        # be. Reshaping it back here would need ONNX Reshape's allowzero, which tf2onnx does
        # not write. The axis is given by number: axes=[-1] failed on empty inputs there.
        values = tf.reduce_sum(values, axis=rank - 1)
    values = tf.cast(values, tf.float64)
    if rank > 2:
        values = _repaired_sum(values, list(range(1, rank - 1)), tf.shape(values)[0])
    return values


def reductions(loss, mask=None, weights=None, *, positives=None) -> dict[str, tf.Tensor]:
    """``per_sample`` (N,), ``sum`` and ``mean`` (scalars) of an unreduced loss (N, ...), from one
    staged pass (see `_per_sample_wide`), each of `reduced_dtype` (float32 for 16-bit losses).

    ``mask``: optional boolean tensor of the loss's shape, the positions that count: the others
    add nothing, and the mean divides by the number of counted positions. The sum or mean over
    zero positions (an empty batch, or every position masked) is 0, as Keras's reductions give.
    ``weights``: optional, the loss's shape, already multiplied into ``loss`` (a weighted loss);
    the mean then divides by their sum over the counted positions, ``sum(w loss) / sum(w)``
    (0 where that sum is 0).
    Within 1e-6 of float64 at 65536 x 1000 in TensorFlow and ONNX Runtime (tests/test_reductions.py).

    ``positives``: optional boolean tensor of the loss's shape, the positive elements (for a
    sigmoid loss `focal_graph.focal.positive_targets`: targets > 0.5 at counted positions). With
    it, RetinaNet's normalisations are added, from the same float64 stages:

    - ``normalized``: ``sum / max(1, number of positives in the batch)`` (scalar);
    - ``per_sample_normalized``: ``per_sample_n / max(1, positives of sample n)`` (N,), the
      per-image form torchvision's detection losses average.

    Positives are counted exactly (float32 per row below 2**24 classes, float64 after).
    """
    loss = tf.convert_to_tensor(loss)
    out_dtype = reduced_dtype(loss.dtype)
    if mask is None:
        count = tf.size(loss, out_type=tf.int64)
    else:
        mask = tf.convert_to_tensor(mask)
        # tf2onnx lowers this to mask * loss: a NaN at a masked-out position would survive there
        # (focal_graph's own losses are 0 at ignored positions).
        loss = tf.where(mask, loss, tf.zeros_like(loss))
        count = tf.reshape(_repaired_sum(tf.cast(mask, tf.int64), None, 1), [])
    if weights is not None:
        weights = tf.cast(weights, loss.dtype)
        if mask is not None:
            weights = tf.where(mask, weights, tf.zeros_like(weights))
        weight_total = tf.reshape(_repaired_sum(_wide(weights), None, 1), [])
        # a zero total weight has a zero weighted sum: the mean of nothing is 0
        count = tf.where(weight_total > 0.0, weight_total, tf.ones_like(weight_total))
    per_sample = _wide(loss)
    total = tf.reshape(_repaired_sum(per_sample, None, 1), [])
    if weights is not None:
        mean = total / count
    else:
        mean = total / tf.cast(tf.maximum(count, 1), tf.float64)
    forms = {
        "per_sample": tf.cast(per_sample, out_dtype),
        "sum": tf.cast(total, out_dtype),
        "mean": tf.cast(mean, out_dtype),
    }
    if positives is not None:
        # counts of 0/1 values: exact in float32 within a row, in float64 across rows
        positives_per_sample = _wide(tf.cast(positives, tf.float32))
        positives_total = tf.reshape(_repaired_sum(positives_per_sample, None, 1), [])
        forms["normalized"] = tf.cast(total / tf.maximum(positives_total, 1.0), out_dtype)
        forms["per_sample_normalized"] = tf.cast(per_sample / tf.maximum(positives_per_sample, 1.0), out_dtype)
    return forms


def _wide(loss) -> tf.Tensor:
    """Each sample's sum as float64 (N,), for a loss of any rank (see `_per_sample_wide`)."""
    if loss.shape.rank == 0:
        per_sample = tf.cast(tf.reshape(loss, [1]), tf.float64)
    elif loss.shape.rank == 1:
        per_sample = tf.cast(loss, tf.float64)
    else:
        per_sample = _per_sample_wide(loss)
    return per_sample


NORMALIZED_REDUCTIONS = params.NORMALIZED_REDUCTIONS


def reduce_loss(loss, reduction: str = "mean", mask=None, weights=None, positives=None) -> tf.Tensor:
    """Reduce an unreduced loss to ``none`` (unchanged), ``sum`` or ``mean`` (see `reductions`),
    or, given ``positives``, to RetinaNet's ``normalized`` or ``per_sample_normalized``.

    Args:
        loss: any shape.
        reduction: ``"none"``, ``"sum"``, ``"mean"``, ``"normalized"`` (``sum / max(1, P)``, P
            the number of positives) or ``"per_sample_normalized"`` ((N,): each sample's sum
            over its own ``max(1, P_n)``).
        mask: optional boolean tensor of the loss's shape: the positions that count. The mean
            divides by their number (ignored positions are not in the denominator); the sum
            leaves masked-out positions out.
        weights: optional, the loss's shape, already multiplied into ``loss`` (the variants'
            ``weights=``): the mean is then ``sum(w loss) / sum(w)`` over the counted positions.
        positives: boolean tensor of the loss's shape, required by the normalized reductions
            (`focal_graph.focal.positive_targets`).

    Returns:
        ``loss`` for ``none``; a scalar ((N,) for ``per_sample_normalized``) of `reduced_dtype`
        otherwise (float32 for 16-bit losses).
    """
    if reduction in NORMALIZED_REDUCTIONS:
        if positives is None:
            raise ValueError(f"positives: reduction {reduction!r} divides by the positives; pass "
                             "positives=focal_graph.positive_targets(targets, ignore_index)")
        return reductions(loss, mask, weights, positives=positives)[reduction]
    reduction = params.reduction(reduction)
    loss = tf.convert_to_tensor(loss)
    if reduction == "none":
        return loss
    return reductions(loss, mask, weights)[reduction]


def normalized_sample_terms(loss, positives, normalization: str) -> tf.Tensor:
    """(N,) per-sample terms whose mean over the batch is the ``normalization`` form of
    `reductions` (``"normalized"`` or ``"per_sample_normalized"``): what a Keras loss returns so
    that Keras's own mean over the batch (``sum_over_batch_size``) reports RetinaNet's figure.

    - ``per_sample_normalized``: ``per_sample_n / max(1, P_n)`` (their mean is torchvision's);
    - ``normalized``: ``per_sample_n * N / max(1, P)``, so that ``mean_n = sum / max(1, P)``.

    ``loss`` (N, ...) and ``positives`` (its shape, boolean) as `reductions` takes them; float32
    for 16-bit losses.
    """
    if normalization not in NORMALIZED_REDUCTIONS:
        raise ValueError(f"normalization: expected one of {', '.join(NORMALIZED_REDUCTIONS)}, got {params.shown(normalization)}")
    forms = reductions(loss, None, positives=positives)
    if normalization == "per_sample_normalized":
        return forms["per_sample_normalized"]
    per_sample = tf.cast(forms["per_sample"], tf.float64)
    samples = tf.cast(tf.shape(per_sample)[0], tf.float64)
    positives_total = tf.reduce_sum(tf.cast(positives, tf.float64))  # 0/1 values: exact in float64
    return tf.cast(per_sample * (samples / tf.maximum(positives_total, 1.0)), forms["per_sample"].dtype)


def per_sample_loss(loss) -> tf.Tensor:
    """Each sample's total loss: the sum over every axis but the first, shape (N,), of
    `reduced_dtype` (float32 for 16-bit losses), summed in stages as `reductions` does.

    Sums add up: ``per_sample_loss(loss).sum()`` is ``reduce_loss(loss, "sum")`` up to rounding.
    Ignored positions are 0 in the loss and add nothing.
    """
    loss = tf.convert_to_tensor(loss)
    if loss.shape.rank == 1:
        return tf.cast(loss, reduced_dtype(loss.dtype))
    return reductions(loss)["per_sample"]
