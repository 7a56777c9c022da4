"""``bench``: how fast an artifact's loss runs, next to Keras's focal losses and a read-once floor.

Everything is timed in one process, interleaved (one call of each runner per round, so a noisy
neighbour slows all of them alike), after warm-up; each figure is the median over the rounds.
Per artifact and size N x C (float32):

- ``tensorflow``: the artifact's SavedModel, ``serving_default`` (the unreduced loss);
- ``onnxruntime``: the artifact's ``model.onnx``, asked for ``loss`` only;
- ``keras``: Keras's ``CategoricalFocalCrossentropy`` (one-hot targets) or
  ``BinaryFocalCrossentropy`` on the same data, in TensorFlow;
- ``floor_tensorflow``, ``floor_onnxruntime``: one read pass over the predictions, a reduce-max
  over the classes; for losses that are element-wise over the classes (sigmoid ones), one
  element-wise op that reads both inputs and writes one output (a multiply).

Also per artifact: the ONNX node count and op histogram and the export time; and the cold
start-up of ``focalgraph --help`` and of ``focalgraph eval``.

No test asserts a time: these machines are shared, and only ratios measured side by side mean
anything. Ratios: ``ours / floor`` per backend, ``keras / ours`` and ``tensorflow / onnxruntime``.
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


def bench(artifacts=DEFAULT_ARTIFACTS, *, provider: str = "cpu", sizes=DEFAULT_SIZES, repeats: int = 15,
          warmup: int = 3, json_path=None, startup: bool = True, progress=None) -> dict:
    """Benchmark each artifact at each size; returns the results (and writes ``json_path``, with
    a Markdown table and a PNG plot beside it, when given)."""
    from export.cases import parse_shapes
    from export.runtime import open_session

    if repeats < 1 or warmup < 0:
        raise UsageError(f"--repeats: expected at least 1, got {repeats}")
    if json_path is not None:
        json_path = Path(json_path)
        if json_path.suffix != ".json":
            raise UsageError(f"--json: {json_path}: name a .json file (the .md and .png are written beside it)")
        writing.check_outputs(written(json_path), {"ARTIFACTS": list(artifacts)})
    specs = {}
    for directory in artifacts:
        directory = Path(directory)
        spec = artifact.loss_artifact(directory)
        if spec.dtype != "float32":
            raise UsageError(f"{directory}: bench compares float32 losses; this artifact is {spec.dtype}")
        if spec.rank != 2:
            raise UsageError(f"{directory}: bench takes (N, C) artifacts; this one has rank {spec.rank}")
        if not (directory / artifact.SAVED_MODEL).is_dir() or not (directory / artifact.ONNX).is_file():
            raise UsageError(f"{directory}: bench needs both the SavedModel and model.onnx")
        specs[directory] = spec
    sizes = [tuple(size) for size in (parse_shapes(FocalSpec(variant="softmax"), sizes, "--sizes") if isinstance(sizes, str) else sizes)]
    results = {"machine": _machine(), "provider": provider, "repeats": repeats, "warmup": warmup, "artifacts": []}
    for directory, spec in specs.items():
        entry = {"artifact": str(directory), "spec": spec.name, "onnx": _onnx_summary(directory / artifact.ONNX),
                 "export_seconds": _export_seconds(spec), "sizes": []}
        session = open_session(str(directory / artifact.ONNX), provider)
        entry["onnxruntime"] = session.describe()
        for size in sizes:
            if spec.num_classes is not None and size[1] != spec.num_classes:
                raise UsageError(f"--sizes: {size[0]}x{size[1]}; {directory} fixes C={spec.num_classes}")
            row = _bench_size(directory, spec, session, size, repeats=repeats, warmup=warmup)
            entry["sizes"].append(row)
            if progress is not None:
                progress(entry, row)
        results["artifacts"].append(entry)
    if startup:
        results["startup"] = startup_times()
    if json_path is not None:
        write(results, Path(json_path))
    return results


def _bench_size(directory: Path, spec: FocalSpec, session, size, *, repeats: int, warmup: int) -> dict:
    tf = import_tensorflow()
    n, c = size
    rng = np.random.default_rng(0)
    predictions = (rng.normal(size=(n, c)) * 3).astype(np.float32)
    if not spec.from_logits:  # probabilities: a softmax (or sigmoid) of the same logits
        predictions = probabilities(spec, predictions).astype(np.float32)
    if spec.sparse:
        y_true = rng.integers(0, c, size=n).astype(np.int64)
        keras_true = np.eye(c, dtype=np.float32)[y_true]
    elif spec.multi_label:
        y_true = (rng.uniform(size=(n, c)) < 0.05).astype(np.float32)
        keras_true = y_true
    else:
        y_true = np.eye(c, dtype=np.float32)[rng.integers(0, c, size=n)]
        keras_true = y_true
    true_name, prediction_name = spec.input_names
    feed = {true_name: y_true, prediction_name: predictions}
    with silenced_stderr():
        loaded = tf.saved_model.load(str(directory / artifact.SAVED_MODEL))
    serving = loaded.signatures["serving_default"]
    tf_true, tf_predictions, tf_keras_true = tf.constant(y_true), tf.constant(predictions), tf.constant(keras_true)
    keras_loss = tf.function(_keras_loss(spec), autograph=False)
    element_wise = spec.multi_label
    floor_tf = tf.function((lambda y, x: y * x) if element_wise else (lambda y, x: tf.reduce_max(x, axis=-1)), autograph=False)
    floor_session = _floor_session(element_wise)
    floor_feed = {"y_true": y_true, "predictions": predictions} if element_wise else {"predictions": predictions}
    runners = {
        "tensorflow": lambda: serving(**{true_name: tf_true, prediction_name: tf_predictions})["loss"].numpy(),
        "onnxruntime": lambda: session.session.run(["loss"], feed)[0],
        "keras": lambda: keras_loss(tf_keras_true, tf_predictions).numpy(),
        "floor_tensorflow": lambda: floor_tf(tf_true if element_wise else tf_predictions, tf_predictions).numpy(),
        "floor_onnxruntime": lambda: floor_session.run(None, floor_feed)[0],
    }
    seconds = _interleaved(runners, repeats=repeats, warmup=warmup)
    elements = n * c
    ratio = lambda a, b: seconds[a] / seconds[b]  # noqa: E731
    return {
        "n": n, "c": c, "elements": elements,
        "seconds": seconds,
        "elements_per_second": {name: elements / value for name, value in seconds.items()},
        "ratios": {
            "onnxruntime / floor": ratio("onnxruntime", "floor_onnxruntime"),
            "tensorflow / floor": ratio("tensorflow", "floor_tensorflow"),
            "keras / tensorflow": ratio("keras", "tensorflow"),
            "tensorflow / onnxruntime": ratio("tensorflow", "onnxruntime"),
        },
        "floor": "element-wise multiply" if element_wise else "reduce-max over classes",
    }


def _interleaved(runners: dict, *, repeats: int, warmup: int) -> dict:
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


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


def _floor_session(element_wise: bool):
    """The floor in ONNX Runtime: ReduceMax over C, or Mul of the two (N, C) inputs."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, ["N", "C"])]
    if element_wise:
        inputs.insert(0, helper.make_tensor_value_info("y_true", TensorProto.FLOAT, ["N", "C"]))
        node = helper.make_node("Mul", ["y_true", "predictions"], ["floor"])
    else:
        node = helper.make_node("ReduceMax", ["predictions"], ["floor"], axes=[-1], keepdims=0)
    output_dims = ["N", "C"] if element_wise else ["N"]
    graph = helper.make_graph([node], "floor", inputs, [helper.make_tensor_value_info("floor", TensorProto.FLOAT, output_dims)])
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
    script = Path(sys.executable).parent / "focalgraph"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "export.cli"]
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


