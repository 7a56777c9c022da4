"""Where commands may write: `--force` replaces only what focalgraph wrote, and no output lands in
an input (symlinks followed), for every command that writes (issue 10, items 1 and 2)."""

import json
import os
import shutil
import stat

import numpy as np
import pytest

from exporting import one_line_error, run_main, snapshot
from export import artifact, writing
from export.errors import UsageError


@pytest.fixture
def workspace(onnx_artifact, tmp_path):
    """tmp_path with a copy of the artifact (``art``), a symlink to it (``link``), and eval inputs."""
    shutil.copytree(onnx_artifact, tmp_path / "art")
    (tmp_path / "link").symlink_to(tmp_path / "art", target_is_directory=True)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "logits.npy", rng.normal(size=(20, 5)).astype(np.float32))
    np.save(tmp_path / "labels.npy", rng.integers(0, 5, 20))
    return tmp_path


def export_args(out, *extra):
    return ["export", "--variant", "softmax", "--format", "onnx", "--no-validate", "--provider", "cpu", "--out", out, *extra]


# --- --force -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["export", "embed"])
def test_force_leaves_a_web_app_with_its_own_manifest_json_alone(workspace, monkeypatch, command):
    """The issue's reproduction: a directory with a manifest.json that focalgraph did not write."""
    monkeypatch.chdir(workspace)
    (workspace / "webapp" / "src").mkdir(parents=True)
    (workspace / "webapp" / "manifest.json").write_text('{"name":"PWA"}\n')
    (workspace / "webapp" / "src" / "thesis.tex").write_text("work\n")
    (workspace / "saved").mkdir()
    args = {"export": export_args("webapp", "--force"),
            "embed": ["embed", "--savedmodel", "saved", "--output", "y", "--loss", "art", "--out", "webapp", "--force"]}
    before = snapshot(workspace)
    line = one_line_error(run_main(*args[command]), command)
    assert "webapp/manifest.json is not a focalgraph manifest" in line
    assert snapshot(workspace) == before


@pytest.mark.parametrize("case", ["no-manifest", "unlisted-file", "symlink-inside"])
def test_force_names_the_first_file_focalgraph_did_not_write(workspace, case):
    target = workspace / "target"
    if case == "no-manifest":
        (target / "src").mkdir(parents=True)
        (target / "src" / "thesis.tex").write_text("work")
        named = "target/src/thesis.tex was not written by focalgraph"
    elif case == "unlisted-file":
        shutil.copytree(workspace / "art", target)
        (target / "notes").mkdir()
        (target / "notes" / "thesis.tex").write_text("work")
        named = "target/notes/thesis.tex is not listed in manifest.json"
    else:
        shutil.copytree(workspace / "art", target)
        (target / "elsewhere").symlink_to(workspace / "logits.npy")
        named = "target/elsewhere is a link or special file"
    before = snapshot(workspace)
    line = one_line_error(run_main(*export_args(target, "--force")), "export")
    assert named in line and "left untouched" in line
    assert snapshot(workspace) == before


@pytest.mark.parametrize("existing", ["artifact", "empty", "edited-artifact"])
def test_force_replaces_an_artifact_focalgraph_wrote_or_an_empty_directory(workspace, existing):
    out = workspace / "out"
    if existing == "empty":
        out.mkdir()
    else:
        shutil.copytree(workspace / "art", out)
        if existing == "edited-artifact":  # edited, yet every file is one focalgraph wrote
            (out / "spec.json").write_text("{}")
    with writing.staged(out, force=True) as stage:
        (stage / "spec.json").write_text("new")
        artifact.write_manifest(stage, "new")
    assert (out / "spec.json").read_text() == "new"
    assert sorted(p.name for p in workspace.iterdir()) == ["art", "labels.npy", "link", "logits.npy", "out"]


def test_a_file_added_while_the_export_ran_is_not_deleted(workspace):
    """--force checks again, with the old directory moved aside, just before replacing it."""
    out = workspace / "out"
    shutil.copytree(workspace / "art", out)
    (out / "saved").mkdir()  # an empty directory holds nothing to lose
    with pytest.raises(UsageError, match="saved/late.txt is not listed"):
        with writing.staged(out, force=True) as stage:
            artifact.write_manifest(stage, "new")
            (out / "saved" / "late.txt").write_text("precious")  # out's own mtime does not change
    assert (out / "saved" / "late.txt").read_text() == "precious"
    assert sorted(p.name for p in workspace.iterdir()) == ["art", "labels.npy", "link", "logits.npy", "out"]


def test_export_defaults_checks_every_destination_before_writing_any(tmp_path):
    (tmp_path / "variant-sigmoid").mkdir()  # the last default, foreign
    (tmp_path / "variant-sigmoid" / "mine.txt").write_text("mine")
    line = one_line_error(run_main("export-defaults", "--out", tmp_path, "--force", "--no-validate"), "export-defaults")
    assert "variant-sigmoid/mine.txt was not written by focalgraph" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["variant-sigmoid"]


# --- outputs inside inputs -----------------------------------------------------------------------


