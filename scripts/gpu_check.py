"""The CUDA check: every default artifact validated and timed on one ONNX Runtime provider.

Run by ``make gpu-check`` (``PROVIDER=cuda``, the default, or ``PROVIDER=cpu``). Needs numpy,
onnx and onnxruntime(-gpu) and focalgraph's sources on the path; it imports neither TensorFlow
nor click, tqdm or pyarrow, so it runs on a GPU machine that has only those three packages
(docs/gpu-check.md says how that machine gets onnxruntime-gpu). For each artifact of
`export.exporter.default_specs` under ``--artifacts``:

- ``validate --reference-only`` (`export.validation.validate`) on the provider: ONNX Runtime
  against the TensorFlow outputs stored in ``reference.npz``, on the stored cases and the realistic
  16.4M-element case regenerated from its portable hash, at the targets of issue 24 (`TARGETS`:
  an element fails only where it is off by more than the target both absolutely and relatively);
- NaN positions: the stored cases run once more, the NaN elements of every output compared with
  the reference's, position by position (the CUDA GatherND does not check indices, so the graph
  itself must put the NaN there);
- which execution provider ran every node (session option
  ``session.record_ep_graph_assignment_info``); the loss nodes, those on a data path from the
  inputs (not through Shape or Size), must all have run on the chosen provider;
- ``per_sample`` timed with IOBinding, inputs already on the device, against two one-node floors
  at the same shape (a ReduceMax over the classes: one read; a Mul of two inputs: two reads and a
  write), minima over interleaved rounds. The floor of a softmax loss is the ReduceMax, of an
  element-wise (sigmoid) loss the Mul.

It writes ``gpu.json`` and ``gpu.md`` to ``--out``: ``docs/`` for a CUDA run, a new temporary
folder for a CPU run (a CPU run never writes ``docs/gpu.*``). Exit 0 when every target is met, 1
when one is not (the report is written and the last line names the artifacts), 2 on bad options
or a missing artifact (nothing written).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the GPU machine runs it from a copy of the repo, not an install
    sys.path.insert(1, str(ROOT))

import numpy as np  # noqa: E402

from export import artifact, writing  # noqa: E402
from export.errors import FocalgraphError, ProviderError, UsageError  # noqa: E402

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
DEVICES = {"cpu": "cpu", "cuda": "cuda"}  # OrtValue device names
# Issue 24's targets: relative error per dtype, with atol the same number (an element fails only
# where it exceeds both, as validate counts): with atol 0 the CPU already fails on losses near
# zero (preset-sparse-softmax's per_sample: 1.2e-5 relative, 1.2e-11 absolute, on a loss of
# 9.4e-7 in the realistic case); and per_sample over its floor.
TARGETS = {"float32": 1e-5, "float16": 2e-3}
SPEED_TARGETS = {"variant-sparse-softmax": 3.0}  # judged on CUDA at the full shape only
FULL_ROWS = 16384
CLASSES = 1000  # where the artifact leaves C dynamic
REPORT_MARK = "focalgraph gpu-check"  # what a gpu.json / gpu.md this script wrote carries
SHAPE_OPS = ("Shape", "Size")  # their outputs describe a tensor, not its values
FLOOR_OPSET, FLOOR_IR_VERSION = 17, 13  # onnx 1.23 writes IR 14 by default; ORT 1.31 loads 13 at most


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as focalgraph's own command line does
        self.exit(2, f"gpu_check: error: {message}\n")


def parse(argv) -> argparse.Namespace:
    parser = _Parser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default=os.environ.get("PROVIDER") or "cuda",
                        help="execution provider (default: $PROVIDER, else cuda)")
    parser.add_argument("--artifacts", default=os.environ.get("ARTIFACTS") or "artifacts",
                        help="the folder `make artifacts` wrote (default: artifacts)")
    parser.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT") or None,
                        help="folder for gpu.json and gpu.md (default: docs for cuda, a new temporary folder for cpu)")
    parser.add_argument("--rows", type=int, default=FULL_ROWS,
                        help=f"positions of the timed batch (default {FULL_ROWS}: 16384 x 1000); fewer for a quick run")
    parser.add_argument("--repeats", type=int, default=21, help="interleaved timing rounds (default 21)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each runner first (default 3)")
    parser.add_argument("--only", default=None, help="comma-separated default artifact names (default: all)")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier gpu-check report in --out (docs/outputs.md); another file is never replaced")
    args = parser.parse_args(argv)
    for flag, value, least in (("--rows", args.rows, 1), ("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0)):
        if value < least:
            parser.error(f"{flag}: expected an integer >= {least}, got {value}")
    return args


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        names, out = _plan(args)
        report = check(Path(args.artifacts), names, provider=args.provider, rows=args.rows, repeats=args.repeats,
                       warmup=args.warmup, progress=lambda line: print(line, flush=True))
        out = write(report, out, force=args.force)
    except FocalgraphError as error:
        print(f"gpu_check: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 1)
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}")
    if not report["passed"]:
        failed = [f"{entry['name']} ({', '.join(entry['failed'])})" for entry in report["artifacts"] if not entry["passed"]]
        print(f"gpu_check: FAIL: {'; '.join(failed)}", file=sys.stderr)
        return 1
    print("gpu_check: PASS")
    return 0


def _plan(args) -> tuple[list[str], Path | None]:
    """The artifact names and the output folder (None: a new temporary one), checked before
    anything runs; the folder is created only when the report is written."""
    from export.exporter import default_specs

    defaults = list(default_specs())
    names = defaults if args.only is None else [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in defaults]
    if unknown or not names:
        raise UsageError(f"--only: expected default artifact names ({', '.join(defaults)}), got {args.only!r}")
    for name in names:
        if not (Path(args.artifacts) / name / artifact.ONNX).is_file():
            raise UsageError(f"--artifacts: {Path(args.artifacts) / name} has no {artifact.ONNX}; "
                             "run `make artifacts` (or focalgraph export-defaults) first")
    if args.out is None and args.provider != "cuda":
        return names, None  # a new temporary folder, made when the report is written
    out = ROOT / "docs" if args.out is None else Path(args.out)
    resolved = Path(os.path.realpath(out))
    if args.provider != "cuda" and resolved == Path(os.path.realpath(ROOT / "docs")):
        raise UsageError(f"--out: {out} holds the CUDA report (docs/gpu.*); a {args.provider} run writes elsewhere")
    if resolved.is_dir():
        for name in ("gpu.json", "gpu.md"):
            if os.path.lexists(resolved / name) and not _ours(resolved / name):
                raise UsageError(f"--out: {resolved / name} exists and is not a gpu-check report; name another folder")
        writing.check_outputs({"--out (gpu.json)": resolved / "gpu.json", "--out (gpu.md)": resolved / "gpu.md"},
                              {"--artifacts": [Path(args.artifacts) / name for name in names]}, force=args.force)
    elif os.path.lexists(resolved):
        raise UsageError(f"--out: {out} exists and is not a directory")
    elif not resolved.parent.is_dir() or not os.access(resolved.parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out: cannot create {out}: {resolved.parent} is not a writable directory")
    return names, resolved


def _ours(path: Path) -> bool:
    """Whether ``path`` is a report this script wrote (a file carrying `REPORT_MARK` at its start)."""
    try:
        with open(path, "rb") as file:
            return path.is_file() and REPORT_MARK.encode() in file.read(200)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# The check


def check(artifacts: Path, names, *, provider: str = "cuda", rows: int = FULL_ROWS, repeats: int = 21,
          warmup: int = 3, progress=None) -> dict:
    """Validate, place and time every artifact ``artifacts/NAME`` on ``provider``; returns the
    report (``report["passed"]``: every target met). `ProviderError` when the provider cannot be
    created (ONNX Runtime would silently fall back to the CPU)."""
    import onnxruntime

    from export.exporter import default_specs

    if not hasattr(onnxruntime.InferenceSession, "get_provider_graph_assignment_info"):
        raise ProviderError(f"onnxruntime {onnxruntime.__version__} ({onnxruntime.__file__}) cannot say which "
                            "provider ran each node (get_provider_graph_assignment_info); use onnxruntime(-gpu) 1.31")
    specs = default_specs()
    floors = {kind: _floor_model(kind, specs[names[0]]) for kind in ("ReduceMax", "Mul")}
    probe = _open(floors["ReduceMax"], provider)  # fails here, before any work, when the provider cannot start
    report = {
        "report": REPORT_MARK,
        "provider": provider,
        "execution_provider": PROVIDERS[provider],
        "device": device(provider),
        "onnxruntime": {"version": onnxruntime.__version__, "module": onnxruntime.__file__,
                        "available_providers": onnxruntime.get_available_providers(),
                        "cuda_version": _build_info("cuda_version"), "cudnn_version": _build_info("cudnn_version")},
        "provider_options": probe.session.get_provider_options().get(PROVIDERS[provider], {}),
        "targets": {"relative_error": TARGETS, "nan_positions": "exactly the reference's",
                    "loss_nodes": f"all on {PROVIDERS[provider]}",
                    "per_sample_over_floor": {**SPEED_TARGETS, "judged": f"on cuda at {FULL_ROWS} rows only"}},
        "timing": {"rows": rows, "repeats": repeats, "warmup": warmup, "binding": "IOBinding, inputs on the device",
                   "statistic": "minimum over interleaved rounds (median beside)"},
        "artifacts": [],
        "versions": artifact.library_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    tf32 = report["provider_options"].get("use_tf32")
    for name in names:
        entry = check_artifact(artifacts / name, name, specs[name], provider=provider, rows=rows, repeats=repeats,
                               warmup=warmup, tf32=tf32)
        report["artifacts"].append(entry)
        if progress is not None:
            progress(_progress_line(entry))
    report["passed"] = all(entry["passed"] for entry in report["artifacts"])
    report["tensorflow_imported"] = sys.modules.get("tensorflow") is not None  # None: blocked, not imported
    return report


def check_artifact(directory: Path, name: str, expected_spec, *, provider: str, rows: int, repeats: int, warmup: int,
                   tf32) -> dict:
    """One artifact's entry of the report (see `check`)."""
    from export.runtime import RuntimeSession
    from export.validation import validate

    entry = {"name": name, "artifact": str(directory)}
    try:
        spec = artifact.loss_artifact(directory, onnx=True)
        entry.update(spec=spec.name, dtype=spec.dtype)
        target = TARGETS.get(spec.dtype)
        validation = validate(directory, provider=provider, reference_only=True, atol=target, rtol=target)
    except FocalgraphError as error:  # a damaged artifact fails its own entry; the others still run
        entry.update(passed=False, failed=["ran"], error=str(error))
        return entry
    entry["spec_is_the_default"] = spec == expected_spec
    entry["validation"] = {
        "passed": validation["passed"],
        "tolerance": validation["tolerance"],
        "cases": len(validation["cases"]),
        "realistic_case": next((case["shape"] for case in validation["cases"] if case["name"].startswith("realistic")), None),
        "outputs": [_verdict(verdict) for verdict in validation["outputs"]],
        "consistency": validation["consistency"]["passed"],
        "errors": validation["errors"],
        "nodes_per_provider": validation["onnxruntime"]["nodes_per_provider"],
    }
    try:
        session: RuntimeSession = _open(directory / artifact.ONNX, provider)
        entry["nan"] = nan_positions(directory, spec, session)
        entry["nodes"] = placement(directory / artifact.ONNX, session, PROVIDERS[provider])
        entry["timing"] = timing(spec, session, provider, rows=rows, repeats=repeats, warmup=warmup)
    except Exception as error:  # onnxruntime's errors (a kernel that fails, device memory): kept, the run goes on
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        entry.update(passed=False, failed=["ran"] + ([] if validation["passed"] else ["values"]),
                     error=f"{type(error).__name__}: {reason}")
        return entry
    checks = {
        "values": validation["passed"],
        "nan_positions": entry["nan"]["mismatched"] == 0 and not entry["nan"]["errors"],
        "placement": not entry["nodes"]["loss_nodes_elsewhere"]
        and entry["nodes"]["per_provider"] == validation["onnxruntime"]["nodes_per_provider"],
        "spec": entry["spec_is_the_default"],
    }
    if provider == "cuda":
        checks["tf32_off"] = tf32 == "0"
    limit = SPEED_TARGETS.get(name)
    if limit is not None and provider == "cuda" and rows == FULL_ROWS:
        checks["speed"] = entry["timing"]["ratio"] <= limit
    entry["checks"] = checks
    entry["failed"] = [key for key, value in checks.items() if not value]
    entry["passed"] = not entry["failed"]
    return entry


