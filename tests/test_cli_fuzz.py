"""Property-based fuzzing of the command line (issue 10): options and small input files drawn by
hypothesis, each run held to the three promises.

1. Exit 0 with correct output; or exit 2 (bad input) or 1 (a failed check) with one line on
   stderr, ``focalgraph COMMAND: error: ...``, and no traceback.
2. Nothing written on failure (no output, no temporary, no directory).
3. No input changed, whatever the outcome.

Runs in process (``main``), on copies in a fresh directory per example. Export runs with
``--format onnx --no-validate`` to stay quick; max_examples stay small.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import reference
from exporting import run_main, snapshot
from export import artifact
from export.options import spec_from_options
from export.validation import validate

FUZZ = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def fresh(tmp_path, onnx_artifact) -> Path:
    """A new directory holding a copy of the artifact (``art``), a symlink into it (``link``), a
    foreign directory (``webapp``) and a plain file (``notes.txt``)."""
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    shutil.copytree(onnx_artifact, root / "art")
    (root / "link").symlink_to(root / "art", target_is_directory=True)
    (root / "webapp" / "src").mkdir(parents=True)
    (root / "webapp" / "manifest.json").write_text('{"name": "PWA"}')
    (root / "webapp" / "src" / "thesis.tex").write_text("work")
    (root / "notes.txt").write_text("notes")
    return root


def check_promises(result, command: str, root: Path, before: dict, outputs=()) -> bool:
    """Promises 1 to 3 for one run; True when it succeeded (the caller then checks its output).
    ``outputs``: the paths (relative to ``root``, symlinks followed) a successful run, or a failed
    check (validate's report), may create or replace."""
    assert "Traceback" not in result.stderr, result.stderr
    event(f"exit {result.returncode}")
    after = snapshot(root)
    lines = result.stderr.strip().splitlines()
    failed_check = result.returncode == 1 and command == "validate" and not lines
    if result.returncode == 0 or failed_check:
        if failed_check:
            assert "FAIL" in result.stdout  # a failed check: the report, exit 1
        changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
        targets = resolved(root, outputs)
        allowed = {name for name in changed if any(
            name == out or name.startswith(out + "/") or (out.startswith(name + "/") and name not in before)
            for out in targets)}
        assert changed == allowed, f"changed beyond the outputs: {sorted(changed - allowed)}"
        return result.returncode == 0
    assert result.returncode in (1, 2), (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"focalgraph {command}: error: "), result.stderr
    assert after == before, "a failed run changed files"
    return False


def resolved(root: Path, outputs) -> list:
    """The outputs as paths relative to ``root`` once symlinks are followed (outside it: left out)."""
    names = []
    for out in outputs:
        try:
            names.append(Path(os.path.realpath(root / out)).relative_to(root.resolve()).as_posix())
        except ValueError:
            pass
    return names


# --- export ----------------------------------------------------------------------------------------

def mostly(good, bad):
    """Draw a good value about three times in four: enough runs get through to check the output."""
    return st.sampled_from(list(good) * 3 + list(bad))


SOURCES = mostly([["--variant", "sparse-softmax"], ["--variant", "softmax"], ["--variant", "sigmoid"],
                  ["--preset", "multi-category"], ["--spec", "art/spec.json"], ["--spec", "link/spec.json"]],
                 [["--preset", "sparse-softmax"], ["--preset", "focal-lovasz"], [], ["--variant", "softmax", "--preset", "x"],
                  ["--spec", "notes.txt"], ["--spec", "/dev/zero"], ["--spec", "missing.json"]])
VALUES = {
    "--classes": mostly(["3"], ["1", "0", "-1", "x", "99999999999999999999"]),
    "--gamma": mostly(["2", "0", "0.5,1,2"], ["-1", "nan", "inf", "1e300", "two", "", "2,"]),
    "--alpha": mostly(["0.25", "0.2,0.3,0.5"], ["1e300", "-1", "nan"]),
    "--class-weight": mostly(["1,2,3"], ["0", "1e39,1,1", "x"]),
    "--class-counts": mostly(["10,20,30"], ["1e308,1e308", "0,1", "True,2"]),
    "--weighting": mostly(["effective_number"], ["sqrt"]),
    "--beta": mostly(["0.9"], ["1", "-0.1", "x"]),
    "--from-logits": st.just(None),
    "--from-probs": st.just(None),
    "--label-smoothing": mostly(["0.1"], ["1.5", "nan"]),
    "--ignore-index": mostly(["-1", "255"], ["x", "99999999999999999999"]),
    "--epsilon": mostly(["1e-7"], ["0", "0.6"]),
    "--reduction": mostly(["none", "sum", "mean"], ["avg"]),
    "--rank": mostly(["2", "3"], ["1", "9", "300"]),
    "--dtype": mostly(["float32", "float16", "float64"], ["bfloat16", "int8"]),
    "--opset": mostly(["13", "17"], ["19", "12"]),
}
OUTS = mostly(["new", "deeper/new", "empty"], ["art", "webapp", "notes.txt", "link/sub", "link", "."])
CLICK_TYPES = {"--classes": int, "--ignore-index": int, "--rank": int, "--beta": float, "--label-smoothing": float,
               "--epsilon": float}


@st.composite
def export_lines(draw):
    source = draw(SOURCES)
    options = {}
    for name in draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=3, unique=True)):
        options[name] = draw(VALUES[name])
    return source, options, draw(OUTS), draw(st.booleans())


