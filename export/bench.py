"""``bench``: how fast an artifact's loss runs, next to Keras's focal losses and a read-once floor.

Everything is timed in one process, interleaved (one call of each runner per round, so a noisy
neighbour slows all of them alike), after warm-up. Each figure is the minimum over the rounds,
with the median beside it: on the shared 2-core machine medians moved by +-20% between runs and
minima by under 5% (issue 14). Per artifact and predictions shape (N, ..., C), in the artifact's
dtype (float32 or float16), every runner is one call on the whole batch:

- ``tensorflow:FORM``: the artifact's SavedModel, the signature of each output form;
- ``onnxruntime:FORM``: the artifact's ``model.onnx``, one ``session.run`` asking for that
  output only (ONNX Runtime then runs only the nodes it needs);
- ``keras:tensorflow``: Keras's ``CategoricalFocalCrossentropy`` (one-hot targets) or
  ``BinaryFocalCrossentropy`` on the same data, unreduced, in TensorFlow;
- ``keras:onnxruntime``: that Keras loss converted by tf2onnx and run in ONNX Runtime, the peer a
  user would export instead (absent, with the reason, where tf2onnx cannot convert it:
  ``BinaryFocalCrossentropy`` from logits emits Log1p);
- ``floor:tensorflow``, ``floor:onnxruntime``: one read pass over the predictions, a reduce-max
  over the classes; for losses that are element-wise over the classes (sigmoid ones), one
  element-wise op that reads both inputs and writes one output (a multiply).

Also per artifact: the ONNX node count and op histogram and the export time; and the cold
start-up of ``focalgraph --help`` and of ``focalgraph eval``.

No test asserts a time: these machines are shared, and only ratios measured side by side mean
anything. Ratios (of minima, and of medians): each ONNX Runtime form over its floor,
``tensorflow:per_sample`` over its floor, Keras over ours per backend, and TensorFlow over ONNX
Runtime.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from export import artifact, writing
from export.cases import probabilities
from export.errors import UsageError
from export.quiet import import_tensorflow, silenced_stderr
from focal_graph.spec import FocalSpec

DEFAULT_ARTIFACTS = ("artifacts/variant-sparse-softmax", "artifacts/variant-sigmoid")
# N x C from 1e5 to 1.6e7 elements; the last is the target size
DEFAULT_SIZES = ((100, 1000), (400, 1000), (1600, 1000), (4096, 1000), (16384, 1000))
TARGET_SIZE = (16384, 1000)
DTYPES = ("float32", "float16")  # bfloat16 does not survive tf2onnx 1.17 (mapped to float16, the model fails to load)
PEER = "per_sample"  # the form eval uses, and the one Keras's unreduced loss is compared with


def bench(artifacts=DEFAULT_ARTIFACTS, *, provider: str = "cpu", sizes=DEFAULT_SIZES, repeats: int = 21,
          warmup: int = 3, json_path=None, startup: bool = True, export_time: bool = True, progress=None,
          eval_rows: int = 0, force: bool = False) -> dict:
    """Benchmark each artifact at each size; returns the results (and writes ``json_path``, with
    a Markdown table and a PNG plot beside it, when given).

    ``sizes``: predictions shapes (``"16384x1000,64x32x32x100"`` or tuples); each artifact takes
    those of its rank, and the default sizes (reshaped to its rank, see `default_sizes`) when
    ``sizes`` is not given. ``export_time``: also time a full export of each spec (seconds each);
    ``startup``: also time cold start-ups (`startup_times`); ``eval_rows``: also time ``focalgraph
    eval`` of that many rows of a sparse .npy against one read of it (`eval_times`; 0: not);
    ``force``: replace the three files of ``json_path`` where they exist (docs/outputs.md)."""
    from export.cases import parse_shapes
    from export.runtime import open_session

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UsageError(f"--repeats: expected an integer >= 1, got {repeats!r}")
    if isinstance(eval_rows, bool) or not isinstance(eval_rows, int) or eval_rows < 0:
        raise UsageError(f"--eval-rows: expected an integer >= 0, got {eval_rows!r}")
    if warmup < 0:
        raise UsageError(f"warmup: expected an integer >= 0, got {warmup!r}")
    if json_path is not None:
        json_path = Path(json_path)
        if json_path.suffix != ".json":
            raise UsageError(f"--json: {json_path}: name a .json file (the .md and .png are written beside it)")
        writing.check_outputs(written(json_path), {"ARTIFACTS": list(artifacts)}, force=force)
    given = None if sizes is None or sizes is DEFAULT_SIZES else _shapes(sizes)
    plans = {}
    for directory in artifacts:
        directory = Path(directory)
        spec = artifact.loss_artifact(directory)
        if spec.dtype not in DTYPES:
            raise UsageError(f"{directory}: bench times {' and '.join(DTYPES)} losses; this artifact is {spec.dtype}")
        if not (directory / artifact.SAVED_MODEL).is_dir() or not (directory / artifact.ONNX).is_file():
            raise UsageError(f"{directory}: bench needs both the SavedModel and model.onnx")
        if given is None:
            shapes = default_sizes(spec)
        else:
            shapes = [shape for shape in given if len(shape) == spec.rank]
            if not shapes:
                raise UsageError(f"--sizes: no shape of rank {spec.rank}, which {directory} takes "
                                 f"({', '.join('x'.join(map(str, shape)) for shape in given)} given)")
        plans[directory] = (spec, parse_shapes(spec, shapes, "--sizes"))
    results = {"machine": _machine(), "provider": provider, "repeats": repeats, "warmup": warmup,
               "statistic": "minimum over interleaved rounds (medians beside)", "artifacts": []}
    for directory, (spec, shapes) in plans.items():
        entry = {"artifact": str(directory), "spec": spec.name, "dtype": spec.dtype,
                 "onnx": _onnx_summary(directory / artifact.ONNX),
                 "export_seconds": _export_seconds(spec) if export_time else None, "sizes": []}
        session = open_session(str(directory / artifact.ONNX), provider)
        entry["onnxruntime"] = session.describe()
        keras_loss = _keras_loss(spec)
        keras_session, entry["keras_onnxruntime"] = _keras_session(keras_loss, spec)
        for shape in shapes:
            row = _bench_size(directory, spec, session, shape, keras_loss, keras_session, repeats=repeats, warmup=warmup)
            entry["sizes"].append(row)
            if progress is not None:
                progress(entry, row)
        results["artifacts"].append(entry)
    if startup:
        results["startup"] = startup_times()
    if eval_rows:
        results["eval"] = eval_times(eval_rows, repeats=max(1, min(repeats, 5)))
    if json_path is not None:
        write(results, Path(json_path), force=force)
    return results


def default_sizes(spec: FocalSpec) -> list[tuple[int, ...]]:
    """`DEFAULT_SIZES` at the spec's rank: (N, C) becomes (N / 8**(rank - 2), 8, ..., 8, C), the
    same number of elements where N allows; C is the spec's where it fixes one."""
    inner = spec.rank - 2
    shapes = []
    for n, c in DEFAULT_SIZES:
        shape = (max(1, n // 8 ** inner),) + (8,) * inner + (spec.num_classes or c,)
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def _shapes(sizes) -> list[tuple[int, ...]]:
    if not isinstance(sizes, str):
        return [tuple(shape) for shape in sizes]
    try:
        return [tuple(int(size) for size in item.strip().lower().split("x")) for item in sizes.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f"--sizes: expected shapes like 100x1000,16x8x8x1000 (sizes joined by x), got {sizes!r}") from None


def _bench_size(directory: Path, spec: FocalSpec, session, shape, keras_loss, keras_session, *, repeats: int,
                warmup: int) -> dict:
    tf = import_tensorflow()
    shape = tuple(shape)
    c = shape[-1]
    dtype = np.dtype(spec.dtype)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=shape) * 3
    predictions = (logits if spec.from_logits else probabilities(spec, logits)).astype(dtype)
    if spec.sparse:
        y_true = rng.integers(0, c, size=shape[:-1]).astype(np.int64)
        keras_true = np.eye(c, dtype=dtype)[y_true]
    elif spec.multi_label:
        y_true = (rng.uniform(size=shape) < 0.05).astype(dtype)
        keras_true = y_true
    else:
        y_true = np.eye(c, dtype=dtype)[rng.integers(0, c, size=shape[:-1])]
        keras_true = y_true
    true_name, prediction_name = spec.input_names
    feed = {true_name: y_true, prediction_name: predictions}
    with silenced_stderr():
        loaded = tf.saved_model.load(str(directory / artifact.SAVED_MODEL))
    tf_true, tf_predictions, tf_keras_true = tf.constant(y_true), tf.constant(predictions), tf.constant(keras_true)
    element_wise = spec.multi_label
    from export.tensorflow_reference import SIGNATURES

    signature_of = {form: name for name, form in SIGNATURES.items()}
    runners = {}
    for form in session.output_names:
        signature = loaded.signatures[signature_of[form]]
        runners[f"tensorflow:{form}"] = (
            lambda signature=signature, form=form: signature(**{true_name: tf_true, prediction_name: tf_predictions})[form].numpy())
        runners[f"onnxruntime:{form}"] = lambda form=form: session.session.run([form], feed)[0]
    keras_tf = tf.function(keras_loss, autograph=False)
    runners["keras:tensorflow"] = lambda: keras_tf(tf_keras_true, tf_predictions).numpy()
    if keras_session is not None:
        keras_feed = {"targets": keras_true, "predictions": predictions}
        runners["keras:onnxruntime"] = lambda: keras_session.run(None, keras_feed)[0]
    floor_tf = tf.function((lambda y, x: y * x) if element_wise else (lambda y, x: tf.reduce_max(x, axis=-1)), autograph=False)
    floor_session = _floor_session(element_wise, len(shape), dtype)
    floor_feed = {"y_true": y_true, "predictions": predictions} if element_wise else {"predictions": predictions}
    runners["floor:tensorflow"] = lambda: floor_tf(tf_true if element_wise else tf_predictions, tf_predictions).numpy()
    runners["floor:onnxruntime"] = lambda: floor_session.run(None, floor_feed)[0]
    times = _interleaved(runners, repeats=repeats, warmup=warmup)
    minimum = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    elements = int(np.prod(shape))
    return {
        "shape": list(shape), "elements": elements,
        "seconds": minimum, "median_seconds": median,
        "elements_per_second": {name: elements / value for name, value in minimum.items()},
        "ratios": _ratios(minimum, session.output_names),
        "median_ratios": _ratios(median, session.output_names),
        "floor": "element-wise multiply" if element_wise else "reduce-max over classes",
    }


def _ratios(seconds: dict, forms) -> dict:
    ratio = lambda a, b: seconds[a] / seconds[b] if a in seconds and b in seconds else None  # noqa: E731
    ratios = {f"onnxruntime:{form} / floor": ratio(f"onnxruntime:{form}", "floor:onnxruntime") for form in forms}
    ratios["tensorflow:per_sample / floor"] = ratio(f"tensorflow:{PEER}", "floor:tensorflow")
    ratios["keras:tensorflow / tensorflow:per_sample"] = ratio("keras:tensorflow", f"tensorflow:{PEER}")
    ratios["keras:onnxruntime / onnxruntime:per_sample"] = ratio("keras:onnxruntime", f"onnxruntime:{PEER}")
    ratios["tensorflow:per_sample / onnxruntime:per_sample"] = ratio(f"tensorflow:{PEER}", f"onnxruntime:{PEER}")
    return ratios


def _interleaved(runners: dict, *, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Every runner's wall times, one call of each per round."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def _keras_loss(spec: FocalSpec):
    """Keras's own focal loss with the spec's gamma (and alpha where Keras has one), unreduced."""
    import keras

    gamma = spec.gamma if isinstance(spec.gamma, float) else float(np.mean(spec.gamma))
    if spec.multi_label:
        alpha = spec.alpha if isinstance(spec.alpha, float) else None
        loss = keras.losses.BinaryFocalCrossentropy(
            apply_class_balancing=alpha is not None, alpha=alpha if alpha is not None else 0.25, gamma=gamma,
            from_logits=spec.from_logits, reduction=None)
    else:
        alpha = spec.alpha if isinstance(spec.alpha, float) else 1.0
        loss = keras.losses.CategoricalFocalCrossentropy(alpha=alpha, gamma=gamma, from_logits=spec.from_logits,
                                                         reduction=None)
    return lambda y_true, y_pred: loss(y_true, y_pred)


def _keras_session(keras_loss, spec: FocalSpec):
    """``(session, note)``: ``keras_loss`` converted by tf2onnx (opset 17, the spec's rank and
    dtype, every dimension dynamic) and opened in ONNX Runtime on the CPU, or ``(None, why not)``."""
    import onnx
    import onnxruntime

    from export.quiet import import_tf2onnx

    tf = import_tensorflow()
    tf2onnx = import_tf2onnx()
    dims, dtype = [None] * spec.rank, tf.as_dtype(spec.dtype)
    signature = [tf.TensorSpec(dims, dtype, name="targets"), tf.TensorSpec(dims, dtype, name="predictions")]
    function = tf.function(keras_loss, input_signature=signature, autograph=False)
    try:
        with silenced_stderr():
            model, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=17)
    except Exception as error:  # tf2onnx raises many types
        return None, f"tf2onnx failed: {type(error).__name__}"
    unknown = sorted({node.op_type for node in model.graph.node if not onnx.defs.has(node.op_type, node.domain or "")})
    if unknown:
        return None, f"tf2onnx left {', '.join(unknown)} unconverted: the model does not load"
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as error:  # InvalidGraph, NotImplemented, ...
        return None, f"ONNX Runtime cannot load it: {type(error).__name__}"
    return session, f"converted by tf2onnx: {len(model.graph.node)} nodes"


def _floor_session(element_wise: bool, rank: int = 2, dtype=np.float32):
    """The floor in ONNX Runtime: ReduceMax over C, or Mul of the two (N, ..., C) inputs."""
    import onnx
    import onnxruntime
    from onnx import helper

    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    dims = [f"d{axis}" for axis in range(rank)]
    inputs = [helper.make_tensor_value_info("predictions", element, dims)]
    if element_wise:
        inputs.insert(0, helper.make_tensor_value_info("y_true", element, dims))
        node = helper.make_node("Mul", ["y_true", "predictions"], ["floor"])
    else:
        node = helper.make_node("ReduceMax", ["predictions"], ["floor"], axes=[-1], keepdims=0)
    output_dims = dims if element_wise else dims[:-1]
    graph = helper.make_graph([node], "floor", inputs, [helper.make_tensor_value_info("floor", element, output_dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _onnx_summary(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))
    histogram = Counter(node.op_type for node in model.graph.node)
    return {"nodes": len(model.graph.node), "ops": dict(sorted(histogram.items(), key=lambda item: (-item[1], item[0])))}


def _export_seconds(spec: FocalSpec) -> float:
    """Wall time of a full export (SavedModel, ONNX, checks, validation) of the spec, warm process."""
    from export.exporter import export

    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        export(Path(scratch) / "artifact", spec=spec, provider="cpu")
        return time.perf_counter() - start


def startup_times(repeats: int = 3) -> dict:
    """Cold-process wall times (median of ``repeats``) of ``focalgraph --help``, and of the two
    TensorFlow-free commands on the first default artifact: ``eval`` of a 4-row batch and
    ``validate --reference-only``."""
    command = _focalgraph_command()
    reference = Path(DEFAULT_ARTIFACTS[0])
    with tempfile.TemporaryDirectory() as scratch:
        commands = {"focalgraph --help": ["--help"]}
        if reference.is_dir():
            rng = np.random.default_rng(0)
            np.save(Path(scratch) / "logits.npy", rng.normal(size=(4, 1000)).astype(np.float32))
            np.save(Path(scratch) / "labels.npy", rng.integers(0, 1000, 4))
            commands["focalgraph eval (4 rows)"] = [
                "eval", str(reference), "--predictions", str(Path(scratch) / "logits.npy"),
                "--labels", str(Path(scratch) / "labels.npy"), "--provider", "cpu"]
            commands["focalgraph validate --reference-only"] = ["validate", str(reference), "--reference-only",
                                                                "--provider", "cpu"]
        times = {}
        for name, args in commands.items():
            walls = []
            for _ in range(repeats):
                start = time.perf_counter()
                subprocess.run([*command, *args], capture_output=True, check=True)
                walls.append(time.perf_counter() - start)
            times[name] = statistics.median(walls)
    return times


# A fresh process that reads the predictions once (memory-mapped, a max over each 4 MiB window):
# the floor of `eval_times`, Python's and numpy's start-up included, as in eval.
_READ_ONCE = """
import sys
import numpy as np
predictions = np.load(sys.argv[1], mmap_mode="r")
step = max(1, (4 << 20) // max(1, predictions[0].nbytes))
for start in range(0, len(predictions), step):
    predictions[start:start + step].max()
"""


def eval_times(rows: int, classes: int = 1000, repeats: int = 5, artifact_path=None) -> dict:
    """``focalgraph eval`` of ``rows`` x ``classes`` float32 logits in a .npy (1 GiB at the default
    262144 x 1000) and int64 labels, with ``--out`` and ``--summary``, on the CPU, against a
    fresh process reading the .npy once (`_READ_ONCE`): cold processes, interleaved, one of each
    per round; minima and medians in seconds and their ratio. The files are written to a
    temporary directory first (and are then in the page cache, as for both runners)."""
    command = _focalgraph_command()
    reference = Path(artifact_path or DEFAULT_ARTIFACTS[0])
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        logits = np.lib.format.open_memmap(scratch / "logits.npy", mode="w+", dtype=np.float32, shape=(rows, classes))
        for start in range(0, rows, 16384):
            stop = min(rows, start + 16384)
            logits[start:stop] = rng.standard_normal((stop - start, classes), dtype=np.float32) * 3
        logits.flush()
        del logits
        np.save(scratch / "labels.npy", rng.integers(0, classes, rows))
        runners = {
            "read once": [sys.executable, "-c", _READ_ONCE, str(scratch / "logits.npy")],
            "focalgraph eval": [*command, "eval", str(reference), "--predictions", str(scratch / "logits.npy"),
                                "--labels", str(scratch / "labels.npy"), "--out", str(scratch / "losses.npy"),
                                "--summary", str(scratch / "summary.json"), "--provider", "cpu"],
        }
        walls = {name: [] for name in runners}
        for _ in range(repeats):
            for name, args in runners.items():
                for output in ("losses.npy", "summary.json"):
                    (scratch / output).unlink(missing_ok=True)
                start = time.perf_counter()
                subprocess.run(args, capture_output=True, check=True)
                walls[name].append(time.perf_counter() - start)
    minimum = {name: min(values) for name, values in walls.items()}
    median = {name: statistics.median(values) for name, values in walls.items()}
    return {"artifact": str(reference), "shape": [rows, classes], "bytes": rows * classes * 4, "repeats": repeats,
            "seconds": minimum, "median_seconds": median,
            "ratio": minimum["focalgraph eval"] / minimum["read once"],
            "median_ratio": median["focalgraph eval"] / median["read once"]}


def _focalgraph_command() -> list[str]:
    """How to start the focalgraph command line in a fresh process: this environment's script, or
    ``python -m export.cli``."""
    script = Path(sys.executable).parent / "focalgraph"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "export.cli"]


def _machine() -> dict:
    import onnxruntime

    tf = import_tensorflow()
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0], "tensorflow": tf.__version__,
            "onnxruntime": onnxruntime.__version__, "platform": sys.platform,
            "load": " ".join(f"{value:.2f}" for value in os.getloadavg())}  # the machine is shared: say how busy


