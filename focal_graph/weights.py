"""Class weights from class counts (numpy only: these are constants of a loss, not graph ops)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from focal_graph import params

WEIGHTINGS = ("inverse_frequency", "effective_number")


def class_weights(
    counts: Sequence[float],
    method: str = "inverse_frequency",
    beta: float = 0.999,
) -> np.ndarray:
    """One weight per class from the number of training samples of each class.

    Args:
        counts: ``n_c`` for each class c, shape (C,); every count > 0.
        method: ``"inverse_frequency"``: ``w_c = (T / n_c) / sum_k (T / n_k)`` with
            ``T = sum_k n_k``, exactly as seeds 000 and 001 compute it (the weights sum to 1).
            ``"effective_number"`` (Cui et al., CVPR 2019): ``w_c = (1 - beta) / (1 - beta**n_c)``,
            then normalised to sum to C.
        beta: the effective-number hyper-parameter, in [0, 1); used only by that method.

    Returns:
        float64 array of shape (C,).
    """
    values = check_class_counts(counts)
    if method == "inverse_frequency":
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught by _finite, in one line
            total = float(np.sum(values))
            inverse = total / values
            return _finite(inverse / np.sum(inverse), values)
    if method == "effective_number":
        check_beta(beta)
        # 1 - beta**n loses digits when beta is close to 1; -expm1(n * log(beta)), with
        # log(beta) = log1p(beta - 1) (beta - 1 is exact), is the same number without that
        # cancellation. beta = 0 gives log(0) = -inf and 1 - 0**n = 1, as it should.
        with np.errstate(divide="ignore"):
            log_beta = np.log1p(float(beta) - 1.0)
        one_minus_beta_n = -np.expm1(values * log_beta)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            weights = (1.0 - beta) / one_minus_beta_n
            return _finite(weights * (len(values) / np.sum(weights)), values)
    raise ValueError(f"weighting: expected one of {', '.join(WEIGHTINGS)}, got {params.shown(method)}")


def _finite(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    if not np.isfinite(weights).all():  # the counts' sum (or their ratio) overflows float64
        raise ValueError(f"class_counts: counts from {float(counts.min())!r} to {float(counts.max())!r} give class "
                         "weights that are not finite numbers; scale the counts down")
    return weights


def check_class_counts(counts: Sequence[float]) -> np.ndarray:
    """The counts as a float64 vector, or a ValueError naming ``class_counts``."""
    values = params.numbers("class_counts", counts, expected="a list of positive numbers")
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"class_counts: expected a non-empty 1-D list of counts, got shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"class_counts: every count must be a finite number > 0, got {float(values[i])!r} for class {i}")
    return values


def check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta: expected a number in [0, 1), got {params.shown(beta)}")