def _machine() -> dict:
    import onnxruntime

    tf = import_tensorflow()
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0], "tensorflow": tf.__version__,
            "onnxruntime": onnxruntime.__version__, "platform": sys.platform}


def written(json_path: Path) -> dict:
    """What ``--json`` writes: the JSON, and beside it the Markdown table and the plot."""
    return {"--json": json_path, "--json (its table)": json_path.with_suffix(".md"),
            "--json (its plot)": json_path.with_suffix(".png")}


def write(results: dict, json_path: Path) -> None:
    """``json_path``, and beside it the Markdown table (``.md``) and the plot (``.png``), all
    three or none."""
    outputs = writing.check_outputs(written(json_path))
    image = io.BytesIO()
    plot(results, image)
    with writing.StagedFiles() as files:
        files.write("--json", outputs["--json"], artifact.json_bytes(results))
        files.write("--json", outputs["--json (its table)"], markdown(results).encode())
        files.write("--json", outputs["--json (its plot)"], image.getvalue())


def markdown(results: dict) -> str:
    lines = [
        "# focalgraph bench",
        "",
        f"{results['machine']['cpus']} CPUs; TensorFlow {results['machine']['tensorflow']}, ONNX Runtime "
        f"{results['machine']['onnxruntime']}; median of {results['repeats']} interleaved rounds after "
        f"{results['warmup']} warm-up calls; float32, unreduced loss. Times in ms.",
        "",
    ]
    for entry in results["artifacts"]:
        floor = entry["sizes"][0]["floor"] if entry["sizes"] else ""
        lines += [
            f"## {entry['artifact']} ({entry['spec']})",
            "",
            f"ONNX: {entry['onnx']['nodes']} nodes ({', '.join(f'{op} {n}' for op, n in entry['onnx']['ops'].items())}); "
            f"export took {entry['export_seconds']:.1f} s; floor: {floor}; ONNX Runtime ran on {entry['onnxruntime']['provider']}.",
            "",
            "| N x C | TF | ORT | Keras (TF) | floor TF | floor ORT | ORT / floor | TF / floor | Keras / TF | TF / ORT | ORT elements/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in entry["sizes"]:
            s, r = row["seconds"], row["ratios"]
            lines.append(
                f"| {row['n']} x {row['c']} | {s['tensorflow'] * 1e3:.2f} | {s['onnxruntime'] * 1e3:.2f} | "
                f"{s['keras'] * 1e3:.2f} | {s['floor_tensorflow'] * 1e3:.2f} | {s['floor_onnxruntime'] * 1e3:.2f} | "
                f"{r['onnxruntime / floor']:.2f} | {r['tensorflow / floor']:.2f} | {r['keras / tensorflow']:.2f} | "
                f"{r['tensorflow / onnxruntime']:.2f} | {row['elements_per_second']['onnxruntime']:.3g} |"
            )
        lines.append("")
    if "startup" in results:
        lines += ["## Start-up (cold process, median of 3)", ""]
        lines += [f"- `{name}`: {seconds:.2f} s" for name, seconds in results["startup"].items()]
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path) -> None:
    """Time against N x C per backend, one panel per artifact (log-log), as PNG to ``path`` (a
    path or a binary file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(results["artifacts"])
    figure, axes = plt.subplots(1, count, figsize=(6 * count, 4.5), squeeze=False)
    for axis, entry in zip(axes[0], results["artifacts"]):
        elements = [row["elements"] for row in entry["sizes"]]
        for name in ("tensorflow", "onnxruntime", "keras", "floor_tensorflow", "floor_onnxruntime"):
            style = "--" if name.startswith("floor") else "-"
            axis.plot(elements, [row["seconds"][name] * 1e3 for row in entry["sizes"]], style, marker="o", label=name)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("N x C (float32 elements)")
        axis.set_ylabel("median time (ms)")
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
