"""Writing under bad luck: a full disk, long names, killed writers, two writers at once (issue 10,
item 4). Each failure is one line, the right exit code, and nothing left behind."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from exporting import ROOT, one_line_error, run_main, snapshot
from export import artifact, writing
from export.errors import OutputError

ENOSPC_TEXT = "No space left on device"


@pytest.fixture
def workspace(onnx_artifact, tmp_path):
    """tmp_path/in: a copy of the artifact (``art``), eval inputs and a model to attach the loss
    to; tmp_path/out: where the outputs go."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copytree(onnx_artifact, inputs / "art")
    rng = np.random.default_rng(0)
    np.save(inputs / "logits.npy", rng.normal(size=(20, 5)).astype(np.float32))
    np.save(inputs / "labels.npy", rng.integers(0, 5, 20))
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 5])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])
    graph = helper.make_graph([helper.make_node("Identity", ["features"], ["logits"])], "model", [features], [logits])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), inputs / "model.onnx")
    (tmp_path / "out").mkdir()
    return tmp_path


def commands(root, out):
    """One command line per kind of output, writing into ``out``."""
    inputs = root / "in"
    evaluate = ["eval", inputs / "art", "--predictions", inputs / "logits.npy", "--labels", inputs / "labels.npy",
                "--provider", "cpu"]
    return {
        "eval --out": evaluate + ["--out", out / "losses.npy"],
        "eval --summary": evaluate + ["--summary", out / "summary.json"],
        "validate --report": ["validate", inputs / "art", "--reference-only", "--provider", "cpu", "--report", out / "r.json"],
        "attach --out": ["attach", "--model", inputs / "model.onnx", "--output", "logits", "--loss", inputs / "art",
                         "--out", out / "both.onnx"],
        "export --out": ["export", "--variant", "sparse-softmax", "--format", "onnx", "--no-validate", "--out",
                         out / "artifact"],
    }


# --- a full disk: a real one (a small tmpfs) where this machine lets us mount one ------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards; skipped where mounting is not allowed (not root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root; the stand-in tests below cover a full disk")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(mount, leave: int = 0) -> None:
    """Fill the disk until at most ``leave`` bytes are free."""
    with open(mount / "filler", "wb", buffering=0) as file:
        try:
            while shutil.disk_usage(mount).free > leave:
                file.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_eval_out_bigger_than_the_disk_is_one_line_not_sigbus(workspace, small_disk, tmp_path):
    """The losses were written through a memory map: a full tmpfs killed eval with SIGBUS (exit
    135) and left the partial file. Now the space is reserved first; a subprocess, in case."""
    rng = np.random.default_rng(1)
    np.save(tmp_path / "big_logits.npy", rng.normal(size=(400_000, 5)).astype(np.float32))
    np.save(tmp_path / "big_labels.npy", rng.integers(0, 5, 400_000))
    code = "import sys\nfrom export.cli import main\nsys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, "eval", str(workspace / "in" / "art"), "--predictions",
                             str(tmp_path / "big_logits.npy"), "--labels", str(tmp_path / "big_labels.npy"),
                             "--out", str(small_disk / "losses.npy"), "--provider", "cpu"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    line = one_line_error(result, "eval", code=1)
    assert ENOSPC_TEXT in line and "--out" in line
    assert os.listdir(small_disk) == []


@pytest.mark.parametrize("command", ["eval --out", "eval --summary", "validate --report", "attach --out", "export --out"])
def test_full_disk_is_one_line_and_leaves_nothing(workspace, small_disk, command):
    fill(small_disk)
    before = snapshot(workspace)
    line = one_line_error(run_main(*commands(workspace, small_disk)[command]), command.split()[0], code=1)
    assert ENOSPC_TEXT in line and command.split()[1] in line
    assert os.listdir(small_disk) == ["filler"]
    assert snapshot(workspace) == before


def test_export_that_fills_the_disk_part_way_leaves_nothing(workspace, small_disk):
    fill(small_disk, leave=16 << 10)  # room for the directory and spec.json, not for the rest
    line = one_line_error(run_main(*commands(workspace, small_disk)["export --out"]), "export", code=1)
    assert ENOSPC_TEXT in line
    assert os.listdir(small_disk) == ["filler"]


# --- a full disk, stood in for: the file system's ENOSPC raised where the data reaches it ----------


@pytest.mark.parametrize("command", ["eval --out", "eval --summary", "validate --report", "attach --out", "export --out"])
def test_disk_full_stand_in_is_one_line_and_leaves_nothing(workspace, monkeypatch, command):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if command == "export --out":
        from export import exporter

        real = exporter.save_reference

        def half_written(path, *args):  # the disk fills up in the middle of the export
            real(path, *args)
            full()

        monkeypatch.setattr(exporter, "save_reference", half_written)
    else:
        monkeypatch.setattr(os, "fsync", full)  # as NFS reports it: when the data is flushed
    before = snapshot(workspace)
    line = one_line_error(run_main(*commands(workspace, workspace / "out")[command]), command.split()[0], code=1)
    assert os.strerror(errno.ENOSPC) in line
    assert snapshot(workspace) == before


# --- long names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["eval --out", "eval --summary", "validate --report", "attach --out", "export --out"])
def test_a_255_byte_output_name_works(workspace, command):
    """Temporary names are ``.NAME.partial-...``: a long NAME is shortened (hashed) there, so a
    legal name never becomes an illegal temporary one (ENAMETOOLONG)."""
    args = commands(workspace, workspace / "out")[command]
    suffix = args[-1].suffix
    args[-1] = args[-1].with_name("n" * (255 - len(suffix)) + suffix)
    result = run_main(*args)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (workspace / "out").iterdir()] == [args[-1].name]


