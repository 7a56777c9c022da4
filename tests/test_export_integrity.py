"""Artifacts are all or nothing, checked against their manifest, and conversion fails loudly."""

import json
import os
import shutil

import numpy as np
from pathlib import Path
import onnx
import pytest

from exporting import exported, load_json, run_cli
from export import artifact
from export.errors import ArtifactError, ConversionError, OutputError, UsageError
from export.exporter import export
from export.validation import validate
from focal_graph.spec import FocalSpec

pytestmark = pytest.mark.slow

SPEC = FocalSpec(variant="sparse_softmax", ignore_index=-1, rank=3)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("pristine") / "artifact"
    exported(out, SPEC)
    return out


@pytest.fixture
def copy(pristine, tmp_path):
    out = tmp_path / "artifact"
    shutil.copytree(pristine, out)
    return out


def edit_manifest(directory, change):
    manifest = load_json(directory / "manifest.json")
    change(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def sha256_of(path):
    return artifact.sha256(path)


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir())


def test_untouched_artifact_validates_from_the_reference_alone(copy):
    assert validate(copy, reference_only=True, provider="cpu")["passed"]


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:-10]), "model.onnx"),
        (lambda d: (d / "spec.json").write_text((d / "spec.json").read_text().replace("2.0", "3.0")), "spec.json"),
        (lambda d: (d / "reference.npz").unlink(), "reference.npz"),
        (lambda d: (d / "saved_model" / "saved_model.pb").write_bytes(b"x"), "saved_model.pb"),
        (lambda d: (d / "notes.txt").write_text("added"), "notes.txt"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json"),
        (lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text()[:100]), "manifest.json"),
        (lambda d: (d / "manifest.json").write_text(
            (d / "manifest.json").read_text().replace(sha256_of(d / "spec.json"), "0" * 64)), "spec.json"),
        (lambda d: edit_manifest(d, lambda m: m["files"].__setitem__("spec.json", {})), "manifest.json"),
        (lambda d: edit_manifest(d, lambda m: m["files"].__setitem__("../elsewhere.json", {"size": 1, "sha256": "0"})),
         "manifest.json"),
        (lambda d: (d / "link").symlink_to(d / "spec.json"), "link"),
    ],
    ids=["truncated-onnx", "edited-spec", "missing-reference", "edited-savedmodel", "extra-file", "no-manifest",
         "truncated-manifest", "edited-manifest-hash", "empty-manifest-entry", "manifest-entry-outside", "symlink"],
)
def test_damaged_artifact_is_refused_naming_the_file(copy, damage, named):
    damage(copy)
    with pytest.raises(ArtifactError, match=named):
        validate(copy, reference_only=True)
    result = run_cli("inspect", copy)
    assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr


def test_same_size_edit_is_caught_by_the_hash(copy):
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    result = run_cli("validate", copy, "--reference-only")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"focalgraph validate: error: {copy / 'model.onnx'}: sha256 differs from manifest.json (edited)"]


def test_validate_fails_when_onnx_runtime_computes_another_loss(copy, tmp_path):
    """A model.onnx from another gamma, re-manifested so the files look consistent: exit 1."""
    other = tmp_path / "other"
    exported(other, FocalSpec(variant="sparse_softmax", ignore_index=-1, rank=3, gamma=1.0), validate=False)
    shutil.copy(other / "model.onnx", copy / "model.onnx")
    artifact.write_manifest(copy, SPEC.name)
    result = run_cli("validate", copy, "--reference-only", "--provider", "cpu")
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    report = validate(copy, reference_only=True, provider="cpu")
    failed = {verdict["output"] for verdict in report["outputs"] if not verdict["passed"]}
    assert failed == {"loss", "per_sample", "sum", "mean"}


