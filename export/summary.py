"""The eval summary as a mergeable partial result: exact sums, so any split and any merge order
give the same numbers.

numpy only. A `LossSummary` holds the count, the sum of the per-sample losses, the ignored
positions, per-class sums and counts, and the k largest losses; ``merge`` joins two of them. The
sums are kept exactly (`ExactSums`), so merging partial results of batches, files or workers in
any grouping and order gives bit-identical figures: what lets a distributed engine reproduce the
single-process summary.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np

from export.errors import UsageError
from focal_graph.spec import FocalSpec

# A finite float64 is m * 2**(s - 1074) with m < 2**53 and 0 <= s <= 2045 (s = max(exponent, 1) - 1).
# Sums are kept as integers in units of 2**-1074, written in 32-bit limbs: 2045 + 53 bits fit in
# 67 limbs, one more takes the carries of up to 2**31 additions.
_LIMB_BITS = 32
_LIMBS = 68
_LIMB_MASK = (1 << _LIMB_BITS) - 1
# bincount adds float64s: exact while every bin's sum stays below 2**53. Mantissas are split in
# halves below 2**27, so 2**25 values per call keep every bin below 2**52.
_HALF = 27
_CHUNK = 1 << 25
_PENDING_LIMIT = 1 << 28  # float32 values whose (key, exponent) sums wait in float64 (exact below 2**29)


class ExactSums:
    """``size`` exact sums of float64 values (``add(keys, values)`` adds ``values[i]`` to sum
    ``keys[i]``); ``merge`` adds another's. Integers underneath: no rounding, so the order of
    additions and merges never changes the result, which ``floats()`` rounds once, correctly."""

    def __init__(self, size: int):
        self.size = size
        self._limbs = None  # (size, _LIMBS) int64, allocated when first needed
        # float32 values not yet in the limbs: (lowest exponent, their float64 sums per key and
        # exponent from it), exact while fewer than 2**29 values are pending (`_add_single`);
        # None when there are none
        self._pending, self._pending_values = None, 0

    @property
    def limbs(self) -> np.ndarray:
        """The sums as integers in units of 2**-1074, in 32-bit limbs (the pending float32
        sums added in first)."""
        if self._pending is not None:
            (lowest, pending), self._pending, self._pending_values = self._pending, None, 0
            used = np.flatnonzero(pending)
            # each bin's sum is a multiple of its exponent's ulp: `_add` takes it exactly
            self._add(used // pending.shape[1], pending.ravel()[used])
        return self._limb_array()

    def _limb_array(self) -> np.ndarray:
        """The limbs without the pending sums (allocated on first use)."""
        if self._limbs is None:
            self._limbs = np.zeros((self.size, _LIMBS), np.int64)
        return self._limbs

    @limbs.setter
    def limbs(self, value: np.ndarray) -> None:
        self._limbs, self._pending, self._pending_values = value, None, 0
        self.size = len(value)

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        single = np.asarray(values).dtype == np.float32
        values = np.ascontiguousarray(values, dtype=np.float32 if single else np.float64).ravel()
        keys = np.asarray(keys, dtype=np.int64).ravel()
        if not np.isfinite(values).all():
            raise ValueError("values: exact sums take finite numbers only")
        for start in range(0, len(values), _CHUNK):
            add = self._add_single if single else self._add
            add(keys[start:start + _CHUNK], values[start:start + _CHUNK])

    def _add_single(self, keys: np.ndarray, values: np.ndarray) -> None:
        """float32 ``values`` (a loss's elements, as ONNX Runtime returns them), in fewer passes:
        those of one exponent are multiples of one ulp below 2**24 ulps, so float64 sums of up
        to 2**29 of them per (key, exponent) are exact. Those sums are kept pending, across
        calls and merges, and go through `_add` into the limbs only when ``limbs`` is read or
        2**28 values are pending: one bincount per batch instead of a pass over the limbs."""
        if self._pending_values + len(values) > _PENDING_LIMIT:
            self.limbs  # noqa: B018  (flushes the pending sums)
        exponent = ((values.view(np.uint32) >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64)
        exponent = np.maximum(exponent, 1)  # subnormals share the ulp of exponent 1
        if not len(exponent):
            return
        lowest, span = int(exponent.min()), int(exponent.max()) - int(exponent.min()) + 1
        sums = np.bincount(keys * span + (exponent - lowest), values.astype(np.float64), self.size * span)
        self._add_pending(lowest, sums.reshape(self.size, span), len(values))

    def _add_pending(self, lowest: int, sums: np.ndarray, values: int) -> None:
        """Add (size, span) float64 sums of float32 values of exponents ``lowest`` on to the
        pending ones (exact: see `_add_single`), widening their exponent range as needed."""
        if self._pending is None:
            self._pending = (lowest, sums.copy())
        else:
            start, pending = self._pending
            low, high = min(start, lowest), max(start + pending.shape[1], lowest + sums.shape[1])
            if (low, high) != (start, start + pending.shape[1]):
                wider = np.zeros((self.size, high - low))
                wider[:, start - low:start - low + pending.shape[1]] = pending
                start, pending = low, wider
            pending[:, lowest - start:lowest - start + sums.shape[1]] += sums
            self._pending = (start, pending)
        self._pending_values += values

    def _add(self, keys: np.ndarray, values: np.ndarray) -> None:
        nonzero = values != 0
        keys, values = keys[nonzero], values[nonzero]
        if not len(values):
            return
        # Per (key, exponent), the mantissas' high and low halves summed by bincount: integers
        # below 2**27 each, so the float64 sums are exact. Only the few non-empty bins are then
        # shifted into place, not every value.
        bits = values.view(np.uint64)
        exponent = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64)
        mantissa = (bits & np.uint64((1 << 52) - 1)) | (np.uint64(1 << 52) * (exponent > 0).astype(np.uint64))
        sign = np.where(values < 0, -1.0, 1.0)
        lowest, span = int(exponent.min()), int(exponent.max()) - int(exponent.min()) + 1
        index = keys * span + (exponent - lowest)
        bins = self.size * span
        high = np.bincount(index, (mantissa >> np.uint64(_HALF)).astype(np.float64) * sign, bins)
        low = np.bincount(index, (mantissa & np.uint64((1 << _HALF) - 1)).astype(np.float64) * sign, bins)
        used = np.flatnonzero((high != 0) | (low != 0))
        key, position = used // span, np.maximum(used % span + lowest, 1) - 1
        for part, shift in ((low[used], 0), (high[used], _HALF)):
            self._place(key, position + shift, part)
        touched = position // _LIMB_BITS
        self._carry(int(touched.min()), int(touched.max()) + 4)

    def _place(self, key: np.ndarray, position: np.ndarray, part: np.ndarray) -> None:
        """Add ``part * 2**position`` (integers below 2**53 in magnitude) to the sums ``key``."""
        magnitude = np.abs(part).astype(np.uint64)
        sign = np.where(part < 0, -1, 1).astype(np.int64)
        limb, offset = position // _LIMB_BITS, (position % _LIMB_BITS).astype(np.uint64)
        mask, width = np.uint64(_LIMB_MASK), np.uint64(_LIMB_BITS)
        low = (magnitude & mask) << offset  # < 2**63
        high = (magnitude >> width) << offset  # < 2**52
        flat = self._limb_array().reshape(-1)
        for shift, piece in ((0, low & mask), (1, low >> width), (1, high & mask), (2, high >> width)):
            np.add.at(flat, key * _LIMBS + limb + shift, piece.astype(np.int64) * sign)

    def _carry(self, first: int = 0, last: int = _LIMBS) -> None:
        """Keep every limb but the last in [0, 2**32): no int64 overflows however many adds.
        Only limbs ``first`` to ``last`` can have grown; a carry moves at most 2 limbs up."""
        last = min(last + 2, _LIMBS)
        for _ in range(2):  # a carry is < 2**32, so a second pass settles what the first moved
            limbs = self._limb_array()
            carry = limbs[:, first:last - 1] >> _LIMB_BITS
            limbs[:, first:last - 1] &= _LIMB_MASK
            limbs[:, first + 1:last] += carry

    def merge(self, other: ExactSums) -> ExactSums:
        merged = ExactSums(0)
        merged.limbs = self.limbs.copy()
        return merged.absorb(other)

    def absorb(self, other: ExactSums) -> ExactSums:
        """Add ``other``'s sums into these (in place); returns self."""
        if other.size != self.size:
            raise ValueError(f"other: {other.size} sums; these are {self.size}")
        if other._pending is not None and self._pending_values + other._pending_values <= _PENDING_LIMIT:
            # pending float32 sums add exactly while fewer than 2**29 values are behind them
            self._add_pending(*other._pending, other._pending_values)
            if other._limbs is None:
                return self
            other_limbs = other._limbs
        else:
            other_limbs = other.limbs
        used = np.flatnonzero(other_limbs.any(axis=0))
        if len(used):
            first, last = int(used[0]), int(used[-1]) + 1
            self._limb_array()[:, first:last] += other_limbs[:, first:last]
            self._carry(first, last)
        return self

    def integers(self) -> list[int]:
        """Each sum exactly, in units of 2**-1074."""
        weights = [1 << (_LIMB_BITS * i) for i in range(_LIMBS)]
        used = np.flatnonzero(self.limbs.any(axis=0))
        return [sum(int(row[i]) * weights[i] for i in used) for row in self.limbs]

    def floats(self) -> list[float]:
        """Each sum rounded once to the nearest float64 (Python's int division rounds correctly);
        a sum beyond float64's range is inf."""
        scale = 1 << 1074
        result = []
        for total in self.integers():
            try:
                result.append(total / scale)
            except OverflowError:
                result.append(float("inf") if total > 0 else float("-inf"))
        return result


class LossSummary:
    """Partial results of an eval: merge those of any split of the rows to get the whole's.

    ``count`` samples, the exact ``sum`` of their losses, ``ignored`` positions (``ignore_index``
    labels or sigmoid targets), for the sigmoid variant the ``positives`` (targets > 0.5 not
    ignored) and the exact sum of each sample's loss over ``max(1, its positives)``, per-class
    exact sums and counts over the loss's positions (pixels, anchors; the rows for (N, C)), and
    the ``top_k`` largest per-sample losses with their rows (and ids). Build one per batch with
    `add`, join with `merge`, and turn the result into the summary JSON with `as_dict`.

    Per class c, from the element losses ``elements`` (the artifact's ``loss`` output):

    - sparse: mean over the positions labelled c, ``sum(loss[label == c]) / #(label == c)``
      (ignored positions are in no class);
    - sigmoid (the loss has a class axis): each class's own loss ``loss[..., c]``, over every
      position, and split into positives (``target[..., c] > 0.5``, as `normalized` counts them) and negatives
      (``ignore_index`` elements are in neither);
    - soft or one-hot targets: by the position's largest target (all-zero targets: no class);
    - the multi-label presets (their loss sums the classes): the position's loss over the
      positions with a positive target for c.

    A weighted artifact (``spec.weighted``) multiplies each element by its weight ``w`` (its
    ``weights`` input, the element's shape) and its ``mean`` is ``sum(w loss) / sum(w)`` over the
    counted positions (0 where ``sum(w)`` is 0). Every mean over positions here is that mean on
    the positions it covers: ``mean_per_position`` is the artifact's ``mean`` of all the rows, a
    class's ``mean_loss`` the artifact's ``mean`` with the weights of every other position set
    to 0. Sums, ``hardest`` and the per-sample ``mean`` take the weighted losses as the artifact
    returns them; counts stay counts of positions. ``--weight-column``'s row weights multiply
    the losses only (they are not the artifact's).

    Memory is O(C) (exact sums of 68 int64 limbs per class and counter), whatever the input's
    size. Per-sample figures (per-image totals for (N, H, W, C)) are not kept here: they are
    eval's per-sample output (``--out``), and the ``top_k`` largest are in ``hardest``.
    """

    def __init__(self, spec: FocalSpec, row_shape, top_k: int):
        self.spec, self.row_shape, self.top_k = spec, tuple(row_shape), top_k
        class_axis = spec.class_axis - 1  # in a row, which has no N
        self.classes = self.row_shape[class_axis]
        # a per-class loss (sigmoid) keeps its class axis: (..., C) per sample; the others sum it: (...)
        self.own_class_loss = spec.loss_shape == "classes"
        without_classes = self.row_shape[:class_axis] + self.row_shape[class_axis + 1:]
        loss_shape = self.row_shape if self.own_class_loss else without_classes
        self.positions_per_row = int(np.prod(loss_shape, dtype=np.int64))
        self.count, self.ignored, self.positives = 0, 0, 0
        self.total = ExactSums(1)
        # sum over samples of loss_n / max(1, positives_n): torchvision's per-image normalisation
        self.normalized_total = ExactSums(1)
        # keys [0, C): class c's positions; with own_class_loss, [C, 2C): class c's negatives
        slots = 2 * self.classes if self.own_class_loss else self.classes
        self.class_sums = ExactSums(slots)
        self.class_count = np.zeros(slots, np.int64)
        # a weighted loss's weights, summed where the loss is: the denominators of its means
        self.weighted = bool(spec.weighted)
        self.weight_total = ExactSums(1)
        self.class_weights = ExactSums(slots)
        self.hardest: list[tuple[float, int | None, object]] = []  # (loss, row, id)

    def add(self, losses: np.ndarray, labels: np.ndarray, *, elements: np.ndarray | None = None,
            first_row: int | None = 0, ids=None, weights: np.ndarray | None = None) -> None:
        """Count one batch: ``losses`` (n,), per sample; ``labels`` the batch's labels (n, ...) or
        targets (n, ..., C) as the loss takes them; ``elements`` the unreduced loss, (n, ...), or
        (n, ..., C) for sigmoid (any row weights applied), not needed (and not read) for (n, C)
        losses without a class axis, whose element is ``losses``; ``first_row`` the batch's first row
        in the whole input (None where that is unknown: the ``ids`` then name the rows); ``ids``
        (n,) or None; ``weights`` a weighted loss's weights, the shape of ``elements`` (of
        ``losses`` for (n, C) losses without a class axis), required by a weighted spec."""
        losses = np.asarray(losses)
        # float32 losses (as ONNX Runtime returns them) are summed as float32: the same exact
        # sums (`ExactSums`), faster; the other figures take them as float64
        summed = losses if losses.dtype == np.float32 else losses.astype(np.float64)
        losses = losses.astype(np.float64)
        labels = np.asarray(labels)
        if len(self.row_shape) == 1 and not self.own_class_loss:
            # one position per row: its loss is the per-sample loss, which 16-bit losses give
            # in float32 where their elements are 16-bit
            elements = summed
        elif elements is None:
            raise ValueError(f"elements: the unreduced loss is needed for rows of shape {self.row_shape} "
                             f"({self.spec.name})")
        elements = np.asarray(elements)
        if elements.dtype != np.float32:  # float32 elements keep their type: `ExactSums` sums them faster
            elements = elements.astype(np.float64)
        if self.weighted:
            if weights is None:
                raise ValueError(f"weights: a weighted loss ({self.spec.name}) is summarised with its weights")
            weights = np.asarray(weights)
            if weights.dtype != np.float32:
                weights = weights.astype(np.float64)
            if weights.shape != elements.shape:
                raise ValueError(f"weights: shape {weights.shape}; the loss's elements have {elements.shape}")
        if self.spec.class_axis != self.spec.rank - 1:  # channels-first: classes last, as the loss computes
            if not self.spec.sparse:
                labels = np.moveaxis(labels, self.spec.class_axis, -1)
            if self.own_class_loss:
                elements = np.moveaxis(elements, self.spec.class_axis, -1)
                if self.weighted:
                    weights = np.moveaxis(weights, self.spec.class_axis, -1)
        self.count += len(losses)
        self.total.add(np.zeros(len(losses), np.int64), summed)
        ignored = None
        if self.spec.ignore_index is not None:  # sparse labels or sigmoid targets
            ignored = labels == self.spec.ignore_index
            self.ignored += int(np.count_nonzero(ignored))
        if self.spec.normalized_by_positives:
            positive = labels > 0.5
            if ignored is not None:
                positive &= ~ignored
            per_row = positive.reshape(len(losses), -1).sum(axis=1)
            self.positives += int(per_row.sum())
            self.normalized_total.add(np.zeros(len(losses), np.int64), losses / np.maximum(per_row, 1))
        # the weights where the loss is, as the artifact's mean takes them (ignored positions: none)
        class_weights = None
        if self.weighted:
            counted_weights = weights if ignored is None else weights[~ignored]
            self.weight_total.add(np.zeros(counted_weights.size, np.int64), counted_weights)
        if self.spec.sparse:
            counted = ~ignored if ignored is not None else np.ones(labels.shape, bool)
            keys, values = labels[counted], elements[counted]
            if self.weighted:
                class_weights = weights[counted]
        elif self.own_class_loss:  # every class's own loss; negatives are counted apart, ignored in neither
            negative = labels <= 0.5
            keys = np.broadcast_to(np.arange(self.classes), labels.shape) + self.classes * negative
            values, class_weights = elements, weights
            if ignored is not None:
                keys, values = keys[~ignored], values[~ignored]
                if self.weighted:
                    class_weights = class_weights[~ignored]
        elif self.spec.multi_label:  # the position's loss, once per class it is positive for
            where = np.nonzero(labels >= 0.5)
            keys, values = where[-1], elements[where[:-1]]
            if self.weighted:
                class_weights = weights[where[:-1]]
        else:  # soft or one-hot targets: the most likely class (positions of all-zero targets have none)
            has_class = labels.max(axis=-1) > 0 if labels.size else np.zeros(labels.shape[:-1], bool)
            keys, values = np.argmax(labels, axis=-1)[has_class] if labels.size else np.zeros(0, np.int64), elements[has_class]
            if self.weighted:
                class_weights = weights[has_class]
        keys = np.asarray(keys, np.int64).ravel()
        self.class_sums.add(keys, np.asarray(values).ravel())
        if self.weighted:
            self.class_weights.add(keys, np.asarray(class_weights).ravel())
        self.class_count += np.bincount(keys, minlength=len(self.class_count))
        if self.top_k and len(losses):
            keep = _largest(losses, self.top_k)
            rows = [None] * len(keep) if first_row is None else [first_row + int(i) for i in keep]
            names = [None] * len(keep) if ids is None else [_plain(ids[int(i)]) for i in keep]
            self.hardest = _top(self.hardest + list(zip(losses[keep].tolist(), rows, names)), self.top_k)

    def merge(self, other: LossSummary) -> LossSummary:
        """The summary of both inputs' rows together; exact, so associative and commutative."""
        merged = LossSummary(self.spec, self.row_shape, self.top_k)
        return merged.absorb(self).absorb(other)

    def absorb(self, other: LossSummary) -> LossSummary:
        """`merge` in place: add ``other``'s rows to this summary; returns self."""
        if other.row_shape != self.row_shape and (other.spec, other.top_k) == (self.spec, self.top_k):
            raise UsageError(f"rows of shape {self.row_shape} and {other.row_shape} in one input (ragged rows across batches)")
        if (other.spec, other.row_shape, other.top_k) != (self.spec, self.row_shape, self.top_k):
            raise ValueError("other: a summary of another loss, row shape or top_k")
        self.count, self.ignored = self.count + other.count, self.ignored + other.ignored
        self.positives += other.positives
        self.total.absorb(other.total)
        self.normalized_total.absorb(other.normalized_total)
        self.class_sums.absorb(other.class_sums)
        self.class_count = self.class_count + other.class_count
        self.weight_total.absorb(other.weight_total)
        self.class_weights.absorb(other.class_weights)
        self.hardest = _top(self.hardest + other.hardest, self.top_k)
        return self

    def as_dict(self) -> dict:
        """The summary fields of `evaluate`'s result."""
        total = self.total.floats()[0]
        if self.weighted:  # the artifact's own `mean`: sum(w loss) / sum(w), 0 where sum(w) is 0
            weight = self.weight_total.integers()[0]
            mean_per_position = (self.total.integers()[0] / weight if weight else 0.0) if self.positions else None
        else:  # the artifact's own `mean`: over the loss's positions, ignore_index ones left out
            mean_per_position = total / self.positions if self.positions else None
        result = {
            "count": self.count,
            "sum": total,
            "mean": total / self.count if self.count else None,
            "mean_per_position": mean_per_position,
            "per_class": self.per_class(),
            "per_class_by": _PER_CLASS_BY[self._grouping()],
            "hardest": [_hard_row(loss, row, name) for loss, row, name in self.hardest],
        }
        if self.weighted:
            result["weight_sum"] = self.weight_total.floats()[0]
            result["weights_enter"] = WEIGHTS_ENTER
        if self.spec.ignore_index is not None:
            result["ignored_positions"] = self.ignored
        if self.spec.normalized_by_positives:
            # the artifact's `normalized` over the whole input, and the mean of its
            # `per_sample_normalized`: RetinaNet's and torchvision's normalisations
            result["positives"] = self.positives
            result["normalized"] = total / max(self.positives, 1)
            result["mean_per_sample_normalized"] = self.normalized_total.floats()[0] / self.count if self.count else None
        return result

    @property
    def positions(self) -> int:
        return self.count * self.positions_per_row - self.ignored

    def _grouping(self) -> str:
        if self.spec.sparse:
            return "label"
        if self.own_class_loss:
            return "own"
        return "positive" if self.spec.multi_label else "argmax"

    def per_class(self) -> list[dict]:
        """One entry per class: ``count`` positions and their ``mean_loss`` (None for none);
        for sigmoid losses also ``positives`` and ``negatives``, each a count and mean."""
        sums, counts = self.class_sums.integers(), self.class_count
        # a weighted loss's means divide by the weights' sums (`_mean_entry`), the others by counts
        weights = self.class_weights.integers() if self.weighted else [None] * len(sums)
        classes = self.classes
        entries = []
        for c in range(classes):
            if self.own_class_loss:
                both = sums[c] + sums[classes + c]  # exact: one rounding for the class's whole sum
                both_weights = None if weights[c] is None else weights[c] + weights[classes + c]
                entry = _mean_entry(c, both, int(counts[c] + counts[classes + c]), both_weights)
                entry["positives"] = _mean_entry(None, sums[c], int(counts[c]), weights[c])
                entry["negatives"] = _mean_entry(None, sums[classes + c], int(counts[classes + c]), weights[classes + c])
            else:
                entry = _mean_entry(c, sums[c], int(counts[c]), weights[c])
            entries.append(entry)
        return entries

    def to_bytes(self) -> bytes:
        """For shipping a worker's partial result to the driver: an .npz, no pickles."""
        buffer = io.BytesIO()
        header = {"spec": self.spec.to_json(), "row_shape": list(self.row_shape), "top_k": self.top_k,
                  "count": self.count, "ignored": self.ignored, "positives": self.positives, "hardest": self.hardest}
        # only the limbs in use (a few, for losses of similar size), not all 68 per class
        used = np.flatnonzero(self.total.limbs.any(axis=0) | self.class_sums.limbs.any(axis=0)
                              | self.normalized_total.limbs.any(axis=0) | self.weight_total.limbs.any(axis=0)
                              | self.class_weights.limbs.any(axis=0))
        first, last = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
        header["limbs"] = [first, last]
        np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                 total=self.total.limbs[:, first:last], class_limbs=self.class_sums.limbs[:, first:last],
                 normalized_total=self.normalized_total.limbs[:, first:last],
                 weight_total=self.weight_total.limbs[:, first:last],
                 class_weights=self.class_weights.limbs[:, first:last], class_count=self.class_count)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LossSummary:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            header = json.loads(arrays["header"].tobytes())
            summary = cls(FocalSpec.from_json(header["spec"]), header["row_shape"], header["top_k"])
            summary.count, summary.ignored, summary.positives = header["count"], header["ignored"], header["positives"]
            summary.hardest = [tuple(entry) for entry in header["hardest"]]
            first, last = header["limbs"]
            summary.total.limbs[:, first:last] = arrays["total"]
            summary.class_sums.limbs[:, first:last] = arrays["class_limbs"]
            summary.normalized_total.limbs[:, first:last] = arrays["normalized_total"]
            summary.weight_total.limbs[:, first:last] = arrays["weight_total"]
            summary.class_weights.limbs[:, first:last] = arrays["class_weights"]
            summary.class_count = arrays["class_count"]
        return summary


