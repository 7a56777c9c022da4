"""Inputs that cannot be read, or that lie: one line naming the file, exit 2, nothing written
(issue 10, item 4). "Behind a recomputed manifest" means the manifest was rewritten over the
damaged file, so the manifest check passes and the reader itself must cope."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from exporting import ROOT, one_line_error, run_cli, run_main, snapshot
from export import artifact


@pytest.fixture
def workspace(onnx_artifact, tmp_path):
    shutil.copytree(onnx_artifact, tmp_path / "art")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "logits.npy", rng.normal(size=(20, 5)).astype(np.float32))
    np.save(tmp_path / "labels.npy", rng.integers(0, 5, 20))
    return tmp_path


def remanifest(directory):
    artifact.write_manifest(directory, json.loads((directory / artifact.MANIFEST).read_text())["spec"])


def readers(root, art="art"):
    """Every command that reads an artifact, writing its outputs (if any) to ``root/outputs``."""
    evaluate = ["eval", root / art, "--predictions", root / "logits.npy", "--labels", root / "labels.npy", "--provider", "cpu",
                "--out", root / "losses.npy"]
    return {
        "inspect": ["inspect", root / art],
        "validate": ["validate", root / art, "--reference-only", "--provider", "cpu", "--report", root / "report.json"],
        "eval": evaluate,
        "attach": ["attach", "--model", root / "art" / "model.onnx", "--output", "loss", "--loss", root / art,
                   "--out", root / "both.onnx"],
    }


def assert_refused(root, command, args, named, code=2):
    before = snapshot(root)
    line = one_line_error(run_main(*args), command, code)
    assert named in line, line
    assert snapshot(root) == before


# --- files at mode 000 ---------------------------------------------------------------------------


def run_unprivileged(*args):
    """The command line in a process that file modes bind: as root, one without the capabilities
    that let root read any file (setpriv); otherwise an ordinary process."""
    if os.geteuid() != 0:
        return run_cli(*args)
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None or subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, and cannot drop the capability to read any file (setpriv)")
    code = "import sys\nfrom export.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([*drop, sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.mark.parametrize(
    "command, unreadable",
    [(command, name) for command in ("inspect", "validate", "eval")
     for name in ("art/spec.json", "art/model.onnx", "art/manifest.json")] + [("eval", "logits.npy")],
)
def test_a_file_at_mode_000_is_one_line_naming_it(workspace, command, unreadable):
    (workspace / unreadable).chmod(0)
    try:
        before = snapshot(workspace)
        line = one_line_error(run_unprivileged(*readers(workspace)[command]), command)
        assert unreadable in line and "ermission denied" in line, line
        assert snapshot(workspace) == before
    finally:
        (workspace / unreadable).chmod(0o644)


def test_a_spec_file_at_mode_000_is_one_line(workspace):
    (workspace / "spec.json").write_text("{}")
    (workspace / "spec.json").chmod(0)
    line = one_line_error(run_unprivileged("export", "--spec", workspace / "spec.json", "--out", workspace / "out"), "export")
    assert "spec.json" in line and not (workspace / "out").exists()


# --- files that lie, behind a recomputed manifest --------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "validate", "eval", "attach"])
def test_a_garbage_model_onnx_is_one_line_naming_it(workspace, command):
    (workspace / "art" / "model.onnx").write_bytes(b"garbage\n")
    remanifest(workspace / "art")
    assert_refused(workspace, command, readers(workspace)[command], "model.onnx")


def test_a_garbage_validation_json_is_one_line_naming_it(workspace):
    (workspace / "art" / "validation.json").write_text("garbage\n")
    remanifest(workspace / "art")
    assert_refused(workspace, "inspect", readers(workspace)["inspect"], "validation.json")


@pytest.mark.parametrize("command", ["inspect", "validate", "eval"])
def test_a_manifest_without_created_is_one_line_naming_it(workspace, command):
    path = workspace / "art" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["created"]
    path.write_text(json.dumps(manifest))
    assert_refused(workspace, command, readers(workspace)[command], "manifest.json: unreadable manifest ('created'")


@pytest.mark.parametrize("content", [b"garbage\n", b"PK\x03\x04 not a zip at all", "truncated"])
def test_a_reference_npz_that_is_not_a_zip_is_one_line_naming_it(workspace, content):
    path = workspace / "art" / "reference.npz"
    path.write_bytes(path.read_bytes()[:3000] if content == "truncated" else content)
    remanifest(workspace / "art")
    assert_refused(workspace, "validate", readers(workspace)["validate"], "reference.npz: unreadable")


def with_external_data(source, target, location="../../../etc/passwd"):
    """``source``'s model with one more initializer whose data is "in" ``location``."""
    model = onnx.load(str(source))
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), name="elsewhere")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    model.graph.initializer.append(tensor)
    onnx.save(model, str(target))


