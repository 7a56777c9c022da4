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


class ExactSums:
    """``size`` exact sums of float64 values (``add(keys, values)`` adds ``values[i]`` to sum
    ``keys[i]``); ``merge`` adds another's. Integers underneath: no rounding, so the order of
    additions and merges never changes the result, which ``floats()`` rounds once, correctly."""

    def __init__(self, size: int):
        self.limbs = np.zeros((size, _LIMBS), np.int64)

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float64).ravel()
        keys = np.asarray(keys, dtype=np.int64).ravel()
        if not np.isfinite(values).all():
            raise ValueError("values: exact sums take finite numbers only")
        for start in range(0, len(values), _CHUNK):
            self._add(keys[start:start + _CHUNK], values[start:start + _CHUNK])

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
        bins = len(self.limbs) * span
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
        flat = self.limbs.reshape(-1)
        for shift, piece in ((0, low & mask), (1, low >> width), (1, high & mask), (2, high >> width)):
            np.add.at(flat, key * _LIMBS + limb + shift, piece.astype(np.int64) * sign)

    def _carry(self, first: int = 0, last: int = _LIMBS) -> None:
        """Keep every limb but the last in [0, 2**32): no int64 overflows however many adds.
        Only limbs ``first`` to ``last`` can have grown; a carry moves at most 2 limbs up."""
        last = min(last + 2, _LIMBS)
        for _ in range(2):  # a carry is < 2**32, so a second pass settles what the first moved
            carry = self.limbs[:, first:last - 1] >> _LIMB_BITS
            self.limbs[:, first:last - 1] &= _LIMB_MASK
            self.limbs[:, first + 1:last] += carry

    def merge(self, other: ExactSums) -> ExactSums:
        merged = ExactSums(0)
        merged.limbs = self.limbs.copy()
        return merged.absorb(other)

    def absorb(self, other: ExactSums) -> ExactSums:
        """Add ``other``'s sums into these (in place); returns self."""
        if other.limbs.shape != self.limbs.shape:
            raise ValueError(f"other: {len(other.limbs)} sums; these are {len(self.limbs)}")
        used = np.flatnonzero(other.limbs.any(axis=0))
        if len(used):
            first, last = int(used[0]), int(used[-1]) + 1
            self.limbs[:, first:last] += other.limbs[:, first:last]
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
    labels), per-class sums and counts (for (N, C) predictions: by label, by positive target for
    multi-label losses, by the largest target otherwise) and the ``top_k`` largest losses with
    their rows (and ids). Build one per batch with `add`, join with `merge`, and turn the result
    into the summary JSON with `as_dict`.
    """

    def __init__(self, spec: FocalSpec, row_shape, top_k: int):
        self.spec, self.row_shape, self.top_k = spec, tuple(row_shape), top_k
        class_axis = spec.class_axis - 1  # in a row, which has no N
        self.classes = self.row_shape[class_axis]
        self.per_class = len(self.row_shape) == 1  # (N, C): one class (or class set) per sample
        # positions of the unreduced loss per sample: (..., C) for per-class losses, (...) for the others
        without_classes = self.row_shape[:class_axis] + self.row_shape[class_axis + 1:]
        loss_shape = self.row_shape if spec.loss_shape == "classes" else without_classes
        self.positions_per_row = int(np.prod(loss_shape, dtype=np.int64))
        self.count, self.ignored = 0, 0
        self.total = ExactSums(1)
        self.class_sums = ExactSums(self.classes if self.per_class else 0)
        self.class_count = np.zeros(self.classes if self.per_class else 0, np.int64)
        self.hardest: list[tuple[float, int | None, object]] = []  # (loss, row, id)

    def add(self, losses: np.ndarray, labels: np.ndarray, *, first_row: int | None = 0, ids=None) -> None:
        """Count one batch: ``losses`` (n,), per sample; ``labels`` the batch's labels or targets
        as the loss takes them; ``first_row`` the batch's first row in the whole input (None
        where that is unknown: the ``ids`` then name the rows); ``ids`` (n,) or None."""
        losses = np.asarray(losses, dtype=np.float64)
        self.count += len(losses)
        self.total.add(np.zeros(len(losses), np.int64), losses)
        ignored = None
        if self.spec.sparse and self.spec.ignore_index is not None:
            ignored = labels == self.spec.ignore_index
            self.ignored += int(ignored.sum())
        if self.per_class:
            if self.spec.sparse:
                counted = ~ignored if ignored is not None else np.ones(len(labels), bool)
                self.class_sums.add(labels[counted], losses[counted])
                self.class_count += np.bincount(labels[counted], minlength=self.classes)
            elif self.spec.multi_label:  # every class the sample is positive for (target >= 0.5)
                rows, classes = np.nonzero(labels >= 0.5)
                self.class_sums.add(classes, losses[rows])
                self.class_count += np.bincount(classes, minlength=self.classes)
            else:  # soft or one-hot targets: the most likely class (rows of all-zero targets have none)
                has_class = labels.max(axis=1) > 0 if len(labels) else np.zeros(0, bool)
                label = np.argmax(labels, axis=1)[has_class] if len(labels) else np.zeros(0, np.int64)
                self.class_sums.add(label, losses[has_class])
                self.class_count += np.bincount(label, minlength=self.classes)
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
        self.total.absorb(other.total)
        self.class_sums.absorb(other.class_sums)
        self.class_count = self.class_count + other.class_count
        self.hardest = _top(self.hardest + other.hardest, self.top_k)
        return self

    def as_dict(self) -> dict:
        """The summary fields of `evaluate`'s result."""
        total = self.total.floats()[0]
        per_class = None
        if self.per_class:
            per_class = [
                {"class": c, "count": int(n), "mean_loss": float(s / n) if n else None}
                for c, (s, n) in enumerate(zip(self.class_sums.floats(), self.class_count))
            ]
        positions = self.count * self.positions_per_row - self.ignored
        result = {
            "count": self.count,
            "sum": total,
            "mean": total / self.count if self.count else None,
            # the artifact's own `mean`: over the loss's positions, ignore_index ones left out
            "mean_per_position": total / positions if positions else None,
            "per_class": per_class,
            "per_class_by": None if per_class is None else (
                "label" if self.spec.sparse else "positive targets" if self.spec.multi_label else "argmax of the targets"),
            "hardest": [_hard_row(loss, row, name) for loss, row, name in self.hardest],
        }
        if self.spec.sparse and self.spec.ignore_index is not None:
            result["ignored_positions"] = self.ignored
        return result

    def to_bytes(self) -> bytes:
        """For shipping a worker's partial result to the driver: an .npz, no pickles."""
        buffer = io.BytesIO()
        header = {"spec": self.spec.to_json(), "row_shape": list(self.row_shape), "top_k": self.top_k,
                  "count": self.count, "ignored": self.ignored, "hardest": self.hardest}
        # only the limbs in use (a few, for losses of similar size), not all 68 per class
        used = np.flatnonzero(self.total.limbs.any(axis=0) | self.class_sums.limbs.any(axis=0))
        first, last = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
        header["limbs"] = [first, last]
        np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                 total=self.total.limbs[:, first:last], class_limbs=self.class_sums.limbs[:, first:last],
                 class_count=self.class_count)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LossSummary:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            header = json.loads(arrays["header"].tobytes())
            summary = cls(FocalSpec.from_json(header["spec"]), header["row_shape"], header["top_k"])
            summary.count, summary.ignored = header["count"], header["ignored"]
            summary.hardest = [tuple(entry) for entry in header["hardest"]]
            first, last = header["limbs"]
            summary.total.limbs[:, first:last] = arrays["total"]
            summary.class_sums.limbs[:, first:last] = arrays["class_limbs"]
            summary.class_count = arrays["class_count"]
        return summary


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
        f"mean per position {_number(summary['mean_per_position'])}",
    ]
    if summary["per_class"]:
        shown = [c for c in summary["per_class"] if c["count"]][:20]
        lines.append("  per class (" + summary["per_class_by"] + "): " + ", ".join(
            f"{c['class']}: {c['mean_loss']:.4g} (n={c['count']})" for c in shown)
            + (" ..." if len([c for c in summary["per_class"] if c["count"]]) > 20 else ""))
    if summary["hardest"]:
        lines.append("  hardest rows: " + ", ".join(
            f"{h.get('id', h.get('row'))} ({h['loss']:.4g})" for h in summary["hardest"]))
    return "\n".join(lines)


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.6g}"