WEIGHTS_ENTER = ("the weights multiply every loss: sum, mean (per sample), hardest and each class's sum are of "
                 "w * loss; mean_per_position and each class's mean_loss are sum(w * loss) / sum(w) over their "
                 "positions (the artifact's own mean); counts are positions")

_PER_CLASS_BY = {
    "label": "label",
    "own": "each class's own loss; positives are target > 0.5",
    "positive": "positive targets (the position's loss over all classes)",
    "argmax": "argmax of the targets",
}
_UNIT = 1 << 1074  # ExactSums' integers are in units of 2**-1074


def _mean_entry(c, total: int, count: int, weight: int | None = None) -> dict:
    """``class`` (unless None), ``count``, ``sum`` and ``mean_loss`` of an exact integer sum:
    each rounded once, the mean straight from the integers (no double rounding). With
    ``weight`` (a weighted loss's exact sum of weights over the same positions), the mean is
    ``sum / weight`` (0 where the weights sum to 0, as the artifact's ``mean``) and ``weight`` is
    in the entry."""
    entry = {} if c is None else {"class": c}
    entry["count"] = count
    entry["sum"] = _rounded(total, 1)
    if weight is None:
        entry["mean_loss"] = _rounded(total, count) if count else None
    else:
        entry["weight"] = _rounded(weight, 1)
        entry["mean_loss"] = (total / weight if weight else 0.0) if count else None
    return entry


