"""``validate``: ONNX Runtime against TensorFlow, output by output, element by element.

Two references: TensorFlow itself (the artifact's SavedModel, or the graph rebuilt from
``spec.json`` when the artifact has none) on generated cases, or, with ``reference_only``, the
TensorFlow outputs stored in ``reference.npz`` at export time. The second path imports neither
TensorFlow nor tf2onnx, so a serving host with only onnxruntime can check its own runtime.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

from export import artifact, consistency, writing
from export.cases import Case, generate, parse_shapes, read_realistic
from export.compare import TOLERANCES, compare
from export.formula import relative_floor
from export.errors import ArtifactError, ProviderError, UsageError
from export.runtime import RuntimeSession, check_provider, open_session
from focal_graph.spec import FocalSpec



def validate(artifact_dir, *, provider: str = "auto", shapes=None, atol=None, rtol=None, reference_only: bool = False,
             report=None, public_key=None, force: bool = False) -> dict:
    """Validate the artifact at ``artifact_dir``; returns the report (``report["passed"]``).

    Two checks, both in the report. ONNX Runtime on ``provider`` against the reference, output
    by output; and whether the artifact's files describe one loss (``report["consistency"]``,
    `export.consistency`): ``spec.json``, the ONNX model's metadata and graph, the SavedModel
    (not with ``reference_only``) and ``reference.npz``, on the inputs stored there.

    Args:
        provider: ``auto`` | ``cpu`` | ``cuda`` (see `export.runtime.open_session`).
        shapes: prediction shapes to generate inputs for (``"8x10,0x10"`` or tuples); default
            `export.cases.default_shapes`. Not with ``reference_only``.
        atol, rtol: an element fails only where it exceeds both; defaults per dtype
            (`export.compare.TOLERANCES`).
        reference_only: compare with ``reference.npz`` instead of running TensorFlow.
        report: a path to write the report to as JSON (outside the artifact; see
            `export.writing.check_outputs`).
        force: replace ``report`` if it exists (otherwise `UsageError`; docs/outputs.md).
        public_key: refuse the artifact unless its signature verifies with this public key
            (`export.signing.verify`).

    Raises `ArtifactError` when the files do not match the manifest or the signature, or cannot
    be read, `UsageError` on bad options, `OutputError` when the report cannot be written.
    """
    directory = Path(artifact_dir)
    check_provider(provider)
    report = writing.check_outputs({"--report": report}, {"ARTIFACT": directory}, force=force)["--report"]
    if public_key is not None:
        from export import signing

        signing.verify(directory, public_key)
    spec = artifact.loss_artifact(directory, onnx=True)
    atol, rtol = tolerances(spec, atol, rtol)
    stored, stored_outputs = consistency.stored_cases(directory)
    saved_model, errors = None, []
    if reference_only:
        if shapes is not None:
            raise UsageError("--shapes: not with --reference-only (the stored inputs are the reference's)")
        # the stored cases as stored (a spec.json naming other inputs is for the consistency
        # check to name), then the realistic case, regenerated from its seed
        cases, expected = list(stored), dict(stored_outputs)
        with consistency.reading_reference(directory / artifact.REFERENCE):
            realistic, realistic_outputs = read_realistic(directory / artifact.REFERENCE, spec, artifact.forms(spec))
        cases += realistic
        expected.update(realistic_outputs)
        source = artifact.REFERENCE
    else:
        cases = generate(spec, None if shapes is None else parse_shapes(spec, shapes))
        from export import tensorflow_reference

        if (directory / artifact.SAVED_MODEL).is_dir():
            forms = _loaded_saved_model(tensorflow_reference, directory / artifact.SAVED_MODEL)
            # one loaded SavedModel for both sets of inputs: XLA compiles once per shape and load
            saved_model = consistency.saved_model_witness(forms, stored)
            expected = {}
            for case in cases:
                try:
                    expected[case.name] = forms(case.inputs, case.forms)
                except Exception as error:  # TensorFlow's errors, or a TypeError for inputs it does not take
                    errors.append(f"{case.name}: the SavedModel raised {type(error).__name__}: "
                                  f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}")
            cases = [case for case in cases if case.name in expected]
            source = "TensorFlow: " + artifact.SAVED_MODEL
        else:
            expected = tensorflow_reference.outputs_from_spec(spec, cases)
            source = "TensorFlow: graph rebuilt from " + artifact.SPEC
    session = _session(directory / artifact.ONNX, provider)
    result = run(session, spec, cases, expected, provider=provider, atol=atol, rtol=rtol, source=source)
    result["errors"] = errors + result["errors"]
    result["consistency"] = consistency.check_artifact(directory, spec, saved_model=saved_model, atol=atol, rtol=rtol)
    result["passed"] = result["passed"] and result["consistency"]["passed"] and not errors
    result["artifact"] = str(directory)
    # what signing recorded as unchecked (sign --unchecked-saved-model): printed, so that nobody
    # takes a signature for a check of it
    result["unchecked"] = artifact.unchecked_files(artifact.read_manifest(directory / artifact.MANIFEST))
    result = _finite(result)
    if report is not None:
        writing.write_atomically("--report", report, artifact.json_bytes(result), force=force)
    return result


def _session(model: Path, provider: str) -> RuntimeSession:
    """An ONNX Runtime session for an artifact's model, or `ArtifactError` naming the file."""
    try:
        return open_session(model, provider)
    except ProviderError:
        raise
    except Exception as error:  # onnxruntime's InvalidProtobuf, InvalidGraph, Fail, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ArtifactError(f"{model}: ONNX Runtime cannot load it ({reason})") from None


