"""The README's dense-detection example (examples/detection.py) runs as written, and its check
finds every loss figure within 1e-5 of the float64 reference."""

import json

import numpy as np
import pytest

from readme_blocks import readme_lines, run_lines, scratch_checkout


@pytest.mark.slow
def test_dense_detection_example_runs_and_every_figure_agrees(tmp_path):
    lines = readme_lines("### Worked example: dense detection", ".venv/bin/python examples/detection.py train")
    assert [line.split()[1] for line in lines] == ["examples/detection.py", "export", "attach", "eval",
                                                   "examples/detection.py"]
    work = tmp_path / "detection"
    results = run_lines(lines, scratch_checkout(tmp_path), {"/tmp/focalgraph-detection": work})
    for line, result in zip(lines, results):
        assert result.returncode == 0, line + "\n" + result.stdout + result.stderr
    check = results[-1].stdout
    assert "DIFFER" not in check and "19 of 19 figures agree" in check, check

    # the figures eval reports, against a float64 transcription written here (ignored anchors
    # are -1 in every class; positives are targets > 0.5)
    summary = json.loads((work / "summary.json").read_text())
    targets = np.load(work / "targets.npy").astype(np.float64)
    assert (targets == -1).any() and (targets == 1).any()
    positives = (targets > 0.5).sum(axis=(1, 2))
    assert positives[0] == 0  # a sample without positives: its normaliser is max(1, 0)
    assert summary["positives"] == positives.sum()
    assert summary["ignored_positions"] == (targets == -1).sum()
    assert summary["normalized"] == pytest.approx(summary["sum"] / positives.sum(), rel=1e-12)