def _verdict(verdict: dict) -> dict:
    keys = ("output", "elements", "failures", "max_abs_error", "max_rel_error", "required_atol", "required_rtol",
            "passed", "problems")
    kept = {key: verdict[key] for key in keys}
    if not verdict["passed"]:
        kept["worst"] = verdict["worst"]
    return kept


def _open(model, provider: str):
    from export.runtime import open_session

    return open_session(model if isinstance(model, bytes) else str(model), provider)


def nan_positions(directory: Path, spec, session) -> dict:
    """The stored cases run on ``session``: NaN elements expected (the reference's), got, and
    positions where exactly one side is NaN, over every output the artifact stores."""
    from export import consistency

    cases, expected = consistency.stored_cases(directory)
    counts = {"expected": 0, "actual": 0, "mismatched": 0, "cases": len(cases), "errors": []}
    for case in cases:
        try:
            actual = session.run(case.inputs)
        except Exception as error:  # onnxruntime's own error types; counted as a failure of this check
            counts["errors"].append(f"{case.name}: {str(error).strip().splitlines()[0][:200]}")
            continue
        for form in artifact.forms(spec):
            if form not in expected[case.name] or form not in actual:
                continue
            want = np.isnan(np.asarray(expected[case.name][form], np.float64))
            got = np.isnan(np.asarray(actual[form], np.float64))
            counts["expected"] += int(want.sum())
            counts["actual"] += int(got.sum())
            counts["mismatched"] += int((want != got).sum()) if want.shape == got.shape else int(max(want.size, got.size))
    return counts