def _rounded(total: int, count: int) -> float:
    try:
        return total / (_UNIT * count)  # Python's int division rounds correctly
    except OverflowError:
        return float("inf") if total > 0 else float("-inf")


def merge_all(summaries) -> LossSummary | None:
    """Every summary merged into one (None for none); the inputs are left as they were."""
    merged = None
    for summary in summaries:
        if merged is None:
            merged = LossSummary(summary.spec, summary.row_shape, summary.top_k)
        merged.absorb(summary)
    return merged


def _largest(losses: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest ``losses``, ties to the lower index (a stable argsort's answer,
    without sorting the whole batch)."""
    if len(losses) > k:
        kth = np.partition(losses, len(losses) - k)[len(losses) - k]
        candidates = np.flatnonzero(losses >= kth)
    else:
        candidates = np.arange(len(losses))
    return candidates[np.lexsort((candidates, -losses[candidates]))][:k]


def _top(entries, k: int) -> list:
    """The k largest losses; ties go to the lower row, then the lower id, so that the result does
    not depend on the order partial results arrive in."""
    def key(entry):
        loss, row, name = entry
        return (-loss, row is None, row if row is not None else 0, name is None, _sortable(name))

    return sorted(entries, key=key)[:k]


def _sortable(name):
    return (0, name, "") if isinstance(name, (int, float)) else (1, 0, str(name))


def _plain(value):
    """An id as a JSON value: numpy scalars and Arrow scalars become Python's."""
    if hasattr(value, "as_py"):
        value = value.as_py()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    return value


def _hard_row(loss: float, row, name) -> dict:
    entry = {}
    if row is not None:
        entry["row"] = int(row)
    if name is not None:
        entry["id"] = name
    entry["loss"] = float(loss)
    return entry


def format_summary(summary: dict) -> str:
    lines = [
        f"{summary['artifact']}  {summary['spec']}  ({summary['onnxruntime']['provider']})",
        f"  samples {summary['count']}, sum {summary['sum']:.6g}, mean per sample {_number(summary['mean'])}, "
        + ("weighted mean per position, sum(w loss) / sum(w)," if "weight_sum" in summary else "mean per position")
        + f" {_number(summary['mean_per_position'])}",
    ]
    if "normalized" in summary:
        lines.append(f"  positives {summary['positives']}, normalized (sum / positives) {summary['normalized']:.6g}, "
                     f"mean per-sample normalized {_number(summary['mean_per_sample_normalized'])}")
    if summary["per_class"]:
        shown = [c for c in summary["per_class"] if c["count"]][:20]
        lines.append("  per class (" + summary["per_class_by"] + "): " + ", ".join(
            f"{c['class']}: {c['mean_loss']:.4g} ({_class_counts(c)})" for c in shown)
            + (" ..." if len([c for c in summary["per_class"] if c["count"]]) > 20 else ""))
    if summary["hardest"]:
        lines.append("  hardest rows: " + ", ".join(
            f"{h.get('id', h.get('row'))} ({h['loss']:.4g})" for h in summary["hardest"]))
    return "\n".join(lines)


def _class_counts(entry: dict) -> str:
    if "positives" not in entry:
        return f"n={entry['count']}"
    return ", ".join(f"{sign} {part['mean_loss']:.4g} n={part['count']}" if part["count"] else f"{sign} n=0"
                     for sign, part in (("+", entry["positives"]), ("-", entry["negatives"])))


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.6g}"