def test_conversion_that_raises_midway_leaves_nothing(tmp_path, monkeypatch):
    import tf2onnx

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure inside tf2onnx")

    monkeypatch.setattr(tf2onnx.convert, "from_function", broken)
    out = tmp_path / "deeper" / "artifact"
    with pytest.raises(ConversionError, match="simulated failure inside tf2onnx"):
        export(out, spec=SPEC, provider="cpu")
    assert not out.exists() and not (tmp_path / "deeper").exists()
    assert leftovers(tmp_path) == []


def test_interrupted_export_leaves_nothing_and_keeps_the_old_artifact(copy, monkeypatch):
    from export import tensorflow_reference

    before = load_json(copy / "manifest.json")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tensorflow_reference, "outputs_from_saved_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(copy, spec=FocalSpec(variant="softmax"), force=True, provider="cpu")
    assert load_json(copy / "manifest.json") == before
    assert leftovers(copy.parent) == ["artifact"]
    artifact.verify(copy)


def test_existing_out_is_refused_without_force_and_replaced_with_it(copy):
    with pytest.raises(UsageError, match="--force"):
        export(copy, variant="softmax", provider="cpu")
    assert FocalSpec.from_json((copy / "spec.json").read_text()) == SPEC
    export(copy, variant="softmax", provider="cpu", force=True, validate=False)
    assert FocalSpec.from_json((copy / "spec.json").read_text()).variant == "softmax"
    assert leftovers(copy.parent) == ["artifact"]


def test_an_op_tf2onnx_cannot_convert_is_named():
    """tf2onnx keeps Log1p as a TF op in the ONNX graph; the check names it."""
    import tensorflow as tf
    import tf2onnx

    from export.onnx_conversion import check
    from focal_graph.graph import input_signature

    spec = FocalSpec(variant="sparse_softmax")

    @tf.function(input_signature=input_signature(spec))
    def with_log1p(labels, logits):
        loss = tf.math.log1p(tf.reduce_sum(tf.exp(logits), axis=-1))
        return {"loss": loss, "per_sample": loss, "sum": tf.reduce_sum(loss), "mean": tf.reduce_mean(loss)}

    model, _ = tf2onnx.convert.from_function(with_log1p, input_signature=with_log1p.input_signature, opset=17)
    with pytest.raises(ConversionError, match="'Log1p'"):
        check(model, spec)


def test_a_captured_tensor_that_became_a_graph_input_is_named():
    import tensorflow as tf
    import tf2onnx

    from export.onnx_conversion import check
    from focal_graph.graph import input_signature

    spec = FocalSpec(variant="sparse_softmax")
    weights = tf.constant([1.0, 2.0, 3.0])  # eager: tf2onnx makes it a graph input

    @tf.function(input_signature=input_signature(spec))
    def captured(labels, logits):
        loss = tf.reduce_sum(logits * weights, axis=-1)
        return {"loss": loss, "per_sample": loss, "sum": tf.reduce_sum(loss), "mean": tf.reduce_mean(loss)}

    model, _ = tf2onnx.convert.from_function(captured, input_signature=captured.input_signature, opset=17)
    extra = [i.name for i in model.graph.input if i.name not in ("labels", "logits")]
    assert extra, "tf2onnx no longer turns captures into inputs; this test needs a new trigger"
    with pytest.raises(ConversionError, match=f"graph input '{extra[0]}'"):
        check(model, spec)


def test_rank3_export_has_no_global_max_pool(pristine):
    """tf2onnx's global-pool rewrite (ONNX Runtime rejects it for T=0) stays out."""
    model = onnx.load(str(pristine / artifact.ONNX))
    assert "GlobalMaxPool" not in {node.op_type for node in model.graph.node}
    cases = load_json(pristine / artifact.VALIDATION)["cases"]
    assert [6, 0, 5] in [case["shape"] for case in cases]