def written(json_path: Path) -> dict:
    """What ``--json`` writes: the JSON, and beside it the Markdown table and the plot."""
    return {"--json": json_path, "--json (its table)": json_path.with_suffix(".md"),
            "--json (its plot)": json_path.with_suffix(".png")}


def write(results: dict, json_path: Path, *, force: bool = False) -> None:
    """``json_path``, and beside it the Markdown table (``.md``) and the plot (``.png``), all
    three or none; existing ones only with ``force``."""
    outputs = writing.check_outputs(written(json_path), force=force)
    image = io.BytesIO()
    plot(results, image)
    with writing.StagedFiles(force=force) as files:
        files.write("--json", outputs["--json"], artifact.json_bytes(results))
        files.write("--json", outputs["--json (its table)"], markdown(results).encode())
        files.write("--json", outputs["--json (its plot)"], image.getvalue())


def _cell(row: dict, name: str) -> str:
    if name not in row["seconds"]:
        return "-"
    return f"{row['seconds'][name] * 1e3:.2f} ({row['median_seconds'][name] * 1e3:.2f})"


def _ratio_cell(row: dict, name: str) -> str:
    value, median = row["ratios"].get(name), row["median_ratios"].get(name)
    return "-" if value is None else f"{value:.2f} ({median:.2f})"


