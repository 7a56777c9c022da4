"""Helpers shared by the export tests: exporting into a temporary directory, reading artifacts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from export import artifact
from export.cases import load_reference
from export.exporter import export
from focal_graph.spec import FocalSpec

FORMS = ("loss", "per_sample", "sum", "mean")
ROOT = Path(__file__).resolve().parent.parent


def exported(directory, spec: FocalSpec, **options):
    """Export ``spec`` to ``directory`` (CPU provider) and return the ExportResult."""
    return export(directory, spec=spec, provider="cpu", **options)


def reference(directory):
    spec = FocalSpec.from_json((Path(directory) / artifact.SPEC).read_text())
    return load_reference(Path(directory) / artifact.REFERENCE, spec, FORMS)


def run_cli(*args, python_prelude: str = "", env=None):
    """Run the ``focalgraph`` entry point in a fresh interpreter; ``python_prelude`` runs first
    (to make modules unimportable, say). Returns the CompletedProcess (text)."""
    code = f"{python_prelude}\nimport sys\nfrom export.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600,
    )


BLOCK_TENSORFLOW = "import sys\nfor name in ('tensorflow', 'tf2onnx', 'keras'):\n    sys.modules[name] = None"


def load_json(path):
    return json.loads(Path(path).read_text())


def assert_close(got, want, *, rtol, atol, what=""):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol,
                               err_msg=what)


class Ran:
    """What one in-process command run gave: ``returncode``, ``stdout``, ``stderr``."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_main(*args) -> Ran:
    """Run ``focalgraph ARGS`` in this process (no interpreter start-up): the exit code, and what
    it printed. An exception that escapes ``main`` is recorded as a traceback on stderr, which is
    what the command line would have printed. Signal handlers are restored afterwards."""
    import contextlib
    import io
    import signal
    import traceback

    from export.cli import main

    handlers = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGTERM", "SIGHUP")}
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main([str(arg) for arg in args])
    except BaseException:  # noqa: BLE001 -- anything that escapes is a failure to report, as a traceback
        stderr.write("Traceback (most recent call last):\n" + traceback.format_exc())
        code = 1
    finally:
        for name, handler in handlers.items():
            signal.signal(getattr(signal, name), handler)
    return Ran(code, stdout.getvalue(), stderr.getvalue())


def one_line_error(result, command: str, code: int = 2) -> str:
    """Assert ``result`` failed with ``code`` and exactly one line on stderr,
    ``focalgraph COMMAND: error: ...``, and no traceback; returns that line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith(f"focalgraph {command}: error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def snapshot(root) -> dict:
    """Every entry under ``root``: relative path -> (kind, mode, size, content hash), to prove
    that a command changed nothing it should not have."""
    import hashlib

    entries = {}
    root = Path(root)
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        if path.is_symlink():
            entries[path.relative_to(root).as_posix()] = ("link", os.readlink(path))
        elif path.is_dir():
            entries[path.relative_to(root).as_posix()] = ("dir", stat.st_mode)
        else:
            content = hashlib.sha256(path.read_bytes()).hexdigest() if stat.st_mode & 0o444 else None
            entries[path.relative_to(root).as_posix()] = ("file", stat.st_mode, stat.st_size, content)
    return entries


def linear_model(path, classes: int) -> None:
    """features (N, 3) -> logits (N, classes): a model to attach a loss to, built by hand with
    onnx.helper (no TensorFlow)."""
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, classes], np.linspace(-1, 1, 3 * classes).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["logits"])], "linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], initializer=[weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