def test_validate_with_shapes_runs_tensorflow_on_them(copy):
    report = validate(copy, provider="cpu", shapes="2x3x4,0x1x4,1x0x4")
    assert report["passed"] and report["reference"] == "TensorFlow: saved_model"
    shapes = [case["shape"] for case in report["cases"]]
    assert shapes[:3] == [[2, 3, 4], [0, 1, 4], [1, 0, 4]]


def test_report_file_is_written(copy, tmp_path):
    path = tmp_path / "report.json"
    validate(copy, reference_only=True, provider="cpu", report=path)
    report = load_json(path)
    assert report["passed"] and report["onnxruntime"]["provider"] == "CPUExecutionProvider"
    assert report["onnxruntime"]["nodes_per_provider"]["CPUExecutionProvider"] > 0
    assert {v["output"] for v in report["outputs"]} == {"loss", "per_sample", "sum", "mean"}
    assert np.isfinite([v["max_abs_error"] for v in report["outputs"]]).all()


def test_force_replaces_only_an_artifact_or_an_empty_directory(tmp_path):
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "thesis.txt").write_text("precious")
    with pytest.raises(UsageError, match="thesis.txt was not written by focalgraph"):
        export(keep, variant="softmax", force=True, provider="cpu")
    assert (keep / "thesis.txt").read_text() == "precious"


@pytest.mark.parametrize("where", ["below-a-file", "working-directory", "parent-of-working-directory"])
def test_out_that_cannot_be_an_artifact_is_a_usage_error(copy, monkeypatch, where):
    out = {"below-a-file": copy / "spec.json" / "sub", "working-directory": Path("."), "parent-of-working-directory": Path("..")}[where]
    monkeypatch.chdir(copy / "saved_model")
    with pytest.raises(UsageError, match="--out"):
        export(out, variant="softmax", force=True, provider="cpu")
    artifact.verify(copy)


def test_a_failure_between_the_two_renames_puts_the_old_artifact_back(copy, monkeypatch):
    before = load_json(copy / "manifest.json")
    real_rename = os.rename
    calls = []

    def failing_second_rename(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError("simulated failure between the renames")
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", failing_second_rename)
    with pytest.raises(OutputError, match="simulated"):
        export(copy, variant="softmax", force=True, provider="cpu", validate=False)
    monkeypatch.undo()
    assert load_json(copy / "manifest.json") == before
    assert leftovers(copy.parent) == ["artifact"]


@pytest.mark.parametrize(
    "report, named",
    [("inside", "inside the artifact"), ("directory", "is a directory"), ("missing-parent", "not a writable directory")],
)
def test_bad_report_path_is_refused_before_validating(copy, tmp_path, report, named):
    path = {"inside": copy / "cuda.json", "directory": tmp_path, "missing-parent": tmp_path / "no" / "r.json"}[report]
    with pytest.raises(UsageError, match=named):
        validate(copy, reference_only=True, report=path)
    artifact.verify(copy)


def test_bad_provider_and_opset_without_onnx_are_refused_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="--provider"):
        export(tmp_path / "a", variant="softmax", provider="gpu", validate=False)
    with pytest.raises(UsageError, match="--opset: applies only with --format onnx"):
        export(tmp_path / "a", variant="softmax", format="savedmodel", opset=13)
    assert leftovers(tmp_path) == []


def test_nan_logits_at_ignored_positions_give_0_in_onnx_runtime_as_in_tensorflow(pristine):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(pristine / artifact.ONNX), providers=["CPUExecutionProvider"])
    logits = np.zeros((1, 3, 5), np.float32)
    logits[0, 0, 1], logits[0, 1, 2] = np.nan, np.inf
    labels = np.array([[-1, -1, 2]], np.int64)  # the non-finite rows are ignored
    loss, per_sample, total, mean = session.run(None, {"labels": labels, "logits": logits})
    np.testing.assert_allclose(loss, [[0.0, 0.0, np.log(5) * 0.8**2]], rtol=1e-6)
    np.testing.assert_allclose(mean, np.log(5) * 0.8**2, rtol=1e-6)
