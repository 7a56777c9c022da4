"""The base install (no extras) into a fresh virtualenv runs eval, validate --reference-only,
inspect and attach on an artifact the full install exported; what needs an extra says which."""

import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporting import ROOT, exported, linear_model
from focal_graph.spec import FocalSpec

pytestmark = pytest.mark.slow
C = 4


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory):
    """A fresh venv with `pip install focalgraph` (no extras) from a copy of the sources."""
    root = tmp_path_factory.mktemp("base-install")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("export", "focal_graph"):  # a copy, so that the build leaves nothing in the checkout
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", root / "venv"], check=True, timeout=300)
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([root / "venv" / "bin" / "python", "-m", "pip", "install", "--quiet", str(source)],
                             capture_output=True, text=True, env=environment, timeout=900)
    assert install.returncode == 0, install.stderr
    return root, environment


def run_base(base_venv, *args):
    root, environment = base_venv
    return subprocess.run([root / "venv" / "bin" / "focalgraph", *map(str, args)], capture_output=True, text=True,
                          cwd=root, env=environment, timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("base-inputs")
    exported(root / "loss", FocalSpec(variant="sparse_softmax"))  # the full install: TensorFlow, tf2onnx, validated
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(64, C)).astype(np.float32)
    labels = rng.integers(0, C, 64)
    pq.write_table(pa.table({"logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.ravel()), C),
                             "labels": labels, "id": np.arange(64)}), root / "rows.parquet")
    linear_model(root / "linear.onnx", C)
    return root


def test_the_base_install_has_no_tensorflow(base_venv):
    root, environment = base_venv
    result = subprocess.run([root / "venv" / "bin" / "python", "-c", "import tensorflow"], capture_output=True,
                            text=True, env=environment, cwd=root)
    assert result.returncode != 0 and "No module named 'tensorflow'" in result.stderr
    listed = subprocess.run([root / "venv" / "bin" / "python", "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, env=environment).stdout.lower()
    assert "onnxruntime-gpu==" in listed and "pyarrow==" in listed and "tf2onnx" not in listed


def test_eval_validate_inspect_and_attach_run_in_the_base_install(base_venv, inputs, tmp_path):
    loss, rows = inputs / "loss", inputs / "rows.parquet"
    evaluated = run_base(base_venv, "eval", loss, "--predictions", f"{rows}:logits", "--labels", f"{rows}:labels",
                         "--id-column", "id", "--out", tmp_path / "losses", "--provider", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "samples 64" in evaluated.stdout
    assert pq.read_table(tmp_path / "losses").num_rows == 64
    validated = run_base(base_venv, "validate", loss, "--reference-only", "--provider", "cpu")
    assert validated.returncode == 0 and "PASS" in validated.stdout, validated.stderr
    inspected = run_base(base_venv, "inspect", loss)
    assert inspected.returncode == 0 and "sparse_softmax" in inspected.stdout, inspected.stderr
    attached = run_base(base_venv, "attach", "--model", inputs / "linear.onnx", "--output", "logits", "--loss", loss,
                        "--out", tmp_path / "combined.onnx")
    assert attached.returncode == 0, attached.stderr
    assert [o.name for o in onnx.load(str(tmp_path / "combined.onnx")).graph.output][:2] == ["logits", "focal_loss"]


@pytest.mark.parametrize("args, extra", [
    (["export", "--variant", "softmax", "--out", "{tmp}/exported"], "tensorflow"),
    (["validate", "{loss}"], "tensorflow"),
    (["embed", "--savedmodel", "{tmp}", "--output", "x", "--loss", "{loss}", "--out", "{tmp}/embedded"], "tensorflow"),
    (["eval", "{loss}", "--predictions", "{rows}:logits", "--labels", "{rows}:labels", "--engine", "ray", "--top-k", "0",
      "--out", "{tmp}/losses"], "ray"),
    (["eval", "{loss}", "--predictions", "{rows}:logits", "--labels", "{rows}:labels", "--engine", "spark",
      "--top-k", "0", "--out", "{tmp}/losses"], "spark"),
])
def test_what_needs_an_extra_names_it_in_one_line(base_venv, inputs, tmp_path, args, extra):
    args = [a.format(tmp=tmp_path, loss=inputs / "loss", rows=inputs / "rows.parquet") for a in args]
    result = run_base(base_venv, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'focalgraph[{extra}]'" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []
