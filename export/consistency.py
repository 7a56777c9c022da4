"""Do an artifact's files describe one loss? ``spec.json``, ``model.onnx`` (its graph and its
``focalgraph.spec`` metadata), ``saved_model/`` and ``reference.npz``, checked against each other.

The manifest proves only that the files are the ones it lists: anyone who can write the files
can edit ``spec.json`` (gamma 2 to 0.5) and recompute the manifest, and every other check used
to pass while ``inspect`` showed 0.5, eval computed 2 and embed computed 0.5. Here each file is a
witness of the loss, evaluated on the inputs stored in ``reference.npz``:

- ``reference.npz``: the outputs TensorFlow gave at export;
- ``model.onnx``: ONNX Runtime (CPU) on the stored inputs;
- ``saved_model``: TensorFlow on the stored inputs (only where the caller ran it);
- ``spec.json`` and ``model.onnx metadata``: the float64 formula of the spec each describes
  (`export.formula`), the only TensorFlow-free way to ask what a spec means.

Two witnesses agree when every output they both give matches within the tolerances (the
formula's are at least the dtype's defaults: it is float64, the graphs float32), and, where the
spec claims it (`export.formula.relative_tolerance`), every element of ``loss`` above 1e-30 also
relatively: a SavedModel whose sigmoid loss was 2x off (or 0) on losses of 1e-24 agreed within
atol with every other file. The largest
group of witnesses that all agree with each other, counted by the files they stand for, then by
how many of them compute rather than describe, is taken as the loss; the witnesses outside it
are the files that disagree. With two files against two, nothing can say which is right: both
sides are named. ``spec.json`` is also compared with the metadata field by field, which covers
the one field no output shows (``reduction``).

numpy and onnxruntime only, no TensorFlow: a serving host checks its artifacts the same way.
"""

from __future__ import annotations

import contextlib

import itertools
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from export import artifact
from export.cases import REALISTIC_NAME, Case, generate, read_reference
from export.compare import TOLERANCES, compare
from export.errors import ArtifactError, UsageError
from export.formula import relative_floor, relative_tolerance, spec_forms
from focal_graph.spec import FocalSpec

SPEC_METADATA = artifact.SPEC_METADATA
FORMS = artifact.FORMS
METADATA = f"{artifact.ONNX} metadata"  # the witness name of the spec in model.onnx's metadata
FORMULA = "float64 formula"
# Witnesses that compute the loss (rather than describe it) win a tie between two groups.
COMPUTING = (artifact.REFERENCE, artifact.ONNX, artifact.SAVED_MODEL)


@dataclass
class Witness:
    """One file's account of the loss: ``outputs[case][form]`` on the stored inputs, or the
    ``error`` that kept it from giving one (it then agrees with no other witness)."""

    name: str  # spec.json, model.onnx, model.onnx metadata, saved_model, reference.npz
    computed_by: str  # "stored at export", "ONNX Runtime", "TensorFlow", "float64 formula"
    outputs: Optional[dict] = None
    error: str = ""

    @property
    def file(self) -> str:
        return artifact.ONNX if self.name == METADATA else self.name

    def to_dict(self) -> dict:
        return {"name": self.name, "computed_by": self.computed_by, "error": self.error or None}


