"""Inputs from the third adversarial round (issue 21, items 4 to 9): each is refused in one line
naming its flag, exit 2, nothing written, and no command hangs or runs out of its memory bound."""

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporting import ROOT, one_line_error, run_cli, run_main, snapshot


def run_cli_within(seconds, *args):
    """The command line in a fresh process, killed after ``seconds`` (a hang fails the test)."""
    code = "import sys\nfrom export.cli import main\nsys.exit(main(sys.argv[1:]))"
    try:
        return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT, timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"focalgraph {' '.join(map(str, args))} was still running after {seconds} s")


# --- item 8: a FIFO given as an input file --------------------------------------------------------


@pytest.mark.parametrize("flag", ["--spec", "--keras"])
def test_a_fifo_as_the_spec_or_keras_file_is_refused_without_waiting_for_a_writer(tmp_path, flag):
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    result = run_cli_within(60, "export", flag, fifo, "--format", "onnx", "--no-validate", "--out", tmp_path / "out")
    line = one_line_error(result, "export")
    assert f"{flag}: {fifo} is not a regular file" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fifo"]


@pytest.mark.parametrize("flag", ["--model", "--loss"])
def test_a_fifo_as_attachs_model_or_loss_is_refused_without_waiting_for_a_writer(onnx_artifact, tmp_path, flag):
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    files = {"--model": onnx_artifact / "model.onnx", "--loss": onnx_artifact, flag: fifo}
    result = run_cli_within(60, "attach", "--model", files["--model"], "--output", "loss", "--loss", files["--loss"],
                            "--out", tmp_path / "both.onnx")
    line = one_line_error(result, "attach")
    assert f"{flag}: {fifo} is not a regular file" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fifo"]


# --- item 7: tracebacks that became one line ---------------------------------------------------