@FUZZ
@given(line=export_lines())
def test_export_keeps_the_three_promises(tmp_path, onnx_artifact, monkeypatch, line):
    source, options, out, force = line
    root = fresh(tmp_path, onnx_artifact)
    (root / "empty").mkdir()
    monkeypatch.chdir(root)
    args = list(source)
    for name, value in options.items():
        args += [name] if value is None else [name, value]
    before = snapshot(root)
    result = run_main("export", *args, "--format", "onnx", "--no-validate", "--provider", "cpu", "--out", out,
                      *(["--force"] if force else []))
    if not check_promises(result, "export", root, before, outputs=[out]):
        return
    spec = artifact.loss_artifact(root / out, onnx=True)
    kwargs = {key[2:].replace("-", "_"): value for key, value in zip(source[::2], source[1::2])}
    for name, value in options.items():
        if name in ("--from-logits", "--from-probs"):
            kwargs["from_logits"] = name == "--from-logits"
        elif name != "--opset":
            kwargs[name[2:].replace("-", "_")] = CLICK_TYPES.get(name, str)(value)
    assert spec == spec_from_options(**kwargs)  # the options' loss, as the library reads them
    assert validate(root / out, reference_only=True, provider="cpu")["passed"]  # ONNX Runtime matches TensorFlow


# --- inspect and validate --reference-only ------------------------------------------------------------

DAMAGE = {
    "none": lambda art: None,
    "spec edited": lambda art: (art / "spec.json").write_text("{}"),
    "file added": lambda art: (art / "extra.txt").write_text("x"),
    "model truncated": lambda art: (art / "model.onnx").write_bytes((art / "model.onnx").read_bytes()[:100]),
    "manifest garbage": lambda art: (art / "manifest.json").write_text("[1, 2"),
    "reference removed": lambda art: (art / "reference.npz").unlink(),
}
DAMAGES = mostly(["none"], sorted(set(DAMAGE) - {"none"}))
TARGETS = mostly(["art", "link"], ["webapp", "notes.txt", "missing", "empty", "."])


@FUZZ
@given(damage=DAMAGES, target=TARGETS, as_json=st.booleans())
def test_inspect_keeps_the_three_promises(tmp_path, onnx_artifact, monkeypatch, damage, target, as_json):
    root = fresh(tmp_path, onnx_artifact)
    (root / "empty").mkdir()
    DAMAGE[damage](root / "art")
    monkeypatch.chdir(root)
    before = snapshot(root)
    result = run_main("inspect", target, *(["--json"] if as_json else []))
    if check_promises(result, "inspect", root, before):
        assert damage == "none" and target in ("art", "link")
        if as_json:
            assert json.loads(result.stdout)["manifest"]["verified"] is True


REPORTS = mostly([None, "report.json", "notes.txt"], ["art/report.json", "link/report.json", "webapp", "art/model.onnx",
                                                    "missing/report.json", "/dev/null", "report.json/"])
NUMBERS = mostly([None, "1e-5", "0", "1"], ["-1", "nan", "inf", "x"])


@FUZZ
@given(damage=DAMAGES, target=TARGETS, report=REPORTS, atol=NUMBERS, rtol=NUMBERS,
       shapes=mostly([None], ["2x3", "x"]), provider=mostly(["cpu", "auto"], ["tpu"]))