def check_artifact(directory, spec: FocalSpec, *, saved_model: Optional[Witness] = None,
                   atol: Optional[float] = None, rtol: Optional[float] = None) -> dict:
    """Check that the artifact's files describe one loss; returns the report (``passed``).

    Args:
        directory: an artifact already verified against its manifest; ``spec`` is its spec.json.
        saved_model: the SavedModel's witness (`saved_model_witness` on `stored_cases`), from
            a caller that has TensorFlow; it may give only some of the forms.
        atol, rtol: tolerances between graphs and stored outputs (default: the dtype's).

    Raises `ArtifactError` when ``reference.npz`` cannot be read.
    """
    directory = Path(directory)
    cases, stored = stored_cases(directory)
    described = formula_witness(artifact.SPEC, spec, cases)
    witnesses = [Witness(artifact.REFERENCE, "stored at export", stored)]
    metadata_spec = None
    if (directory / artifact.ONNX).is_file():
        session, error = open_cpu_session(directory / artifact.ONNX)
        witnesses.append(onnx_witness(session, cases, error=error))
        metadata_spec, metadata_error = read_metadata_spec(session, error)
        if metadata_spec is None:
            witnesses.append(Witness(METADATA, FORMULA, error=metadata_error))
        elif metadata_spec == spec:  # the same formula: computed once
            witnesses.append(Witness(METADATA, FORMULA, described.outputs, described.error))
        else:
            witnesses.append(formula_witness(METADATA, metadata_spec, cases))
    if saved_model is not None:
        witnesses.append(saved_model)
    witnesses.append(described)
    dtype = _dtype(stored, spec)
    report = vote(witnesses, dtype=dtype, atol=atol, rtol=rtol, relative=relative_tolerances(spec, cases, dtype, rtol))
    report["inputs"] = f"{artifact.REFERENCE}: {len(cases)} cases"
    report["fields"] = {} if metadata_spec is None else differing_fields(spec, metadata_spec)
    if report["fields"]:
        report["passed"] = False
        # a field no output shows (reduction): nothing says which of the two is right
        report["files"] = report["files"] or [artifact.SPEC, artifact.ONNX]
        fields = ", ".join(f"{name} {a!r} against {b!r}" for name, (a, b) in report["fields"].items())
        report["message"] = _join(report["message"], f"{artifact.SPEC} and the {SPEC_METADATA} metadata of "
                                                     f"{artifact.ONNX} differ: {fields}")
    return report


def confirm_artifact(directory, spec: FocalSpec, *, saved_model: Optional[Witness] = None) -> dict:
    """`check_artifact`, raising `ArtifactError` that names the file(s) that disagree."""
    report = check_artifact(directory, spec, saved_model=saved_model)
    if not report["passed"]:
        raise ArtifactError(f"{Path(directory) / report['files'][0]}: {report['message']}")
    return report


def confirm_onnx_file(path, spec: Optional[FocalSpec], *, model=None) -> None:
    """A bare ``.onnx`` loss: its ``focalgraph.spec`` metadata (``spec``) must describe what its
    graph computes, on inputs generated from that spec (`export.cases.generate`): eval reads the
    metadata to summarise (ignore_index, multi-label), attach to name the inputs. ``model``: the
    serialized model, if not read from ``path``. Raises `UsageError` naming the file."""
    if spec is None:
        return
    try:
        # not the realistic case (16384 positions): as with reference.npz, it is validate's, and
        # its float64 formula would cost seconds on every eval
        cases = [case for case in generate(spec) if not case.name.startswith(REALISTIC_NAME + " ")]
    except UsageError as error:
        raise UsageError(f"{path}: its {SPEC_METADATA} metadata cannot be checked ({error})") from None
    session, error = open_cpu_session(str(path) if model is None else model)
    witnesses = [onnx_witness(session, cases, error=error), formula_witness(METADATA, spec, cases)]
    report = vote(witnesses, dtype=spec.dtype, relative=relative_tolerances(spec, cases, spec.dtype))
    if not report["passed"]:
        pair = report["pairs"][0]
        raise UsageError(f"{path}: its {SPEC_METADATA} metadata ({_summary(spec)}) does not describe the loss its graph "
                         f"computes ({pair.get('reason', '')}); "
                         "it is not a loss focalgraph can summarise or attach")


def confirm_loss(path, spec: Optional[FocalSpec], model=None) -> None:
    """What `export.runtime.LossSession` and `export.attach` call: an artifact directory (already
    verified against its manifest) is checked with `confirm_artifact` (TensorFlow-free), a bare
    ``.onnx`` with `confirm_onnx_file`."""
    path = Path(path)
    if path.is_dir():
        confirm_artifact(path, spec)
    else:
        confirm_onnx_file(path, spec, model=model)


# ---------------------------------------------------------------------------------------------
# Witnesses