# ---------------------------------------------------------------------------------------------
# The per-class plot (eval --plot)

PLOT_SOFTWARE = "focalgraph eval --plot"  # in the PNG's metadata: how eval knows a plot is its own
PLOT_PURPOSE = "eval --plot"
MAX_BARS = 40


def require_matplotlib():
    """matplotlib (Agg), or `MissingExtra` naming the extra that installs it."""
    from export.extras import require

    matplotlib = require("matplotlib", PLOT_PURPOSE)
    matplotlib.use("Agg")
    return matplotlib


def plot_per_class(summary: dict) -> bytes:
    """A PNG: mean loss per class (``summary["per_class"]``) as horizontal bars, highest first,
    each with its count (of positions; of positives for sigmoid losses); at most `MAX_BARS`
    classes, the ones with the highest mean loss. Classes with no position are left out."""
    require_matplotlib()
    import matplotlib.pyplot as plt

    shown, entries = plotted_classes(summary), [e for e in summary.get("per_class") or [] if e["count"]]
    height = 1.2 + 0.28 * max(len(shown), 1)
    figure, axis = plt.subplots(figsize=(7.5, height))
    names = [str(e["class"]) for e in shown]
    means = [e["mean_loss"] for e in shown]
    axis.barh(range(len(shown)), means, color="tab:blue")
    axis.set_yticks(range(len(shown)), names, fontsize=8)
    axis.invert_yaxis()  # highest first
    for row, entry in enumerate(shown):
        count = entry["positives"]["count"] if "positives" in entry else entry["count"]
        label = "positives" if "positives" in entry else "n"
        axis.annotate(f" {label}={count}", (entry["mean_loss"], row), va="center", fontsize=7)
    axis.set_xlabel("mean loss")
    axis.set_ylabel("class")
    more = f"; the {len(shown)} highest of {len(entries)} classes" if len(entries) > len(shown) else ""
    axis.set_title(f"{summary.get('spec', '')}: mean loss per class (by {summary.get('per_class_by')}){more}",
                   fontsize=9)
    axis.margins(x=0.15)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=100, format="png", metadata={"Software": PLOT_SOFTWARE})
    plt.close(figure)
    return buffer.getvalue()