# --- leftovers of killed runs ----------------------------------------------------------------------


def start_eval(workspace, out, rows=2_000_000):
    """A real eval process writing ``out``, slow enough to be caught in the middle."""
    rng = np.random.default_rng(2)
    np.save(workspace / "in" / "big_logits.npy", rng.normal(size=(rows, 5)).astype(np.float32))
    np.save(workspace / "in" / "big_labels.npy", rng.integers(0, 5, rows))
    code = "import sys\nfrom export.cli import main\nsys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, "eval", str(workspace / "in" / "art"), "--predictions",
                                str(workspace / "in" / "big_logits.npy"), "--labels", str(workspace / "in" / "big_labels.npy"),
                                "--out", str(out), "--batch-size", "1000", "--provider", "cpu"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(f".{out.name}.partial-") for p in out.parent.iterdir()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "eval never started writing"
        time.sleep(0.01)
    return process


def partial_name(out, host=None, pid=None, start=None):
    """A temporary name as a writer on ``host`` (ours by default) with ``pid`` would make."""
    name = writing._temporary(out, "partial").name
    stem, _, token = name.rpartition(".partial-")
    fields = token.split("-")
    fields[0] = host or fields[0]
    fields[2] = str(pid or fields[2])
    fields[3] = str(start if start is not None else fields[3])
    return f"{stem}.partial-{'-'.join(fields)}"


def test_sigkill_leftover_is_removed_by_the_next_run_and_nothing_else(workspace):
    out = workspace / "out" / "losses.npy"
    process = start_eval(workspace, out)
    process.kill()
    process.communicate()  # reaped: its pid is free
    leftover = [p.name for p in out.parent.iterdir()]
    assert len(leftover) == 1 and leftover[0].startswith(".losses.npy.partial-")
    other_host = "0" * 8 if writing._host() != "0" * 8 else "f" * 8
    keep = [
        partial_name(out),  # this very process: alive
        partial_name(out, host=other_host, pid=process.pid),  # another machine's: cannot be checked
        ".losses.npy.q8x1kz3w.partial",  # an older focalgraph's name: no writer recorded
        partial_name(out.with_name("other.npy"), pid=process.pid),  # another destination's
    ]
    for name in keep:
        (out.parent / name).write_bytes(b"x")
    inputs = workspace / "in"
    result = run_main("eval", inputs / "art", "--predictions", inputs / "logits.npy", "--labels", inputs / "labels.npy",
                      "--out", out, "--provider", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(keep + ["losses.npy"])


def test_sighup_is_an_interrupt_that_leaves_nothing(workspace):
    out = workspace / "out" / "losses.npy"
    process = start_eval(workspace, out)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and stderr.strip().splitlines() == ["focalgraph eval: interrupted; nothing was written"]
    assert list(out.parent.iterdir()) == []


def test_an_abandoned_old_directory_is_put_back_when_its_replacement_never_came(workspace):
    """A writer killed between moving the old artifact aside and moving the new one in."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = workspace / "out" / "artifact"
    old = out.parent / partial_name(out, pid=dead.pid, start=1).replace(".partial-", ".old-")
    partial = out.parent / partial_name(out, pid=dead.pid, start=1)
    shutil.copytree(workspace / "in" / "art", old)
    partial.mkdir()
    assert sorted(writing.remove_abandoned(out)) == [partial]
    assert sorted(p.name for p in out.parent.iterdir()) == ["artifact"]
    artifact.verify(out)


# --- two writers at once ---------------------------------------------------------------------------


def test_a_writer_that_lost_the_race_fails_and_leaves_the_winner_alone(workspace):
    out = workspace / "out" / "artifact"
    with pytest.raises(OutputError, match="another process"):
        with writing.staged(out, force=True) as stage:
            artifact.write_manifest(stage, "loser")
            with writing.staged(out, force=True) as other:
                artifact.write_manifest(other, "winner")
    assert artifact.verify(out)["spec"] == "winner"
    assert [p.name for p in out.parent.iterdir()] == ["artifact"]


@pytest.mark.slow
def test_two_exports_to_one_out_at_once_one_wins_the_other_fails_in_one_line(workspace):
    out = workspace / "out" / "artifact"
    code = "import sys\nfrom export.cli import main\nsys.exit(main(sys.argv[1:]))"
    processes = [
        subprocess.Popen([sys.executable, "-c", code, "export", "--variant", "sparse-softmax", "--gamma", gamma,
                          "--format", "onnx", "--no-validate", "--out", str(out)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for gamma in ("1", "3")
    ]
    results = [(p, *p.communicate(timeout=600)) for p in processes]
    winners = [p for p, _, _ in results if p.returncode == 0]
    assert len(winners) == 1, [(p.returncode, err) for p, _, err in results]
    for process, _, stderr in results:
        if process.returncode != 0:
            lines = stderr.strip().splitlines()
            assert process.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("focalgraph export: error: --out")
    spec = artifact.loss_artifact(out)
    assert spec.gamma == (1.0 if winners[0] is processes[0] else 3.0)
    assert [p.name for p in out.parent.iterdir()] == ["artifact"]


def test_an_interrupt_just_after_the_temporary_file_appears_leaves_nothing(tmp_path, monkeypatch):
    """The file exists from os.open on; an interrupt before it is registered used to leave it."""
    from export import sinks

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writing.os, "fdopen", interrupted)  # the step right after os.open
    with pytest.raises(KeyboardInterrupt):
        sinks.NpySink(tmp_path / "losses.npy", 4, np.float32)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