def markdown(results: dict) -> str:
    lines = [
        "# focalgraph bench",
        "",
        f"{results['machine']['cpus']} CPUs; TensorFlow {results['machine']['tensorflow']}, ONNX Runtime "
        f"{results['machine']['onnxruntime']}; {results['repeats']} interleaved rounds after {results['warmup']} "
        f"warm-up calls; load average {results['machine'].get('load', '?')} before the run. Every figure is the "
        "minimum over the rounds, the median in brackets. Times in ms; one call on the whole batch.",
        "",
    ]
    for entry in results["artifacts"]:
        floor = entry["sizes"][0]["floor"] if entry["sizes"] else ""
        forms = [name.split(":", 1)[1] for name in entry["sizes"][0]["seconds"] if name.startswith("onnxruntime:")] \
            if entry["sizes"] else []
        lines += [
            f"## {entry['artifact']} ({entry['spec']}, {entry.get('dtype', 'float32')})",
            "",
            f"ONNX: {entry['onnx']['nodes']} nodes ({', '.join(f'{op} {n}' for op, n in entry['onnx']['ops'].items())}); "
            + (f"export took {entry['export_seconds']:.1f} s; " if entry["export_seconds"] is not None else "")
            + f"floor: {floor}; ONNX Runtime ran on {entry['onnxruntime']['provider']}; "
            f"Keras in ONNX Runtime: {entry['keras_onnxruntime']}.",
        ]
        # one table per backend; TensorFlow's adds its ratio to ONNX Runtime
        for backend, title, extra in (
            ("onnxruntime", "ONNX Runtime:", {}),
            ("tensorflow", "TensorFlow (the SavedModel's signatures):",
             {"TF / ORT (per_sample)": f"tensorflow:{PEER} / onnxruntime:{PEER}"}),
        ):
            headers = [*forms, "Keras", "floor", f"{PEER} / floor", f"Keras / {PEER}", *extra]
            lines += ["", title, "", "| shape | " + " | ".join(headers) + " |",
                      "| --- | " + " | ".join("---:" for _ in headers) + " |"]
            for row in entry["sizes"]:
                cells = [_cell(row, f"{backend}:{form}") for form in forms]
                cells += [_cell(row, f"keras:{backend}"), _cell(row, f"floor:{backend}"),
                          _ratio_cell(row, f"{backend}:{PEER} / floor"),
                          _ratio_cell(row, f"keras:{backend} / {backend}:{PEER}")]
                cells += [_ratio_cell(row, ratio) for ratio in extra.values()]
                lines.append(f"| {'x'.join(map(str, row['shape']))} | " + " | ".join(cells) + " |")
        lines.append("")
    if "startup" in results:
        lines += ["## Start-up (cold process, median of 3)", ""]
        lines += [f"- `{name}`: {seconds:.2f} s" for name, seconds in results["startup"].items()]
        lines.append("")
    if "eval" in results:
        timed = results["eval"]
        seconds, median = timed["seconds"], timed["median_seconds"]
        lines += [f"## `focalgraph eval` against one read ({'x'.join(map(str, timed['shape']))} float32 .npy, "
                  f"{timed['bytes'] / 2**30:.2f} GiB; cold processes, minimum of {timed['repeats']}, median in brackets)", ""]
        lines += [f"- {name}: {seconds[name]:.2f} s ({median[name]:.2f} s)" for name in seconds]
        lines += [f"- eval / read once: {timed['ratio']:.2f} ({timed['median_ratio']:.2f})", ""]
    return "\n".join(lines)


def plot(results: dict, path) -> None:
    """Minimum time against the number of elements per runner (the ``per_sample`` form for
    ours), one panel per artifact (log-log), as PNG to ``path`` (a path or a binary file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(results["artifacts"])
    figure, axes = plt.subplots(1, count, figsize=(6 * count, 4.5), squeeze=False)
    names = (f"tensorflow:{PEER}", f"onnxruntime:{PEER}", "keras:tensorflow", "keras:onnxruntime", "floor:tensorflow",
             "floor:onnxruntime")
    for axis, entry in zip(axes[0], results["artifacts"]):
        for name in names:
            rows = [row for row in entry["sizes"] if name in row["seconds"]]
            if rows:
                style = "--" if name.startswith("floor") else "-"
                axis.plot([row["elements"] for row in rows], [row["seconds"][name] * 1e3 for row in rows], style,
                          marker="o", label=name)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(f"elements ({entry.get('dtype', 'float32')})")
        axis.set_ylabel("minimum time (ms)")
        axis.set_title(f"{Path(entry['artifact']).name} ({entry['spec']})")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)


def format_results(results: dict) -> str:
    """What the command line prints: the Markdown table."""
    return markdown(results)


def load(path) -> dict:
    return json.loads(Path(path).read_text())