def _loaded_saved_model(tensorflow_reference, path: Path):
    """`export.tensorflow_reference.saved_model_forms`, or `ArtifactError` naming the SavedModel."""
    try:
        return tensorflow_reference.saved_model_forms(path)
    except Exception as error:  # TensorFlow's OpError, OSError for a file it cannot parse, KeyError for a signature
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ArtifactError(f"{path}: TensorFlow cannot load it or it lacks a signature of the forms ({reason})") from None


def tolerances(spec: FocalSpec, atol, rtol) -> tuple[float, float]:
    default_atol, default_rtol = TOLERANCES[spec.dtype]
    checked = []
    for flag, value, default in (("--atol", atol, default_atol), ("--rtol", rtol, default_rtol)):
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UsageError(f"{flag}: expected a finite number >= 0, got {value!r}")
        checked.append(float(value))
    return checked[0], checked[1]


def run(model, spec: FocalSpec, cases: list[Case], expected: dict, *, provider: str, atol: float, rtol: float,
        source: str) -> dict:
    """Run ONNX Runtime on every case and compare with ``expected``; returns the report.
    ``model``: a path, or a session already open on ``provider``."""
    session = model if isinstance(model, RuntimeSession) else open_session(model, provider)
    actual, failures = {}, []
    for case in cases:
        try:
            actual[case.name] = session.run(case.inputs)
        except Exception as error:  # onnxruntime's own error types; the case fails, the others still run
            failures.append(f"{case.name}: ONNX Runtime raised {str(error).strip().splitlines()[0]}")
    ran = [case.name for case in cases if case.name in actual]
    # two float32 computations, each within its bound of the float64 truth: twice that apart
    relative = consistency.relative_tolerances(spec, [case for case in cases if case.name in actual], spec.dtype, rtol)
    relative = None if relative is None else {name: 2.0 * tolerance for name, tolerance in relative.items()}
    verdicts = compare(expected, actual, atol=atol, rtol=rtol, cases=ran, outputs=list(artifact.forms(spec)),
                       relative=relative, floor=relative_floor(spec.dtype))
    import onnxruntime

    return _finite({
        "spec": spec.name,
        "reference": source,
        "onnxruntime": {"version": onnxruntime.__version__, **session.describe()},
        "tolerance": {"atol": atol, "rtol": rtol},
        "cases": [{"name": case.name, "shape": list(case.shape)} for case in cases],
        "outputs": [verdict.to_dict() for verdict in verdicts],
        "errors": failures,
        "passed": all(verdict.passed for verdict in verdicts) and not failures,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": artifact.library_versions(),
    })