def plotted_classes(summary: dict) -> list[dict]:
    """The per-class entries `plot_per_class` draws: those with a position, highest mean loss
    first (ties by class), at most `MAX_BARS`."""
    entries = [e for e in summary.get("per_class") or [] if e["count"] and e["mean_loss"] is not None]
    return sorted(entries, key=lambda e: (-e["mean_loss"], e["class"]))[:MAX_BARS]


def is_own_plot(path) -> bool:
    """Whether the file at ``path`` is a PNG whose metadata says `plot_per_class` wrote it."""
    try:
        with open(path, "rb") as file:
            if file.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            while True:
                header = file.read(8)
                if len(header) < 8:
                    return False
                length, kind = struct.unpack(">I4s", header)
                if kind == b"IDAT" or kind == b"IEND":  # matplotlib writes its text before the image
                    return False
                data = file.read(length)
                file.read(4)  # CRC
                if kind == b"tEXt" and data == b"Software\0" + PLOT_SOFTWARE.encode("latin-1"):
                    return True
    except OSError:
        return False


def check_plot_path(plot) -> None:
    """``--plot``: a ``.png`` name (`UsageError`). An existing file is replaced only with
    ``--force``, as every output is (`export.writing.check_outputs`): the PNG's metadata
    (`is_own_plot`) is a mark anyone can copy, not proof that eval wrote the file."""
    if Path(str(plot)).suffix.lower() != ".png":
        raise UsageError(f"--plot: {plot}: expected a .png file name")
