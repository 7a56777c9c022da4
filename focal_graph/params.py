"""Validation of loss parameters, shared by the loss functions and `FocalSpec`.

numpy only, so a host without TensorFlow can validate a spec. Every check returns the value in
canonical form (a float, or a tuple of floats for per-class values) or raises a ValueError that
names the argument, the value and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np

PerClass = Union[float, tuple[float, ...]]

REDUCTIONS = ("none", "sum", "mean")
# RetinaNet's normalisation by positive targets: the sigmoid variant's reductions besides REDUCTIONS
NORMALIZED_REDUCTIONS = ("normalized", "per_sample_normalized")
KERAS_EPSILON = 1e-7  # Keras's backend epsilon: the default probability clip, the seeds' too
DTYPES = ("float16", "bfloat16", "float32", "float64")
# Per-class values become constants of the loss's compute type, float32 for float16, bfloat16 and
# float32 losses: a larger one would be inf there (and none is useful in float64 either).
FLOAT32_MAX = float(np.finfo(np.float32).max)


def numbers(name: str, value, *, expected: str = "a number or a list of numbers") -> np.ndarray:
    """``value`` (a number, a list of them, or a numeric array) as a float64 array, or a ValueError
    naming ``name``. A bool, a string or bytes is not a number here, though numpy would read
    True as 1 and "2" as 2."""
    if _all_numbers(value):
        try:
            return np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            pass
    raise ValueError(f"{name}: expected {expected}, got {shown(value)}")


def _all_numbers(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_all_numbers(item) for item in value)
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    if hasattr(value, "__array__"):  # numpy arrays, tensors: by their dtype
        try:
            return np.asarray(value).dtype.kind in "iuf"
        except (TypeError, ValueError):
            return False
    return False


def shown(value) -> str:
    """``value`` as an error message shows it: ``-1.0``, not ``np.float64(-1.0)``."""
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, (list, tuple)) and any(isinstance(item, np.generic) for item in value):
        value = type(value)(item.item() if isinstance(item, np.generic) else item for item in value)
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def per_class(
    name: str,
    value,
    *,
    num_classes: int | None = None,
    low: float = 0.0,
    high: float = math.inf,
    allow_scalar: bool = True,
) -> PerClass:
    """A scalar or one value per class, every value finite, in [low, high] and within float32's
    range."""
    array = numbers(name, value)
    # No annotation on `canonical`: AutoGraph turns this if/elif into functions sharing it as a
    # nonlocal, which an annotated name cannot be, and warned on every trace under tf.function.
    if array.ndim == 0 and allow_scalar:
        canonical = float(array)
    elif array.ndim == 1 and array.size > 0:
        canonical = tuple(float(v) for v in array)
        if num_classes is not None and len(canonical) != num_classes:
            raise ValueError(f"{name}: expected {num_classes} values (one per class), got {len(canonical)}")
    else:
        expected = "a number or a non-empty 1-D list" if allow_scalar else "a non-empty 1-D list (one value per class)"
        raise ValueError(f"{name}: expected {expected}, got shape {array.shape}")
    flat = np.atleast_1d(array)
    bad = np.flatnonzero(~np.isfinite(flat) | (flat < low) | (flat > high) | (np.abs(flat) > FLOAT32_MAX))
    if bad.size:
        i = int(bad[0])
        where = "" if array.ndim == 0 else f" for class {i}"
        if np.isfinite(flat[i]) and low <= flat[i] <= high:
            raise ValueError(f"{name}: {float(flat[i])!r}{where} is beyond float32's range (at most {FLOAT32_MAX:g})")
        raise ValueError(f"{name}: expected values in {_interval(low, high)}, got {float(flat[i])!r}{where}")
    return canonical


def unit_float(name: str, value, *, low: float = 0.0, high: float = 1.0, open_low: bool = False, open_high: bool = False) -> float:
    """A single finite float inside an interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    number = float(value)
    if (
        not math.isfinite(number)
        or number < low
        or number > high
        or (open_low and number == low)
        or (open_high and number == high)
    ):
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        raise ValueError(f"{name}: expected a number in {lo}{low:g}, {high:g}{hi}, got {shown(value)}")
    return number


def epsilon(value) -> float:
    """Probability clip: predictions are clipped to [epsilon, 1 - epsilon]."""
    return unit_float("epsilon", value, low=0.0, high=0.5, open_low=True, open_high=True)


def label_smoothing(value) -> float:
    return unit_float("label_smoothing", value)


def reduction(value, *, normalized: bool = False) -> str:
    """One of `REDUCTIONS`, or of `NORMALIZED_REDUCTIONS` too where ``normalized`` (sigmoid)."""
    allowed = REDUCTIONS + (NORMALIZED_REDUCTIONS if normalized else ())
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"reduction: expected one of {', '.join(allowed)}, got {shown(value)}")
    return value


def integer(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {shown(value)}")
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"{name}: expected an integer from {minimum} to {maximum}, got {shown(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {shown(value)}")
    if not -(2**63) <= value < 2**63:  # every integer ends up in an int64 tensor
        raise ValueError(f"{name}: expected a 64-bit integer, got {shown(value)}")
    return int(value)


def sigmoid_ignore_index(value) -> int | None:
    """A sigmoid loss's ``ignore_index``: an integer that is not a valid target (0 or 1), or None.
    Ignoring every target 0 would silently drop every negative, so 0 and 1 are refused."""
    if value is None:
        return None
    value = integer("ignore_index", value)
    if value in (0, 1):
        raise ValueError(
            f"ignore_index: {value} is a valid sigmoid target (targets are in [0, 1]); "
            "expected an integer outside [0, 1], such as -1"
        )
    if abs(value) > 2**24:  # targets are floats: beyond 2**24, 2**24 + 1 would equal 2**24
        raise ValueError(f"ignore_index: expected an integer within +-2**24 for a sigmoid loss "
                         f"(targets are floats), got {value}")
    return value


def class_axis(value, rank: int) -> int:
    """The class axis of rank-``rank`` predictions as a non-negative index: any axis but the
    first, which is the batch (``per_sample`` sums each sample over the other axes)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"axis: expected an integer, got {shown(value)}")
    if not (1 <= value < rank or -rank < value <= -1):
        raise ValueError(f"axis: expected the class axis of rank-{rank} predictions, 1 to {rank - 1} or "
                         f"-{rank - 1} to -1 (axis 0 is the batch), got {shown(value)}")
    return int(value) % rank


def poly_epsilon(value) -> float:
    """Poly-1's epsilon (Leng et al., ICLR 2022): at least -1, where the loss stays >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"poly_epsilon: expected a number >= -1, got {shown(value)}")
    if not math.isfinite(float(value)) or value < -1 or abs(value) > FLOAT32_MAX:
        raise ValueError(f"poly_epsilon: expected a finite number >= -1 (below, the loss can turn negative), "
                         f"got {shown(value)}")
    return float(value)


def probability_margin(value) -> float:
    """The asymmetric loss's probability margin (Ridnik et al., ICCV 2021), in [0, 1)."""
    return unit_float("probability_margin", value, open_high=True)


def vector_length(value: PerClass | Sequence[float] | None) -> int | None:
    return len(value) if isinstance(value, tuple) else None


def _interval(low: float, high: float) -> str:
    if math.isinf(high):
        return f"[{low:g}, inf)"
    return f"[{low:g}, {high:g}]"