def keras_archive(path, *, method=None, encrypted=False):
    """A zip holding a config.json, with its compression method or encryption flag rewritten in
    both the local and the central header (zipfile cannot write either)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", '{"class_name": "Sequential", "config": {"layers": []}}')
    data = bytearray(path.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    if method is not None:
        struct.pack_into("<H", data, local + 8, method)
        struct.pack_into("<H", data, central + 10, method)
    if encrypted:
        for offset in (local + 6, central + 8):
            struct.pack_into("<H", data, offset, struct.unpack_from("<H", data, offset)[0] | 0x1)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage, named", [({"method": 9}, "config.json uses zip compression method 9"),
                                           ({"encrypted": True}, "config.json is encrypted")],
                         ids=["deflate64", "encrypted"])
def test_a_keras_config_zipfile_cannot_read_is_one_line(tmp_path, damage, named):
    model = keras_archive(tmp_path / "model.keras", **damage)
    line = one_line_error(run_main("export", "--keras", model, "--out", tmp_path / "out"), "export")
    assert f"--keras: {model}: {named}" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def dense_model_onnx(path, output="logits"):
    """features (N, 8) -> ``output`` (N, 5): one MatMul, written with onnx.helper."""
    weights = numpy_helper.from_array(np.random.default_rng(8).normal(size=(8, 5)).astype(np.float32), "weights")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "weights"], [output])], "dense",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 5])], [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


@pytest.mark.parametrize("shapes, named", [
    ("features=9999999999999999999x8", "input 'features': 9999999999999999999x8 is more than 67,108,864 elements"),
    ("features=100000000000x8", "input 'features': 100000000000x8 is more than 67,108,864 elements"),
    ("features=2x8,features=3x8", "input 'features' is given twice"),
    ("features=\uff12x8", "expected NAME=1x64x64x3[,NAME=...] (sizes in digits 0-9"),
    ("features=0x8", "input 'features': every size must be 1 or more, got 0x8"),
], ids=["beyond-int64", "beyond-memory", "repeated-input", "fullwidth-digit", "batch-of-0"])
def test_check_shapes_too_large_or_checking_something_else_are_one_line(onnx_artifact, tmp_path, shapes, named):
    """numpy's own errors for sizes it cannot allocate; last-wins names, non-ASCII digits and a
    batch of 0 checked something other than what was asked."""
    model = dense_model_onnx(tmp_path / "model.onnx")
    result = run_main("attach", "--model", model, "--output", "logits", "--loss", onnx_artifact,
                      "--out", tmp_path / "both.onnx", "--check-shapes", shapes)
    assert f"--check-shapes: {named}" in one_line_error(result, "attach")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# Truncates the predictions file (a real os.truncate) once eval has read its first batch: the
# moment is fixed by the source's own iteration, not by a race with another process.
TRUNCATE_AFTER_FIRST_BATCH = """
import json
import os
import shutil
from export import sources
_arrays = sources.NpySource.arrays
def arrays(self, size):
    for index, array in enumerate(_arrays(self, size)):
        yield array
        if index == 0 and self.flag == "--predictions":
            os.truncate(self.path, os.path.getsize(self.path) // 2)
sources.NpySource.arrays = arrays
"""


def test_a_npy_truncated_while_eval_reads_it_is_one_line(onnx_artifact, tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "logits.npy", rng.normal(size=(64, 5)).astype(np.float32))
    np.save(tmp_path / "labels.npy", rng.integers(0, 5, 64))
    result = run_cli("eval", onnx_artifact, "--predictions", tmp_path / "logits.npy", "--labels", tmp_path / "labels.npy",
                     "--batch-size", 8, "--provider", "cpu", "--out", tmp_path / "losses.npy",
                     python_prelude=TRUNCATE_AFTER_FIRST_BATCH)
    line = one_line_error(result, "eval")
    assert f"--predictions: {tmp_path / 'logits.npy'} was truncated while being read" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npy", "logits.npy"]


# --- item 4: external data anywhere in the model -------------------------------------------------


def external_tensor(name, location="private.txt"):
    """A float32 (4,) tensor whose data is "in" ``location``, beside the model."""
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), name=name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def hide_external_data(model, where):
    if where in ("function-constant", "function-sparse-constant"):
        if where == "function-constant":
            node = helper.make_node("Constant", [], ["leaked"], value=external_tensor("leak"))
        else:
            sparse = helper.make_sparse_tensor(external_tensor("leak"), numpy_helper.from_array(np.arange(4), "at"), [8])
            node = helper.make_node("Constant", [], ["leaked"], sparse_value=sparse)
        model.functions.append(helper.make_function("focal.hidden", "leak", [], ["leaked"], [node],
                                                    [helper.make_opsetid("", 17)]))
        model.opset_import.append(helper.make_opsetid("focal.hidden", 1))
    else:  # a training graph's initializer
        training = model.training_info.add()
        training.initialization.name = "initialization"
        training.initialization.initializer.append(external_tensor("leak"))


@pytest.mark.parametrize("where", ["function-constant", "function-sparse-constant", "training-initializer"])
@pytest.mark.parametrize("command", ["eval", "attach"])
def test_external_data_in_a_function_or_training_graph_is_refused(onnx_artifact, tmp_path, command, where):
    model = onnx.load(str(onnx_artifact / "model.onnx"))
    hide_external_data(model, where)
    onnx.save(model, str(tmp_path / "loss.onnx"))
    (tmp_path / "private.txt").write_bytes(b"\0" * 16)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "logits.npy", rng.normal(size=(20, 5)).astype(np.float32))
    np.save(tmp_path / "labels.npy", rng.integers(0, 5, 20))
    before = sorted(p.name for p in tmp_path.iterdir())
    if command == "eval":
        args = ["eval", tmp_path / "loss.onnx", "--predictions", tmp_path / "logits.npy", "--labels", tmp_path / "labels.npy",
                "--provider", "cpu", "--out", tmp_path / "losses.npy"]
    else:
        args = ["attach", "--model", onnx_artifact / "model.onnx", "--output", "loss", "--loss", tmp_path / "loss.onnx",
                "--out", tmp_path / "both.onnx"]
    line = one_line_error(run_main(*args), command)
    assert "loss.onnx: tensor 'leak' keeps its data in another file ('private.txt')" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --- item 9: messages that were unclear ---------------------------------------------------------


def test_a_model_output_named_like_the_loss_outputs_gets_them_renumbered(onnx_artifact, tmp_path):
    model = dense_model_onnx(tmp_path / "model.onnx", output="focal_loss")
    result = run_main("attach", "--model", model, "--output", "focal_loss", "--loss", onnx_artifact,
                      "--out", tmp_path / "both.onnx")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    combined = onnx.load(str(tmp_path / "both.onnx"))
    assert [o.name for o in combined.graph.output] == ["focal_loss", "focal2_loss", "focal2_per_sample", "focal2_sum",
                                                       "focal2_mean"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "both.onnx"), providers=["CPUExecutionProvider"])
    features = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0])
    logits, per_sample = session.run(["focal_loss", "focal2_per_sample"], {"features": features, "labels": labels})
    # float64 sparse softmax focal loss, gamma 2 (the artifact's default), from the formula
    logits = logits.astype(np.float64)
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    log_pt = log_p[np.arange(6), labels]
    np.testing.assert_allclose(per_sample, -(1 - np.exp(log_pt)) ** 2 * log_pt, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("command", ["sign", "inspect"])
def test_a_device_as_the_key_is_not_a_regular_file_rather_than_missing(onnx_artifact, tmp_path, command):
    shutil.copytree(onnx_artifact, tmp_path / "art")
    before = snapshot(tmp_path)
    args = (["sign", tmp_path / "art", "--key", "/dev/zero"] if command == "sign" else
            ["inspect", tmp_path / "art", "--public-key", "/dev/zero"])
    line = one_line_error(run_main(*args), command)
    flag = "--key" if command == "sign" else "--public-key"
    assert f"{flag}: /dev/zero is not a regular file" in line, line
    assert snapshot(tmp_path) == before


def test_a_keras_config_nested_200000_deep_is_too_deep_not_not_json(tmp_path):
    model = tmp_path / "model.keras"
    with zipfile.ZipFile(model, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "[" * 200_000 + "]" * 200_000)  # valid JSON
    line = one_line_error(run_main("export", "--keras", model, "--out", tmp_path / "out"), "export")
    assert f"--keras: {model}: its config.json is nested too deeply to read" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


# --- item 6: an option value that would hold every row ------------------------------------------


@pytest.mark.parametrize("top_k", ["1000000000", "10001"])
def test_top_k_beyond_its_cap_is_refused(onnx_artifact, tmp_path, top_k):
    np.save(tmp_path / "logits.npy", np.zeros((4, 5), np.float32))
    np.save(tmp_path / "labels.npy", np.zeros(4, np.int64))
    result = run_main("eval", onnx_artifact, "--predictions", tmp_path / "logits.npy", "--labels", tmp_path / "labels.npy",
                      "--provider", "cpu", "--top-k", top_k, "--out", tmp_path / "losses.npy")
    assert f"--top-k: expected an integer from 0 to 10000, got {top_k}" in one_line_error(result, "eval")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npy", "logits.npy"]


# --- item 5: export --keras builds no weights ----------------------------------------------------

# The export in a child whose address space is capped (a real limit: an allocation past it fails),
# reporting the child's peak RSS. TensorFlow and ONNX Runtime reserve address space well beyond
# what they touch: 6 GiB holds an ordinary export (peak RSS about 2 GB).
CAPPED = """
import resource, subprocess, sys
cap = 6 << 30
def limit():
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
code = subprocess.run([sys.executable, "-c", "import sys; from export.cli import main; sys.exit(main(sys.argv[1:]))",
                       *sys.argv[1:]], preexec_fn=limit).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def wide_keras_model(path, width):
    """A .keras of config.json alone (no weights file, 1 KB): Dense(``width``, sigmoid) on a
    ``width``-wide input, compiled with BinaryFocalCrossentropy; building its weights would take
    ``width**2`` float32 (1.6 GB at 20000), and their initialisation several times that."""
    dtype = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}
    config = {
        "module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional",
        "config": {"name": "wide", "trainable": True, "layers": [
            {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None, "name": "features",
             "config": {"batch_shape": [None, width], "dtype": "float32", "sparse": False, "name": "features"},
             "inbound_nodes": []},
            {"module": "keras.layers", "class_name": "Dense", "registered_name": None, "name": "scores",
             "config": {"name": "scores", "trainable": True, "dtype": dtype, "units": width, "activation": "sigmoid",
                        "use_bias": True},
             "build_config": {"input_shape": [None, width]},
             "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {
                 "shape": [None, width], "dtype": "float32", "keras_history": ["features", 0, 0]}}], "kwargs": {}}]}],
            "input_layers": ["features", 0, 0], "output_layers": ["scores", 0, 0]},
        "build_config": {"input_shape": None},
        "compile_config": {"loss": {"module": "keras.losses", "class_name": "BinaryFocalCrossentropy",
                                    "registered_name": None, "config": {"name": "binary_focal_crossentropy",
                                                                        "reduction": "sum_over_batch_size",
                                                                        "gamma": 2.0, "alpha": 0.25,
                                                                        "apply_class_balancing": False,
                                                                        "from_logits": False, "label_smoothing": 0.0,
                                                                        "axis": -1}}},
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", json.dumps(config))
    return path


def test_export_keras_of_a_20000_wide_model_builds_no_weights(tmp_path):
    model = wide_keras_model(tmp_path / "wide.keras", 20000)
    args = ["export", "--keras", model, "--format", "onnx", "--no-validate", "--out", tmp_path / "loss"]
    result = subprocess.run([sys.executable, "-c", CAPPED, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                            timeout=600)
    code, peak_kb = map(int, result.stdout.split()[-2:])
    assert code == 0, result.stderr[-2000:]
    spec = json.loads((tmp_path / "loss" / "spec.json").read_text())
    assert (spec["variant"], spec["num_classes"], spec["rank"]) == ("sigmoid", 20000, 2)
    assert peak_kb / 1024 < 3000, f"peak RSS {peak_kb / 1024:.0f} MB"
