"""The README's segmentation example runs as written, and its numbers are the formula's."""

import json

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest

import reference
from readme_blocks import readme_lines, run_lines, scratch_checkout

pytestmark = pytest.mark.slow


def test_segmentation_example_runs_from_training_to_onnx_evaluation(tmp_path):
    lines = readme_lines("### Segmentation", ".venv/bin/python examples/segmentation.py")
    assert [line.split()[1] for line in lines] == ["examples/segmentation.py", "export", "attach", "eval",
                                                    "examples/segmentation.py"]
    work = tmp_path / "segmentation"
    results = run_lines(lines, scratch_checkout(tmp_path), {"/tmp/focalgraph-segmentation": work})
    for line, result in zip(lines, results):
        assert result.returncode == 0, line + "\n" + result.stdout + result.stderr
    assert "18 of 18 figures agree with float64 numpy within 1e-05" in results[-1].stdout
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


def test_channels_first_segmentation_example_runs_with_an_axis_1_loss(tmp_path):
    lines = readme_lines("### Segmentation", ".venv/bin/python examples/segmentation.py --channels-first")
    assert [line.split()[1:3] for line in lines] == [
        ["examples/segmentation.py", "--channels-first"], ["export", "--variant"], ["attach", "--model"],
        ["eval", "/tmp/focalgraph-segmentation-nchw/loss"], ["examples/segmentation.py", "--channels-first"]]
    assert "--axis 1" in lines[1]
    work = tmp_path / "segmentation-nchw"
    replacements = {"/tmp/focalgraph-segmentation-nchw": work}
    results = run_lines(lines, scratch_checkout(tmp_path), replacements)
    for line, result in zip(lines, results):
        assert result.returncode == 0, line + "\n" + result.stdout + result.stderr
    assert "19 of 19 figures agree with float64 numpy within 1e-05" in results[-1].stdout
    graph = onnx.load(str(work / "segmenter_with_loss.onnx")).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.input) + list(graph.output)}
    assert dims["image"] == ["batch", 3, "height", "width"]
    assert dims["logits"] == ["batch", 4, "out_height", "out_width"]  # attached as it is, no transpose
    assert dims["labels"] == dims["focal_loss"] == ["batch", "out_height", "out_width"]
    # a second opinion from the tests' own float64 transcription, on the classes-last transpose
    table = pq.read_table(work / "outputs.parquet")
    logits, labels = np.array(table["logits"].to_pylist()), np.array(table["labels"].to_pylist())
    assert logits.shape == (24, 4, 8, 8) and labels.shape == (24, 8, 8)
    want = reference.sparse_softmax_focal(labels, np.moveaxis(logits, 1, -1), gamma=2.0, ignore_index=255)
    np.testing.assert_allclose(np.load(work / "per_image.npy"), want.sum(axis=(1, 2)), rtol=1e-5)
    summary = json.loads((work / "summary.json").read_text())
    assert summary["ignored_positions"] == (labels == 255).sum()
    assert [entry["count"] for entry in summary["per_class"]] == [(labels == c).sum() for c in range(4)]
    for entry in summary["per_class"]:
        assert entry["mean_loss"] == pytest.approx(want[labels == entry["class"]].mean(), rel=1e-5)
    # the check can fail: one number off by 1e-4 relative is caught
    summary["sum"] *= 1 + 1e-4
    (work / "summary.json").write_text(json.dumps(summary))
    tampered, = run_lines(lines[-1:], tmp_path, replacements)
    assert tampered.returncode == 1 and "FAIL eval sum" in tampered.stdout
    assert "18 of 19 figures agree" in tampered.stdout