OUTPUT_CASES = {
    # command line (paths relative to the workspace), what the line must say
    "eval --out in the artifact": (["eval", "art", "--predictions", "logits.npy", "--labels", "labels.npy", "--out",
                                    "art/model.onnx"], "--out: art/model.onnx is inside the artifact"),
    "eval --out through a symlinked directory": (["eval", "art", "--predictions", "logits.npy", "--labels", "labels.npy",
                                                  "--out", "link/losses.npy"], "--out: link/losses.npy is inside the artifact"),
    "eval --summary in the artifact": (["eval", "art", "--predictions", "logits.npy", "--labels", "labels.npy",
                                        "--summary", "link/x.json"], "--summary: link/x.json is inside the artifact"),
    "eval --out over an input through a symlink": (["eval", "art", "--predictions", "logits.npy", "--labels", "labels.npy",
                                                    "--out", "alias.npy"], "--out: alias.npy is also --predictions"),
    "eval --out is a device": (["eval", "art", "--predictions", "logits.npy", "--labels", "labels.npy", "--out",
                                "/dev/null"], "--out: /dev/null is not a regular file"),
    "validate --report through a symlinked directory": (["validate", "art", "--reference-only", "--report", "link/r.json"],
                                                        "--report: link/r.json is inside the artifact"),
    "bench --json through a symlinked directory": (["bench", "art", "--json", "link/b.json"],
                                                   "--json: link/b.json is inside the artifact"),
    "attach --out through a symlinked directory": (["attach", "--model", "art/model.onnx", "--output", "loss", "--loss", "art",
                                                    "--out", "link/both.onnx"], "--out: link/both.onnx is inside the artifact"),
    "attach --out over --model": (["attach", "--model", "alias.npy", "--output", "loss", "--loss", "art", "--out",
                                   "logits.npy", "--force"], "--out: logits.npy is also --model"),
    "embed --force over its own --loss through a symlink": (["embed", "--savedmodel", "saved", "--output", "y", "--loss", "art",
                                                             "--out", "link", "--force"], "--out: link is also --loss"),
    "embed --out inside --savedmodel": (["embed", "--savedmodel", "saved", "--output", "y", "--loss", "art", "--out",
                                         "saved/both"], "--out: saved/both is inside --savedmodel"),
    "export --out inside an artifact": (export_args("link/sub"), "--out: link/sub is inside the artifact"),
    "export --force --out holding its own --spec": (["export", "--spec", "link/spec.json", "--gamma", "1", "--format", "onnx",
                                                     "--no-validate", "--out", "art", "--force"], "--out: art holds --spec"),
}


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_an_output_inside_an_input_is_refused_and_nothing_changes(workspace, monkeypatch, case):
    monkeypatch.chdir(workspace)
    (workspace / "alias.npy").symlink_to(workspace / "logits.npy")
    (workspace / "saved").mkdir()
    args, named = OUTPUT_CASES[case]
    if args[0] == "bench":
        pytest.importorskip("matplotlib")
    before = snapshot(workspace)
    line = one_line_error(run_main(*args), args[0])
    assert named in line, line
    assert snapshot(workspace) == before
    artifact.verify(workspace / "art")


def test_two_outputs_of_one_command_may_not_be_one_file(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    (workspace / "same.json").symlink_to(workspace / "other.npy")
    line = one_line_error(run_main("eval", "art", "--predictions", "logits.npy", "--labels", "labels.npy", "--out",
                                   "other.npy", "--summary", "same.json"), "eval")
    assert "--summary: same.json is also --out" in line
    assert sorted(p.name for p in workspace.iterdir()) == ["art", "labels.npy", "link", "logits.npy", "same.json"]


def test_check_outputs_is_the_one_check(workspace):
    """Every command goes through writing.check_outputs; its answer is the resolved path."""
    resolved = writing.check_outputs({"--out": workspace / "link" / ".." / "x.npy"}, {"ARTIFACT": workspace / "link"})
    assert resolved["--out"] == workspace.resolve() / "x.npy"
    with pytest.raises(UsageError, match="expected a path"):
        writing.check_outputs({"--out": 3})


# --- modes -----------------------------------------------------------------------------------------


def test_modes_are_set_explicitly_and_the_umask_is_never_touched(workspace, monkeypatch):
    def no_umask(mask):
        raise AssertionError("os.umask called: reading the umask means setting it, for every thread")

    old = os.umask(0o077)
    try:
        monkeypatch.setattr(os, "umask", no_umask)
        out = workspace / "new" / "artifact"
        assert run_main(*export_args(out)).returncode == 0
        assert run_main("eval", workspace / "art", "--predictions", workspace / "logits.npy", "--labels", workspace / "labels.npy",
                        "--out", workspace / "losses.npy", "--summary", workspace / "summary.json").returncode == 0
    finally:
        monkeypatch.undo()
        os.umask(old)
    modes = {path.relative_to(workspace).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in [workspace / "new", out, *out.rglob("*"), workspace / "losses.npy", workspace / "summary.json"]}
    assert modes == {name: 0o755 if (workspace / name).is_dir() else 0o644 for name in modes}
    json.loads((workspace / "summary.json").read_text())