def placement(model_path: Path, session, provider_name: str) -> dict:
    """Which provider ran each node of ``session``'s (optimised) graph. Loss nodes: those of the
    ONNX file on a data path from a graph input that does not pass through Shape or Size, and
    nodes ONNX Runtime made itself (fusions) other than its Memcpy nodes."""
    import onnx

    model = onnx.load(str(model_path))
    original = {node.name for node in model.graph.node}
    reached = {value.name for value in model.graph.input}
    on_data_path = set()
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type in SHAPE_OPS:
            continue
        if any(name in reached for name in node.input if name):
            reached.update(node.output)
            on_data_path.add(node.name)
    nodes, per_provider = [], Counter()
    for subgraph in session.session.get_provider_graph_assignment_info():
        for node in subgraph.get_nodes():
            loss = node.name in on_data_path or (node.name not in original and not node.op_type.startswith("Memcpy"))
            nodes.append({"name": node.name, "op_type": node.op_type, "provider": subgraph.ep_name, "loss_node": loss})
            per_provider[subgraph.ep_name] += 1
    elsewhere = [f"{node['name']} ({node['op_type']}) on {node['provider']}" for node in nodes
                 if node["loss_node"] and node["provider"] != provider_name]
    return {"per_provider": dict(per_provider), "loss_nodes": sum(node["loss_node"] for node in nodes),
            "loss_nodes_elsewhere": elsewhere, "list": nodes}


