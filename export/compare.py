"""Element-wise comparison of two backends' outputs: data in, per-output verdicts out.

numpy only. An element fails only where it exceeds both tolerances:
``|actual - expected| > atol`` and ``|actual - expected| > rtol * |expected|``. NaN matches NaN
and an infinity matches the same infinity; anything else against a NaN or an infinity fails.

atol-or-rtol cannot see a loss of 1e-24 that is 2x off, or 0: so where a caller passes
``relative`` (per case, a per-element tolerance for the ``loss`` output, from
`export.formula.relative_tolerance`), every finite element whose larger side is above ``floor``
must also agree relatively: ``|actual - expected| <= tolerance * max(|actual|, |expected|)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

# Default tolerances per dtype of the loss. float16 results are rounded to 11 significant bits,
# so two backends one float32 rounding apart can land one float16 step (2**-10 relative) apart.
TOLERANCES = {"float64": (1e-9, 1e-9), "float32": (1e-5, 1e-5), "float16": (2e-3, 2e-3)}


@dataclass
class Verdict:
    """One output over every case. ``required_atol`` is the smallest atol that passes at the
    given rtol, ``required_rtol`` the smallest rtol that passes at the given atol."""

    output: str
    passed: bool = True
    elements: int = 0
    failures: int = 0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    required_atol: float = 0.0
    required_rtol: float = 0.0
    worst: Optional[dict] = None  # the failing element with the largest absolute error (else any)
    problems: list = field(default_factory=list)  # shape or dtype mismatches, by case
    # the relative check (``relative``): elements checked, failing, the largest relative error
    # among them and the worst element against its tolerance
    relative_elements: int = 0
    relative_failures: int = 0
    relative_max_error: float = 0.0
    relative_worst: Optional[dict] = None

    def to_dict(self) -> dict:
        return asdict(self)


def errors(expected: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute and relative error per element, in float64; inf where exactly one side is
    non-finite or the two non-finite values differ."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    same_special = (np.isnan(expected) & np.isnan(actual)) | (np.isinf(expected) & (expected == actual))
    special = ~np.isfinite(expected) | ~np.isfinite(actual)
    with np.errstate(invalid="ignore", divide="ignore"):
        absolute = np.where(special, np.inf, np.abs(actual - expected))
        relative = np.where(special, np.inf, np.where(absolute == 0, 0.0, absolute / np.abs(expected)))
    absolute = np.where(same_special, 0.0, absolute)
    relative = np.where(same_special, 0.0, relative)
    return absolute, relative


def compare(expected: dict, actual: dict, *, atol: float, rtol: float, cases: list[str], outputs: list[str],
            relative: Optional[dict] = None, floor: float = 0.0) -> list[Verdict]:
    """Compare ``expected[case][output]`` with ``actual[case][output]`` for every case and output.

    ``relative``: ``{case: tolerances}``, an array of the ``loss`` output's shape (or None for no
    relative claim), checked where the larger side is above ``floor``.

    Returns one `Verdict` per output, aggregated over the cases.
    """
    relative_tolerances = relative
    verdicts = []
    for output in outputs:
        verdict = Verdict(output)
        for case in cases:
            if output not in expected[case]:  # a case that compares only some forms (the realistic one)
                continue
            if output not in actual[case]:  # an artifact exported before the output existed
                verdict.problems.append(f"{case}: no output {output!r}")
                continue
            want = np.asarray(expected[case][output])
            got = np.asarray(actual[case][output])
            if want.shape != got.shape:
                verdict.problems.append(f"{case}: shape {got.shape}, expected {want.shape}")
                continue
            if want.dtype != got.dtype:
                verdict.problems.append(f"{case}: dtype {got.dtype}, expected {want.dtype}")
                continue
            absolute, relative = errors(want, got)
            verdict.elements += absolute.size
            if absolute.size == 0:
                continue
            tolerance = None if relative_tolerances is None or output != RELATIVE_OUTPUT else relative_tolerances.get(case)
            # a spec whose loss has another shape than these outputs (a spec.json describing
            # another loss) makes no claim on them: atol-or-rtol and the vote say the rest
            if tolerance is not None and np.shape(tolerance) == want.shape:
                _relative_check(verdict, case, want, got, np.asarray(tolerance, np.float64), floor)
            failing = (absolute > atol) & (relative > rtol)
            verdict.failures += int(failing.sum())
            verdict.max_rel_error = max(verdict.max_rel_error, float(relative.max()))
            verdict.required_atol = max(verdict.required_atol, float(absolute[relative > rtol].max(initial=0.0)))
            verdict.required_rtol = max(verdict.required_rtol, float(relative[absolute > atol].max(initial=0.0)))
            # the worst element: the largest error among the failing ones, if any
            ranked = np.where(failing, absolute, -1.0) if failing.any() else absolute
            index = np.unravel_index(int(np.argmax(ranked)), absolute.shape)
            verdict.max_abs_error = max(verdict.max_abs_error, float(absolute.max()))
            if verdict.worst is None or (failing[index] and not verdict.worst["failing"]) or (
                failing[index] == verdict.worst["failing"] and absolute[index] > verdict.worst["abs_error"]
            ):
                verdict.worst = {
                    "case": case,
                    "index": [int(i) for i in index],
                    "expected": float(want[index]),
                    "actual": float(got[index]),
                    "abs_error": float(absolute[index]),
                    "failing": bool(failing[index]),
                }
        if verdict.elements == 0:
            verdict.problems.append("no element compared (every case was empty)")
        verdict.passed = verdict.failures == 0 and verdict.relative_failures == 0 and not verdict.problems
        verdicts.append(verdict)
    return verdicts


RELATIVE_OUTPUT = "loss"  # the unreduced loss: sums of it are dominated by its large elements


def _relative_check(verdict: Verdict, case: str, want: np.ndarray, got: np.ndarray, tolerance: np.ndarray,
                    floor: float) -> None:
    """Add ``case``'s relative comparison of ``got`` against ``want`` to ``verdict``."""
    want64, got64 = np.asarray(want, np.float64), np.asarray(got, np.float64)
    with np.errstate(invalid="ignore"):
        larger = np.maximum(np.abs(want64), np.abs(got64))
        checked = np.isfinite(want64) & np.isfinite(got64) & (larger > floor) & np.isfinite(tolerance)
    if not checked.any():
        return
    error = np.zeros(want64.shape)
    error[checked] = np.abs(got64[checked] - want64[checked]) / larger[checked]
    failing = checked & (error > tolerance)
    verdict.relative_elements += int(checked.sum())
    verdict.relative_failures += int(failing.sum())
    verdict.relative_max_error = max(verdict.relative_max_error, float(error.max()))
    excess = np.where(checked, error / np.where(tolerance > 0, tolerance, np.inf), -1.0)
    index = np.unravel_index(int(np.argmax(excess)), excess.shape)
    worst = {"case": case, "index": [int(i) for i in index], "expected": float(want64[index]),
             "actual": float(got64[index]), "rel_error": float(error[index]), "tolerance": float(tolerance[index]),
             "failing": bool(failing[index])}
    previous = verdict.relative_worst
    if previous is None or (worst["failing"], worst["rel_error"] / max(worst["tolerance"], 1e-300)) > (
            previous["failing"], previous["rel_error"] / max(previous["tolerance"], 1e-300)):
        verdict.relative_worst = worst