@contextlib.contextmanager
def reading_reference(path: Path):
    """A damaged ``reference.npz`` (not a zip, a bad member, a missing key) as one `ArtifactError`
    naming it."""
    try:
        yield
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        reason = (error.strerror if isinstance(error, OSError) else None) or error
        raise ArtifactError(f"{path}: unreadable ({type(error).__name__}: {reason})") from None


def stored_cases(directory) -> tuple[list[Case], dict]:
    """``reference.npz``'s inputs and outputs, read without a spec (a spec.json that names other
    inputs must not make the reference look unreadable). `ArtifactError` when it is."""
    path = Path(directory) / artifact.REFERENCE
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; the artifact's files cannot be checked against each other without it")
    with reading_reference(path):
        cases, outputs = read_reference(path, FORMS)  # and NORMALIZED_FORMS where stored
    if len({case.name for case in cases}) != len(cases) or any(len(case.inputs) not in (2, 3) for case in cases):
        raise ArtifactError(f"{path}: unreadable (not two inputs (three with weights) and four outputs per case, "
                            "each case named once)")
    return cases, outputs


def formula_witness(name: str, spec: FocalSpec, cases: list[Case]) -> Witness:
    """The float64 formula of ``spec`` on ``cases``; an error where the inputs are not the ones
    the spec takes (names, rank, class count)."""
    witness = Witness(name, FORMULA)
    outputs = {}
    for case in cases:
        if tuple(case.inputs) != spec.graph_inputs:
            witness.error = (f"it takes {' and '.join(spec.graph_inputs)}; the stored inputs are "
                             f"{' and '.join(case.inputs)}")
            return witness
        try:
            outputs[case.name] = spec_forms(spec, *case.inputs.values())
        except ValueError as error:
            witness.error = f"case {case.name!r}: {error}"
            return witness
    witness.outputs = outputs
    return witness


def saved_model_witness(run, cases: list[Case], forms=FORMS) -> Witness:
    """The SavedModel on ``cases``: ``run(inputs, forms)`` is
    `export.tensorflow_reference.saved_model_forms` (or anything that calls a TensorFlow graph)."""
    witness = Witness(artifact.SAVED_MODEL, "TensorFlow")
    try:
        witness.outputs = {case.name: run(case.inputs, forms) for case in cases}
    except Exception as error:  # TensorFlow's errors, or a TypeError for inputs the signature does not take
        witness.error = f"TensorFlow: {_first_line(error)}"
    return witness


def open_cpu_session(model):
    """An ONNX Runtime session on the CPU (whatever provider the caller serves on: the question is
    what the graph computes, not how fast) for ``model`` (a path or bytes), or None and why not."""
    from export.runtime import open_session

    try:
        return open_session(model if isinstance(model, bytes) else str(model), "cpu"), ""
    except Exception as error:  # onnxruntime's InvalidProtobuf, Fail, ...
        return None, f"ONNX Runtime cannot load it ({_first_line(error)})"


def onnx_witness(session, cases: list[Case], *, error: str = "") -> Witness:
    """The ONNX graph run by ``session`` (`open_cpu_session`; None with ``error``) on ``cases``."""
    witness = Witness(artifact.ONNX, "ONNX Runtime", error=error)
    if session is None:
        return witness
    outputs = {}
    for case in cases:
        if sorted(session.input_names) != sorted(case.inputs):
            witness.error = f"its graph takes {' and '.join(session.input_names)}; the inputs are {' and '.join(case.inputs)}"
            return witness
        try:
            outputs[case.name] = session.run(case.inputs)
        except Exception as failure:  # onnxruntime's own error types: a graph that cannot run these inputs
            witness.error = f"ONNX Runtime: {_first_line(failure)}"
            return witness
    witness.outputs = outputs
    return witness


def read_metadata_spec(session, error: str = "") -> tuple[Optional[FocalSpec], str]:
    """The spec in the model's ``focalgraph.spec`` metadata, or None and why not."""
    if session is None:
        return None, error
    text = session.session.get_modelmeta().custom_metadata_map.get(SPEC_METADATA)
    if text is None:
        return None, f"{artifact.ONNX} has no {SPEC_METADATA} metadata"
    try:
        return FocalSpec.from_json(text), ""
    except (ValueError, TypeError) as failure:
        return None, f"its {SPEC_METADATA} metadata is not a FocalSpec ({failure})"


