"""One policy for every output of every command (docs/outputs.md; issue 21, item 1): an existing
output is replaced only with --force, otherwise exit 2 in one line naming --force and the file,
and the file is left byte for byte as it was. Each command runs as a fresh process."""

import json
import shutil

import numpy as np
import onnx
import pytest

from exporting import linear_model, one_line_error, run_cli, snapshot
from export import signing
from export.exporter import default_specs

C = 5
FOREIGN = b"someone's thesis, not focalgraph's\n"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    pytest.importorskip("model_signing")
    private, public = signing.keygen(tmp_path_factory.mktemp("policy-keys") / "key")
    return private, public


@pytest.fixture
def workspace(onnx_artifact, tmp_path, keys):
    """A copy of the (ONNX-only, sparse) artifact, eval inputs and a model to attach to."""
    shutil.copytree(onnx_artifact, tmp_path / "art")
    rng = np.random.default_rng(21)
    np.save(tmp_path / "logits.npy", rng.normal(size=(20, C)).astype(np.float32))
    np.save(tmp_path / "labels.npy", rng.integers(0, C, 20))
    linear_model(tmp_path / "linear.onnx", C)
    return tmp_path


def eval_args(w, *extra):
    return ["eval", w / "art", "--predictions", w / "logits.npy", "--labels", w / "labels.npy", "--provider", "cpu",
            *extra]


# Each command's file outputs: (its arguments, the output, how to tell focalgraph's replacement).
FILE_OUTPUTS = {
    "eval --out": (lambda w: eval_args(w, "--out", w / "thesis.npy"), "thesis.npy",
                   lambda path: np.load(path).shape == (20,)),
    "eval --summary": (lambda w: eval_args(w, "--summary", w / "notes.json"), "notes.json",
                       lambda path: json.loads(path.read_text())["count"] == 20),
    "eval --plot": (lambda w: eval_args(w, "--plot", w / "figure.png"), "figure.png",
                    lambda path: path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"),
    "validate --report": (lambda w: ["validate", w / "art", "--reference-only", "--provider", "cpu",
                                     "--report", w / "report.txt"], "report.txt",
                          lambda path: json.loads(path.read_text())["passed"] is True),
    "attach --out": (lambda w: ["attach", "--model", w / "linear.onnx", "--output", "logits", "--loss", w / "art",
                                "--out", w / "combined.onnx"], "combined.onnx",
                     lambda path: len(onnx.load(str(path)).graph.output) > 1),
    "sign": (lambda w, key: ["sign", w / "art", "--key", key], "art/signature.sig",
             lambda path: "dsseEnvelope" in json.loads(path.read_text())),
}


def file_output_args(case, workspace, keys):
    build, name, replaced = FILE_OUTPUTS[case]
    args = build(workspace, keys[0]) if case == "sign" else build(workspace)
    return args, workspace / name, replaced


@pytest.mark.parametrize("case", FILE_OUTPUTS)
def test_an_existing_file_is_left_intact_without_force_and_replaced_with_it(workspace, keys, case):
    args, output, replaced = file_output_args(case, workspace, keys)
    output.write_bytes(FOREIGN)
    before = snapshot(workspace)
    line = one_line_error(run_cli(*args), args[0])
    assert f"{output} already exists; pass --force to replace it" in line
    assert snapshot(workspace) == before and output.read_bytes() == FOREIGN
    result = run_cli(*args, "--force")
    assert result.returncode == 0, result.stderr
    assert replaced(output)


def test_bench_json_and_the_files_beside_it_are_left_intact_without_force(workspace):
    """bench refuses before it times anything; `test_bench` replaces them with force."""
    for name in ("bench.json", "bench.md", "bench.png"):
        (workspace / name).write_bytes(FOREIGN)
    before = snapshot(workspace)
    line = one_line_error(run_cli("bench", workspace / "art", "--json", workspace / "bench.json"), "bench")
    assert f"{workspace / 'bench.json'} already exists; pass --force to replace it" in line
    (workspace / "bench.json").unlink()
    line = one_line_error(run_cli("bench", workspace / "art", "--json", workspace / "bench.json"), "bench")
    assert f"{workspace / 'bench.md'} already exists; pass --force to replace it" in line
    del before["bench.json"]
    assert snapshot(workspace) == before


# Directory outputs: refused without --force; with it, replaced only where focalgraph wrote them
# (the artifact's manifest), so a foreign directory is intact either way (test_outputs.py has
# --force replacing an artifact export wrote).
DIRECTORY_OUTPUTS = {
    "export": lambda w, out: ["export", "--variant", "softmax", "--format", "onnx", "--no-validate", "--provider",
                              "cpu", "--out", out],
    "export-defaults": lambda w, out: ["export-defaults", "--out", out.parent, "--no-validate", "--provider", "cpu"],
    "embed": lambda w, out: ["embed", "--savedmodel", w / "saved", "--output", "y", "--loss", w / "art", "--out", out],
}


@pytest.mark.parametrize("case", DIRECTORY_OUTPUTS)
def test_an_existing_directory_is_refused_without_force_and_a_foreign_one_even_with_it(workspace, case):
    (workspace / "saved").mkdir()
    out = workspace / "outputs" / next(iter(default_specs()))
    (out / "src").mkdir(parents=True)
    (out / "src" / "thesis.tex").write_bytes(FOREIGN)
    args = DIRECTORY_OUTPUTS[case](workspace, out)
    before = snapshot(workspace)
    line = one_line_error(run_cli(*args), case)
    assert f"{out} already exists; pass --force to replace it" in line
    line = one_line_error(run_cli(*args, "--force"), case)
    assert f"{out / 'src' / 'thesis.tex'} was not written by focalgraph" in line
    assert snapshot(workspace) == before


def test_eval_never_replaces_a_dataset_directory_even_with_force(workspace):
    (workspace / "losses").mkdir()
    (workspace / "losses" / "thesis.tex").write_bytes(FOREIGN)
    before = snapshot(workspace)
    for extra in ([], ["--force"]):
        line = one_line_error(run_cli(*eval_args(workspace, "--out", workspace / "losses", *extra)), "eval")
        assert f"{workspace / 'losses'} already exists" in line and "never replaces a directory, even with --force" in line
    assert snapshot(workspace) == before


def test_keygen_never_replaces_a_key(workspace):
    (workspace / "key").write_bytes(FOREIGN)
    before = snapshot(workspace)
    line = one_line_error(run_cli("keygen", "--out", workspace / "key"), "keygen")
    assert f"{workspace / 'key'} already exists; a key is never overwritten" in line
    assert snapshot(workspace) == before


def test_a_file_that_appears_while_a_command_writes_is_not_replaced(tmp_path):
    """Without --force the rename into place cannot replace a file created after the check
    (a hard link, which fails where the name is taken); what the commit placed is removed."""
    from export.errors import UsageError
    from export.writing import StagedFiles

    files = StagedFiles()
    files.write("--summary", tmp_path / "first.json", b"{}")
    files.write("--out", tmp_path / "thesis.npy", b"new losses")
    (tmp_path / "thesis.npy").write_bytes(FOREIGN)  # another program, after the check
    with pytest.raises(UsageError, match="--out: .*thesis.npy already exists; pass --force to replace it"):
        with files:
            pass
    assert sorted(path.name for path in tmp_path.iterdir()) == ["thesis.npy"]
    assert (tmp_path / "thesis.npy").read_bytes() == FOREIGN
    with StagedFiles(force=True) as forced:
        forced.write("--out", tmp_path / "thesis.npy", b"new losses")
    assert (tmp_path / "thesis.npy").read_bytes() == b"new losses"