# ---------------------------------------------------------------------------------------------
# Timing


def timed_shape(spec, rows: int) -> tuple[int, ...]:
    """The timed predictions' shape in the spec's layout: ``rows`` positions at the spec's C (1000
    where C is dynamic). Ranks above 2 keep the realistic case's inner sizes (N x 32 x 32 for
    NHWC; `export.cases.REALISTIC_POSITIONS`), N rounded up to hold ``rows`` positions."""
    from export.cases import REALISTIC_POSITIONS

    inner = REALISTIC_POSITIONS.get(spec.rank, (4, 16, 16, 16) + (1,) * (spec.rank - 5))[1:]
    per_sample = int(np.prod(inner, dtype=np.int64))
    positions = (-(-rows // per_sample),) + tuple(inner)
    classes = spec.num_classes or CLASSES
    return positions[:spec.class_axis] + (classes,) + positions[spec.class_axis:]


def timing_inputs(spec, shape, seed: int = 0) -> dict:
    """Random inputs of predictions ``shape`` (the spec's layout) as the loss takes them."""
    from export.cases import probabilities

    rng = np.random.default_rng(seed)
    axis = spec.class_axis % spec.rank
    last = shape[:axis] + shape[axis + 1:] + (shape[axis],)  # classes last
    dtype = np.dtype(spec.dtype)
    logits = rng.normal(size=last) * 3.0
    predictions = logits if spec.from_logits else probabilities(spec, logits)
    if spec.sparse:
        y_true = rng.integers(0, last[-1], size=last[:-1]).astype(np.int64)
    elif spec.multi_label:
        y_true = (rng.uniform(size=last) < 0.05).astype(dtype)
    else:
        y_true = np.eye(last[-1], dtype=dtype)[rng.integers(0, last[-1], size=last[:-1])]
    move = lambda array: np.ascontiguousarray(np.moveaxis(array, -1, axis))  # noqa: E731
    true_name, prediction_name = spec.input_names
    inputs = {true_name: y_true if spec.sparse else move(y_true), prediction_name: move(predictions.astype(dtype))}
    if spec.weighted:
        loss_shape = last if spec.loss_shape == "classes" else last[:-1]
        weights = rng.uniform(size=loss_shape).astype(dtype)
        inputs["weights"] = move(weights) if spec.loss_shape == "classes" else weights
    return inputs


def _floor_model(kind: str, spec, rank: int | None = None, dtype: str | None = None, axis: int | None = None) -> bytes:
    """A one-node floor: ``ReduceMax`` of ``predictions`` over the class axis, or ``Mul`` of two
    inputs of the predictions' shape. Every dimension dynamic, so one model serves every shape."""
    import onnx
    from onnx import helper

    rank = spec.rank if rank is None else rank
    axis = spec.class_axis % rank if axis is None else axis
    element = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype if dtype is None else dtype))
    dims = [f"d{index}" for index in range(rank)]
    if kind == "ReduceMax":
        inputs = [helper.make_tensor_value_info("predictions", element, dims)]
        node = helper.make_node("ReduceMax", ["predictions"], ["floor"], axes=[axis], keepdims=0)
        output = helper.make_tensor_value_info("floor", element, dims[:axis] + dims[axis + 1:])
    else:
        inputs = [helper.make_tensor_value_info(name, element, dims) for name in ("first", "second")]
        node = helper.make_node("Mul", ["first", "second"], ["floor"])
        output = helper.make_tensor_value_info("floor", element, dims)
    graph = helper.make_graph([node], f"floor-{kind}", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", FLOOR_OPSET)], ir_version=FLOOR_IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _bound_runner(session, feed: dict, outputs, provider: str):
    """A call that runs ``session`` (an InferenceSession) through IOBinding: the inputs copied to
    the device once, here; the outputs left there (ONNX Runtime allocates them on the device)."""
    import onnxruntime

    device = DEVICES[provider]
    binding = session.io_binding()
    values = {name: onnxruntime.OrtValue.ortvalue_from_numpy(array, device, 0) for name, array in feed.items()}
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    for name in outputs:
        binding.bind_output(name, device)

    def run():
        session.run_with_iobinding(binding)  # returns once the device is done (ORT synchronises the stream)
        return values  # kept alive with the binding

    return run, binding


def timing(spec, session, provider: str, *, rows: int, repeats: int, warmup: int) -> dict:
    """``per_sample`` of ``session`` and the two floors at `timed_shape`, interleaved; minima."""
    shape = timed_shape(spec, rows)
    inputs = timing_inputs(spec, shape)
    predictions = inputs[spec.input_names[1]]
    floors = {kind: _open(_floor_model(kind, spec), provider).session for kind in ("ReduceMax", "Mul")}
    # the Mul floor reads two full-size inputs: the dense targets where the loss has them
    second = inputs[spec.input_names[0]] if not spec.sparse else predictions
    runners = {
        "per_sample": _bound_runner(session.session, inputs, ["per_sample"], provider),
        "floor:ReduceMax": _bound_runner(floors["ReduceMax"], {"predictions": predictions}, ["floor"], provider),
        "floor:Mul": _bound_runner(floors["Mul"], {"first": predictions, "second": second}, ["floor"], provider),
    }
    for run, _ in runners.values():
        for _ in range(warmup):
            run()
    seconds = {name: [] for name in runners}
    for _ in range(repeats):
        for name, (run, _) in runners.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    per_sample = runners["per_sample"][1].copy_outputs_to_cpu()[0]
    minimum = {name: min(values) for name, values in seconds.items()}
    floor = "floor:Mul" if spec.multi_label else "floor:ReduceMax"
    return {
        "shape": list(shape),
        "elements": int(np.prod(shape, dtype=np.int64)),
        "seconds": minimum,
        "median_seconds": {name: statistics.median(values) for name, values in seconds.items()},
        "floor": floor,
        "ratio": minimum["per_sample"] / minimum[floor],
        "ratios": {f"per_sample / {name}": minimum["per_sample"] / minimum[name] for name in minimum if name != "per_sample"},
        "per_sample_shape": list(per_sample.shape),
        "per_sample_finite": bool(np.isfinite(per_sample).all()),
    }


# ---------------------------------------------------------------------------------------------
# Where it ran, and the report


def device(provider: str) -> dict:
    """The GPU (name, driver, memory: nvidia-smi, where it is) or the processor."""
    info = {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count(),
            "processor": _cpu_name(), "python": sys.version.split()[0]}
    if hasattr(os, "getloadavg"):
        info["load"] = " ".join(f"{value:.2f}" for value in os.getloadavg())  # a shared machine: say how busy
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            result = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20)
            rows = [line.split(", ") for line in result.stdout.strip().splitlines() if line.strip()]
            info["gpus"] = [dict(zip(("name", "driver", "memory"), row)) for row in rows]
        except (OSError, subprocess.SubprocessError) as error:
            info["gpus"] = f"nvidia-smi failed: {type(error).__name__}"
    info["name"] = (info["gpus"][0]["name"] if provider == "cuda" and isinstance(info.get("gpus"), list) and info["gpus"]
                    else info["processor"])
    info["driver"] = (info["gpus"][0].get("driver") if provider == "cuda" and isinstance(info.get("gpus"), list)
                      and info["gpus"] else None)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _build_info(name: str):
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return None
    return getattr(build_and_package_info, name, None)