def _finite(value):
    """The report with inf and NaN written as strings, so it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def format_report(report: dict) -> str:
    """The report as the command line prints it: one line per output, then the verdict."""
    runtime = report["onnxruntime"]
    width = max([11] + [len(verdict["output"]) for verdict in report["outputs"]])  # per_sample_normalized: 21
    nodes = ", ".join(f"{provider} {count}" for provider, count in runtime["nodes_per_provider"].items())
    lines = [
        f"{report.get('artifact', '')}  {report['spec']}",
        f"  reference: {report['reference']}; {len(report['cases'])} cases",
        f"  ONNX Runtime {runtime['version']}: {runtime['provider']} ran the graph (nodes: {nodes})"
        + (f"  [{runtime['note']}]" if runtime["note"] else ""),
        f"  tolerance: an element fails only where it exceeds atol={report['tolerance']['atol']:g} and rtol={report['tolerance']['rtol']:g};"
        " loss elements above 1e-30 must also agree relatively, within the spec's bound",
        f"  {'output':<{width}} {'elements':>9} {'max abs':>10} {'max rel':>10} {'needs atol':>11} {'or rtol':>10}  verdict",
    ]
    for verdict in report["outputs"]:
        numbers = [_number(verdict[key]) for key in ("max_abs_error", "max_rel_error", "required_atol", "required_rtol")]
        status = "PASS" if verdict["passed"] else f"FAIL ({verdict['failures']} elements)"
        lines.append(f"  {verdict['output']:<{width}} {verdict['elements']:>9} {numbers[0]:>10} {numbers[1]:>10} {numbers[2]:>11} {numbers[3]:>10}  {status}")
        if verdict.get("relative_elements"):
            status_relative = ("PASS" if not verdict["relative_failures"] else f"FAIL ({verdict['relative_failures']} elements)")
            lines.append(f"  {'  relative':<{width}} {verdict['relative_elements']:>9} {'':>10} "
                         f"{_number(verdict['relative_max_error']):>10} {'':>11} {'':>10}  {status_relative}")
        if not verdict["passed"] and verdict["worst"] and verdict["failures"]:
            worst = verdict["worst"]
            lines.append(f"    worst: {worst['case']} at {tuple(worst['index'])}: expected {worst['expected']!r}, got {worst['actual']!r}")
        if verdict.get("relative_failures"):
            worst = verdict["relative_worst"]
            lines.append(f"    worst relative: {worst['case']} at {tuple(worst['index'])}: expected {worst['expected']!r}, "
                         f"got {worst['actual']!r} ({worst['rel_error']:.2g} relative, at most {worst['tolerance']:.2g})")
        lines.extend(f"    {problem}" for problem in verdict["problems"])
    lines.extend(f"  error: {error}" for error in report["errors"])
    agreement = report.get("consistency")  # export's own report has none: it wrote the files itself
    if agreement is not None:
        lines.extend(consistency.format_consistency(agreement))
    lines.extend(f"  unchecked at signing: {name}: {why}" for name, why in report.get("unchecked", {}).items())
    verdict = "  PASS" if report["passed"] else "  FAIL"
    if agreement is not None and not agreement["passed"]:
        files = [str(Path(report.get("artifact", "")) / name) for name in agreement["files"]]
        verdict += f": {' and '.join(files)} {'disagrees' if len(files) == 1 else 'disagree'} with the rest of the artifact"
    lines.append(verdict)
    return "\n".join(lines)


def _number(value) -> str:
    return value if isinstance(value, str) else f"{value:.2e}"
