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
