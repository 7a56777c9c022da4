"""eval of a weighted artifact reports the artifact's own figures (issue 21, item 2): its
``mean`` is sum(w l) / sum(w), and every mean over positions eval reports is that mean on the
positions it covers, checked against the artifact's ONNX graph in bare ONNX Runtime on the same
rows and against a float64 numpy formula."""

import json

import numpy as np
import onnxruntime
import pytest

import reference
from exporting import run_cli
from export.exporter import export
from focal_graph.spec import FocalSpec

N, C = 64, 5
SPECS = {
    "sparse": FocalSpec(variant="sparse_softmax", weighted=True, ignore_index=-1),
    "sigmoid": FocalSpec(variant="sigmoid", weighted=True, alpha=0.25),
}


@pytest.fixture(scope="module", params=list(SPECS))
def weighted(request, tmp_path_factory):
    """A weighted artifact, rows, weights far from 1 (so that sum(w) is not the positions'
    count), and eval's summary of them from a fresh process."""
    name = request.param
    root = tmp_path_factory.mktemp(f"weighted-{name}")
    export(root / "loss", spec=SPECS[name], format="onnx", validate=False, provider="cpu")
    rng = np.random.default_rng(21)
    logits = (3 * rng.normal(size=(N, C))).astype(np.float32)
    if name == "sparse":
        labels = rng.integers(0, C, N)
        labels[::7] = -1  # ignored positions: in no figure, their weights in no denominator
        weights = rng.uniform(0.0, 0.5, N).astype(np.float32)
    else:
        labels = (rng.uniform(size=(N, C)) < 0.3).astype(np.float32)
        weights = rng.uniform(0.0, 0.5, (N, C)).astype(np.float32)
    for file, array in (("logits", logits), ("labels", labels), ("weights", weights)):
        np.save(root / f"{file}.npy", array)
    result = run_cli("eval", root / "loss", "--predictions", root / "logits.npy", "--labels", root / "labels.npy",
                     "--weights", root / "weights.npy", "--summary", root / "summary.json", "--provider", "cpu")
    assert result.returncode == 0, result.stderr
    summary = json.loads((root / "summary.json").read_text())
    return name, root, logits, labels, weights, summary, result.stdout


def onnx_forms(root, labels, logits, weights):
    """The artifact's own outputs, from its model.onnx in bare ONNX Runtime (CPU)."""
    session = onnxruntime.InferenceSession(str(root / "loss" / "model.onnx"), providers=["CPUExecutionProvider"])
    given = {"labels": labels, "targets": labels, "logits": logits, "weights": weights}
    feed = {value.name: given[value.name] for value in session.get_inputs()}
    outputs = [value.name for value in session.get_outputs()]
    return dict(zip(outputs, session.run(None, feed)))


def float64_elements(name, labels, logits):
    if name == "sparse":
        return reference.sparse_softmax_focal(labels, logits, ignore_index=-1)
    return reference.sigmoid_focal(labels, logits, alpha=0.25)


def test_mean_per_position_is_the_weighted_artifacts_own_mean(weighted):
    name, root, logits, labels, weights, summary, _ = weighted
    own = onnx_forms(root, labels, logits, weights)
    counted = labels != -1 if name == "sparse" else np.ones(labels.shape, bool)
    elements = float64_elements(name, labels, logits)
    formula = (weights * elements)[counted].sum() / weights[counted].astype(np.float64).sum()
    np.testing.assert_allclose(summary["mean_per_position"], float(own["mean"]), rtol=2e-6)
    np.testing.assert_allclose(summary["mean_per_position"], formula, rtol=2e-6)
    np.testing.assert_allclose(summary["sum"], float(own["sum"]), rtol=2e-6)
    np.testing.assert_allclose(summary["weight_sum"], weights[counted].astype(np.float64).sum(), rtol=1e-12)
    # far from the unweighted figure sum(w l) / positions the summary gave before
    assert abs(summary["mean_per_position"] - summary["sum"] / counted.sum()) > 0.5 * summary["mean_per_position"]


def test_each_class_mean_is_the_artifacts_mean_over_that_classs_positions(weighted):
    name, root, logits, labels, weights, summary, _ = weighted
    elements = float64_elements(name, labels, logits)
    for entry in summary["per_class"]:
        c = entry["class"]
        if name == "sparse":
            mask = labels == c
            parts = {"": mask}
        else:
            mask = np.zeros(labels.shape, bool)
            mask[:, c] = True
            parts = {"": mask, "positives": mask & (labels > 0.5), "negatives": mask & (labels <= 0.5)}
        for part, where in parts.items():
            figures = entry[part] if part else entry
            own = onnx_forms(root, labels, logits, np.where(where, weights, 0).astype(np.float32))
            formula = (weights * elements)[where].sum() / weights[where].astype(np.float64).sum()
            np.testing.assert_allclose(figures["mean_loss"], float(own["mean"]), rtol=2e-6, err_msg=f"{c} {part}")
            np.testing.assert_allclose(figures["mean_loss"], formula, rtol=2e-6, err_msg=f"{c} {part}")
            assert figures["count"] == int(where.sum())


def test_the_summary_says_which_figures_weights_enter(weighted):
    *_, summary, stdout = weighted
    assert "sum(w * loss) / sum(w)" in summary["weights_enter"] and "counts are positions" in summary["weights_enter"]
    assert f"weighted mean per position, sum(w loss) / sum(w), {summary['mean_per_position']:.6g}" in stdout