def differing_fields(spec: FocalSpec, other: FocalSpec) -> dict:
    """``{field: (spec's value, other's value)}`` for every field in which they differ."""
    mine, theirs = spec.to_dict(), other.to_dict()
    return {name: (mine[name], theirs[name]) for name in mine if mine[name] != theirs[name]}


# ---------------------------------------------------------------------------------------------
# The vote


def relative_tolerances(spec: FocalSpec, cases: list[Case], dtype: str, rtol: Optional[float] = None) -> Optional[dict]:
    """``{case name: per-element relative tolerance of loss}`` for the cases whose inputs the spec
    takes and on which it claims relative exactness (`export.formula.relative_tolerance`), each
    against the float64 truth; None when it claims none on any. ``rtol``: at least the dtype's
    default."""
    # --rtol may loosen the guarantee, not tighten it below the dtype's own rounding: a
    # tighter one failed correct artifacts and named the computing files
    default_rtol = TOLERANCES.get(dtype, TOLERANCES["float32"])[1]
    rtol = default_rtol if rtol is None else max(rtol, default_rtol)
    tolerances = {}
    for case in cases:
        if tuple(case.inputs) != spec.graph_inputs or "loss" not in case.forms:
            continue
        y_true, predictions = list(case.inputs.values())[:2]
        try:
            tolerance = relative_tolerance(spec, y_true, predictions, rtol)
        except (ValueError, IndexError):  # inputs the spec does not take: the formula witness says so
            continue
        if tolerance is not None:
            tolerances[case.name] = tolerance
    return tolerances or None


def vote(witnesses: list[Witness], *, dtype: str, atol: Optional[float] = None, rtol: Optional[float] = None,
         relative: Optional[dict] = None) -> dict:
    """Compare every pair of witnesses and find the files outside the largest agreeing group.

    ``relative``: `relative_tolerances`, each witness's own error bound against the float64
    truth; two computing witnesses may be twice that apart, one against the formula once.

    Returns ``passed``, ``witnesses``, ``pairs`` (each pair's verdict), ``disagreeing`` (witness
    names), ``files`` (the files they stand for, for messages) and ``message``.
    """
    default_atol, default_rtol = TOLERANCES.get(dtype, TOLERANCES["float32"])
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    pairs, agree = [], {}
    for a, b in itertools.combinations(witnesses, 2):
        formula = FORMULA in (a.computed_by, b.computed_by)
        pair_relative = None if relative is None else (
            relative if formula else {case: 2.0 * tolerance for case, tolerance in relative.items()})
        pair = _pair(a, b, atol=max(atol, default_atol) if formula else atol,
                     rtol=max(rtol, default_rtol) if formula else rtol, relative=pair_relative, floor=relative_floor(dtype))
        pairs.append(pair)
        agree[a.name, b.name] = agree[b.name, a.name] = pair["agree"]
    groups = [group for size in range(len(witnesses), 0, -1) for group in itertools.combinations(witnesses, size)
              if all(agree[a.name, b.name] for a, b in itertools.combinations(group, 2))]
    best_score = max(_score(group) for group in groups)
    best = [group for group in groups if _score(group) == best_score]
    majority = set.intersection(*({w.name for w in group} for group in best))
    disagreeing = [w for w in witnesses if w.name not in majority]
    report = {
        "passed": not disagreeing,
        "witnesses": [w.to_dict() for w in witnesses],
        "pairs": pairs,
        "disagreeing": [w.name for w in disagreeing],
        "files": list(dict.fromkeys(w.file for w in disagreeing)),
        "message": "",
    }
    if disagreeing:
        report["message"] = _message(disagreeing, [w for w in witnesses if w.name in majority], pairs, len(best) > 1)
    return report


def _score(group) -> tuple[int, int, int]:
    files = {w.file for w in group}
    computing = sum(1 for w in group if w.computed_by != FORMULA)
    return len(files), computing, len(group)