def _progress_line(entry: dict) -> str:
    if "timing" not in entry:
        return f"{entry['name']}: FAIL ({entry.get('error', '')})"
    timing = entry["timing"]
    return (f"{entry['name']}: {'PASS' if entry['passed'] else 'FAIL (' + ', '.join(entry['failed']) + ')'}; "
            f"per_sample {timing['seconds']['per_sample'] * 1e3:.3f} ms, {timing['ratio']:.2f}x {timing['floor']}")


def markdown(report: dict) -> str:
    device_info = report["device"]
    lines = [
        f"<!-- {REPORT_MARK}: written by scripts/gpu_check.py (make gpu-check); do not edit -->",
        f"# GPU check: {report['execution_provider']}",
        "",
        f"- device: {device_info['name']}" + (f", driver {device_info['driver']}" if device_info.get("driver") else ""),
        f"- ONNX Runtime {report['onnxruntime']['version']} ({report['onnxruntime']['module']}); "
        f"CUDA {report['onnxruntime']['cuda_version'] or '-'}, cuDNN {report['onnxruntime']['cudnn_version'] or '-'}",
        f"- provider options: {', '.join(f'{k}={v}' for k, v in sorted(report['provider_options'].items())) or '-'}",
        f"- timing: {report['timing']['binding']}; {report['timing']['statistic']}, {report['timing']['repeats']} rounds "
        f"after {report['timing']['warmup']} warm-up calls, {report['timing']['rows']} positions per batch",
        f"- targets: relative error {', '.join(f'{k} {v:g}' for k, v in TARGETS.items())} (atol the same); NaN exactly "
        f"where the reference has NaN; loss nodes on {report['execution_provider']}; per_sample within "
        f"{', '.join(f'{v:g}x its floor ({k})' for k, v in SPEED_TARGETS.items())} ({report['targets']['per_sample_over_floor']['judged']})",
        f"- created {report['created']}; verdict: **{'PASS' if report['passed'] else 'FAIL'}**",
        "",
        "| artifact | max abs error | max rel error | NaN expected / got / mismatched | nodes per provider | loss nodes elsewhere "
        "| per_sample ms | floor ms | ratio | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in report["artifacts"]:
        if "timing" not in entry:
            lines.append(f"| {entry['name']} | - | - | - | - | - | - | - | - | FAIL: {entry.get('error', '')} |")
            continue
        outputs, timing, nan = entry["validation"]["outputs"], entry["timing"], entry["nan"]
        nodes = ", ".join(f"{provider.replace('ExecutionProvider', '')} {count}"
                          for provider, count in entry["nodes"]["per_provider"].items())
        verdict = "PASS" if entry["passed"] else "FAIL: " + ", ".join(entry["failed"])
        lines.append(
            f"| {entry['name']} | {max(_float(o['max_abs_error']) for o in outputs):.2e} "
            f"| {max(_float(o['max_rel_error']) for o in outputs):.2e} | {nan['expected']} / {nan['actual']} / {nan['mismatched']} "
            f"| {nodes} | {len(entry['nodes']['loss_nodes_elsewhere'])} of {entry['nodes']['loss_nodes']} "
            f"| {timing['seconds']['per_sample'] * 1e3:.3f} | {timing['seconds'][timing['floor']] * 1e3:.3f} "
            f"({timing['floor'].split(':')[1]}) | {timing['ratio']:.2f} | {verdict} |")
    lines += ["", "Shapes timed: " + "; ".join(f"{e['name']} {'x'.join(map(str, e['timing']['shape']))}"
                                               for e in report["artifacts"] if "timing" in e) + "."]
    elsewhere = [f"- {entry['name']}: {node}" for entry in report["artifacts"] if "nodes" in entry
                 for node in entry["nodes"]["loss_nodes_elsewhere"]]
    if elsewhere:
        lines += ["", "Loss nodes that did not run on the chosen provider:", *elsewhere]
    return "\n".join(lines) + "\n"


def _float(value) -> float:
    return float(value)  # the validation report writes inf and NaN as strings: float() reads both


def write(report: dict, out: Path | None, *, force: bool = False) -> Path:
    """``out/gpu.json`` and ``out/gpu.md``, both or neither; ``out`` None: a new temporary
    folder. An earlier report there is replaced only with ``force``. Returns the folder."""
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="focalgraph-gpu-check-"))
    elif not out.is_dir():
        out.mkdir()
    with writing.StagedFiles(force=force) as files:
        files.write("--out", out / "gpu.json", artifact.json_bytes(report))
        files.write("--out", out / "gpu.md", markdown(report).encode())
    return out


if __name__ == "__main__":
    sys.exit(main())