@pytest.mark.parametrize("command", ["inspect", "validate", "eval", "attach"])
def test_onnx_external_data_is_refused(workspace, command):
    shutil.copy(workspace / "art" / "model.onnx", workspace / "model.onnx")  # a clean --model for attach
    with_external_data(workspace / "art" / "model.onnx", workspace / "art" / "model.onnx")
    remanifest(workspace / "art")
    args = readers(workspace)[command]
    if command == "attach":
        args[2] = workspace / "model.onnx"
    assert_refused(workspace, command, args, "model.onnx: tensor 'elsewhere' keeps its data in another file")


@pytest.mark.parametrize("command", ["eval", "attach"])
def test_a_bare_onnx_with_external_data_is_refused(workspace, command):
    with_external_data(workspace / "art" / "model.onnx", workspace / "loss.onnx", location="loss.onnx.data")
    (workspace / "loss.onnx.data").write_bytes(b"\0" * 16)
    args = readers(workspace, art="loss.onnx")[command]
    assert_refused(workspace, command, args, "loss.onnx: tensor 'elsewhere' keeps its data in another file")


@pytest.mark.parametrize("command", ["eval", "attach"])
def test_a_bare_onnx_with_unparseable_spec_metadata_is_one_line(workspace, command):
    model = onnx.load(str(workspace / "art" / "model.onnx"))
    for entry in model.metadata_props:
        if entry.key == artifact.SPEC_METADATA:
            entry.value = "{not json"
    onnx.save(model, str(workspace / "loss.onnx"))
    args = readers(workspace, art="loss.onnx")[command]
    assert_refused(workspace, command, args, "loss.onnx: its focalgraph.spec metadata is not a readable FocalSpec")


# --- options that used to reach a traceback ---------------------------------------------------------


@pytest.mark.parametrize(
    "options, named",
    [(["--rank", "300"], "--rank: expected an integer from 2 to 8, got 300"),
     (["--class-counts", "1e308,1e308"], "--class-counts: counts from 1e+308 to 1e+308 give class weights that are not"),
     (["--alpha", "1e300"], "--alpha: 1e+300 is beyond float32's range"),
     (["--spec", "/dev/zero"], "--spec: /dev/zero is not a regular file")],
    ids=["rank-300", "class-counts-overflow", "alpha-beyond-float32", "spec-dev-zero"],
)
def test_export_options_that_used_to_give_a_traceback(tmp_path, options, named):
    args = ["export", *options, "--format", "onnx", "--no-validate", "--out", tmp_path / "out"]
    if options[0] != "--spec":
        args[1:1] = ["--variant", "softmax"]
    line = one_line_error(run_main(*args), "export")
    assert named in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_spec_file_bigger_than_any_spec_is_refused_unread(tmp_path):
    (tmp_path / "spec.json").write_bytes(b" " * (2 << 20))
    line = one_line_error(run_main("export", "--spec", tmp_path / "spec.json", "--out", tmp_path / "out"), "export")
    assert "larger than 1024 KiB" in line