def _pair(a: Witness, b: Witness, *, atol: float, rtol: float, relative: Optional[dict] = None, floor: float = 0.0) -> dict:
    pair = {"witnesses": [a.name, b.name], "agree": False, "tolerance": {"atol": atol, "rtol": rtol}}
    if a.outputs is None or b.outputs is None:
        pair["reason"] = "; ".join(f"{w.name}: {w.error}" for w in (a, b) if w.outputs is None)
        return pair
    if a.outputs is b.outputs:
        pair["agree"] = True
        return pair
    cases = [name for name in a.outputs if name in b.outputs]
    forms = [form for form in artifact.KNOWN_FORMS if cases and all(form in a.outputs[c] and form in b.outputs[c] for c in cases)]
    if not cases or not forms:
        pair["reason"] = "no output in common"
        return pair
    verdicts = compare(a.outputs, b.outputs, atol=atol, rtol=rtol, cases=cases, outputs=forms, relative=relative, floor=floor)
    pair["agree"] = all(verdict.passed for verdict in verdicts)
    pair["forms"] = forms
    failed = [verdict for verdict in verdicts if not verdict.passed]
    if failed:
        verdict = failed[0]
        pair["reason"] = "; ".join(verdict.problems[:1]) or _where(verdict, a, b)
        pair["worst"] = {"output": verdict.output, **(verdict.worst or {})}
    return pair


def _where(verdict, a: Witness, b: Witness) -> str:
    if verdict.relative_failures and not verdict.failures:
        worst = verdict.relative_worst
        return (f"{verdict.output} of case {worst['case']!r} at {tuple(worst['index'])}: {worst['expected']:.6g} from "
                f"{a.name}, {worst['actual']:.6g} from {b.name}, {worst['rel_error']:.2g} apart relatively "
                f"(at most {worst['tolerance']:.2g}: within atol, but not the same loss)")
    worst = verdict.worst or {}
    if not worst:
        return f"{verdict.output} differs"
    index = tuple(worst["index"])
    return (f"{verdict.output} of case {worst['case']!r} at {index}: {worst['expected']:.6g} from {a.name}, "
            f"{worst['actual']:.6g} from {b.name}")


def _message(disagreeing: list[Witness], majority: list[Witness], pairs: list[dict], tie: bool) -> str:
    names = " and ".join(_label(w) for w in disagreeing)
    if tie or not majority:
        return f"the files disagree on the loss ({names} do not all agree): " + "; ".join(
            pair.get("reason", "") for pair in pairs if not pair["agree"])
    first, majority_names = disagreeing[0], {w.name for w in majority}
    evidence = next((pair.get("reason", "") for pair in pairs
                     if first.name in pair["witnesses"] and set(pair["witnesses"]) & majority_names), "")
    verb = "does" if len(disagreeing) == 1 else "do"
    others = _listed([_label(w) for w in majority])
    return f"{names} {verb} not describe the loss that {others} {'hold' if len(majority) > 1 else 'holds'} ({evidence})"


def _label(witness: Witness) -> str:
    return f"the {SPEC_METADATA} metadata of {artifact.ONNX}" if witness.name == METADATA else witness.name


def _summary(spec: FocalSpec) -> str:
    """The spec's name and its set fields, for a message."""
    fields = {key: value for key, value in spec.to_dict().items() if value is not None and key not in ("variant", "preset")}
    return ", ".join([spec.name] + [f"{key}={value}" for key, value in fields.items()])


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _dtype(stored: dict, spec: FocalSpec) -> str:
    for outputs in stored.values():
        for value in outputs.values():
            return np.asarray(value).dtype.name
    return spec.dtype


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second


def format_consistency(report: dict) -> list[str]:
    """The report as lines for the command line."""
    witnesses = ", ".join(f"{w['name']} ({w['computed_by']})" for w in report["witnesses"])
    lines = [f"  consistency on {report.get('inputs', 'generated inputs')}: {witnesses}"]
    if report["passed"]:
        lines.append("    every file describes the same loss")
    else:
        lines.append(f"    FAIL: {report['message']}")
    return lines