def test_validate_reference_only_keeps_the_three_promises(tmp_path, onnx_artifact, monkeypatch, damage, target, report,
                                                          atol, rtol, shapes, provider):
    root = fresh(tmp_path, onnx_artifact)
    (root / "empty").mkdir()
    DAMAGE[damage](root / "art")
    monkeypatch.chdir(root)
    args = ["validate", target, "--reference-only", "--provider", provider]
    for flag, value in (("--report", report), ("--atol", atol), ("--rtol", rtol), ("--shapes", shapes)):
        args += [] if value is None else [flag, value]
    before = snapshot(root)
    result = run_main(*args)
    if check_promises(result, "validate", root, before, outputs=[report] if report else []):
        assert damage == "none" and target in ("art", "link") and "PASS" in result.stdout
        if report:
            assert json.loads((root / report).read_text())["passed"] is True


# --- eval on small generated files ------------------------------------------------------------------


@st.composite
def eval_inputs(draw):
    rows = draw(st.integers(0, 12))
    classes = draw(st.integers(1, 6))
    dtype = draw(mostly(["float32", "float64", "float16"], ["int32"]))
    logits = np.asarray(draw(st.lists(st.floats(-30, 30, width=32), min_size=rows * classes, max_size=rows * classes)),
                        np.float64).reshape(rows, classes).astype(dtype)
    if rows and draw(mostly([False], [True])) and dtype != "int32":
        logits.flat[draw(st.integers(0, logits.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    label_rows = rows + draw(mostly([0], [1, -1])) if rows else rows
    labels = np.asarray(draw(st.lists(st.integers(-1, classes - 1) if draw(st.booleans()) else st.integers(-2, classes),
                                      min_size=label_rows, max_size=label_rows)), np.int64)
    labels = labels.astype(draw(mostly(["int64", "int32"], ["float32"])))
    layout = draw(mostly(["npy", "npz", "npz:logits"], ["npz:missing"]))
    return logits, labels, layout


OUTPUTS = mostly([None, "losses.npy", "summary.json"], ["art/losses.npy", "link/losses.npy", "logits.npy", "labels.npy",
                                                     "webapp", "missing/x.npy", "/dev/null"])


@FUZZ
@given(inputs=eval_inputs(), out=OUTPUTS, summary=OUTPUTS, batch_size=mostly(["1", "3", "4096"], ["0", "x"]),
       top_k=mostly(["0", "3"], ["-1"]))
def test_eval_keeps_the_three_promises(tmp_path, onnx_artifact, monkeypatch, inputs, out, summary, batch_size, top_k):
    logits, labels, layout = inputs
    root = fresh(tmp_path, onnx_artifact)
    monkeypatch.chdir(root)
    if layout == "npy":
        np.save(root / "logits.npy", logits)
        predictions = "logits.npy"
    else:
        np.savez(root / "logits.npz", logits=logits)
        predictions = "logits.npz" + layout[3:]
    np.save(root / "labels.npy", labels)
    args = ["eval", "art", "--predictions", predictions, "--labels", "labels.npy", "--provider", "cpu",
            "--batch-size", batch_size, "--top-k", top_k]
    args += [] if out is None else ["--out", out]
    args += [] if summary is None else ["--summary", summary]
    before = snapshot(root)
    result = run_main(*args)
    if not check_promises(result, "eval", root, before, outputs=[p for p in (out, summary) if p]):
        return
    # exit 0: the inputs were valid, and the output is the formula's (sparse softmax, gamma 2, ignore_index -1)
    assert logits.dtype.kind == "f" and np.isfinite(logits).all() and len(labels) == len(logits)
    assert labels.dtype.kind in "iu"
    assert ((labels == -1) | ((labels >= 0) & (labels < logits.shape[1]))).all()
    want = reference.sparse_softmax_focal(labels.astype(np.int64), logits.astype(np.float32), gamma=2.0, ignore_index=-1)
    if out is not None:
        np.testing.assert_allclose(np.load(root / out), want, rtol=2e-5, atol=1e-6)
    if summary is not None:
        written = json.loads((root / summary).read_text())
        assert written["count"] == len(logits) and written["sum"] == pytest.approx(want.sum(), rel=1e-4, abs=1e-5)
