"""The README's segmentation example runs as written, and its numbers are the formula's."""

import json
import os
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

import reference
from exporting import ROOT
from readme_blocks import readme_lines

pytestmark = pytest.mark.slow


def test_segmentation_example_runs_from_training_to_onnx_evaluation(tmp_path):
    lines = readme_lines("### Segmentation", ".venv/bin/python examples/segmentation.py")
    assert [line.split()[1] for line in lines] == ["examples/segmentation.py", "export", "attach", "eval",
                                                    "examples/segmentation.py"]
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the commands call .venv/bin/..., as a newcomer would
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    work = tmp_path / "segmentation"
    script = "\n".join(lines).replace("/tmp/focalgraph-segmentation", str(work))
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "18 of 18 figures agree with float64 numpy within 1e-05" in result.stdout
    # a second opinion, from the tests' own float64 transcription
    table = pq.read_table(work / "outputs.parquet")
    logits, labels = np.array(table["logits"].to_pylist()), np.array(table["labels"].to_pylist())
    assert logits.shape == (24, 8, 8, 4) and labels.shape == (24, 8, 8)
    want = reference.sparse_softmax_focal(labels, logits, gamma=2.0, ignore_index=255)
    np.testing.assert_allclose(np.load(work / "per_image.npy"), want.sum(axis=(1, 2)), rtol=1e-5)
    summary = json.loads((work / "summary.json").read_text())
    assert summary["ignored_positions"] == (labels == 255).sum()
    for entry in summary["per_class"]:
        assert entry["mean_loss"] == pytest.approx(want[labels == entry["class"]].mean(), rel=1e-5)
    assert (work / "classes.png").read_bytes().startswith(b"\x89PNG")
