"""An artifact's files must describe one loss: spec.json, model.onnx (graph and metadata), the
SavedModel and reference.npz. A file edited behind a recomputed manifest is named (issue 10.3)."""

import json
import shutil

import numpy as np
import onnx
import pytest

import reference
from exporting import ROOT, exported, load_json, run_cli
from readme_blocks import readme_lines, run_lines
from export import artifact
from export.attach import attach
from export.consistency import check_artifact
from export.errors import ArtifactError, UsageError
from export.formula import spec_forms
from export.runtime import LossSession
from export.validation import validate
from focal_graph.spec import FocalSpec

C = 5
SPEC = FocalSpec(variant="sparse_softmax", gamma=2.0)
OTHER = FocalSpec(variant="sparse_softmax", gamma=0.5)


# ---------------------------------------------------------------------------------------------
# The formula that confirms a spec: float64 numpy, checked against the tests' own transcriptions


@pytest.mark.parametrize("spec, transcription", [
    (FocalSpec(variant="sparse_softmax", gamma=[0.5, 1.0, 2.0, 3.0], alpha=0.25, ignore_index=-1, dtype="float64"),
     lambda y, x: reference.sparse_softmax_focal(y, x, gamma=[0.5, 1.0, 2.0, 3.0], alpha=0.25, ignore_index=-1)),
    (FocalSpec(variant="softmax", gamma=1.5, label_smoothing=0.1, class_weight=[1, 2, 3, 4], dtype="float64"),
     lambda y, x: reference.softmax_focal(y, x, gamma=1.5, label_smoothing=0.1, class_weight=[1, 2, 3, 4])),
    (FocalSpec(variant="sigmoid", gamma=2.0, alpha=[0.1, 0.2, 0.3, 0.4], label_smoothing=0.2, dtype="float64"),
     lambda y, x: reference.sigmoid_focal(y, x, gamma=2.0, alpha=[0.1, 0.2, 0.3, 0.4], label_smoothing=0.2)),
    (FocalSpec(variant="sigmoid", from_logits=False, gamma=0.5, epsilon=1e-4, dtype="float64"),
     lambda y, x: reference.sigmoid_focal(y, 1 / (1 + np.exp(-x)), gamma=0.5, from_logits=False, epsilon=1e-4)),
], ids=["sparse", "softmax", "sigmoid", "sigmoid-probabilities"])
def test_formula_matches_the_tests_own_transcription(rng, spec, transcription):
    logits = rng.normal(size=(6, 3, 4)) * 3
    if spec.sparse:
        y_true = rng.integers(-1, 4, size=(6, 3))
    else:
        y_true = (rng.uniform(size=(6, 3, 4)) < 0.4).astype(np.float64)
    predictions = logits if spec.from_logits else 1 / (1 + np.exp(-logits))
    spec = FocalSpec.from_dict({**spec.to_dict(), "rank": 3})
    want = transcription(y_true, logits)
    got = spec_forms(spec, y_true, predictions)
    np.testing.assert_allclose(got["loss"], want, rtol=1e-12)
    np.testing.assert_allclose(got["per_sample"], want.reshape(6, -1).sum(axis=1), rtol=1e-12)
    counted = y_true != -1 if spec.sparse else np.ones(want.shape, bool)
    np.testing.assert_allclose(got["mean"], want[counted].sum() / counted.sum(), rtol=1e-12)


def test_formula_of_seed_001_matches_its_transcription(rng):
    counts = (100, 200, 50, 10)
    spec = FocalSpec(preset="multi_category", class_counts=counts, dtype="float64")
    probabilities = rng.uniform(0.01, 0.99, size=(8, 4))
    targets = (rng.uniform(size=(8, 4)) < 0.5).astype(np.float64)
    np.testing.assert_allclose(spec_forms(spec, targets, probabilities)["loss"],
                               reference.seed001(targets, probabilities, counts), rtol=1e-12)


def test_formula_refuses_inputs_that_are_not_the_specs():
    with pytest.raises(ValueError, match="rank 3"):
        spec_forms(SPEC, np.zeros((2, 3), np.int64), np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="fixes C=3"):
        spec_forms(FocalSpec(variant="sparse_softmax", num_classes=3), np.zeros(2, np.int64), np.zeros((2, 4)))


# ---------------------------------------------------------------------------------------------
# Artifacts whose files were edited behind a recomputed manifest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("consistency") / "artifact"
    exported(out, SPEC)
    return out


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """The same loss with gamma 0.5: the source of swapped files."""
    out = tmp_path_factory.mktemp("consistency") / "other"
    exported(out, OTHER, validate=False)
    return out


@pytest.fixture
def copy(pristine, tmp_path):
    out = tmp_path / "artifact"
    shutil.copytree(pristine, out)
    return out


def remanifest(directory):
    """What anyone who can write the files can do: recompute the manifest."""
    manifest = load_json(directory / artifact.MANIFEST)
    details = {key: manifest[key] for key in ("saved_model_xla",) if key in manifest}
    artifact.write_manifest(directory, manifest["spec"], details)


def edit_spec(directory, **changes):
    data = load_json(directory / artifact.SPEC)
    data.update(changes)
    (directory / artifact.SPEC).write_text(json.dumps(data, indent=2) + "\n")
    remanifest(directory)


def edit_metadata(path, **changes):
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "focalgraph.spec":
            prop.value = json.dumps({**json.loads(prop.value), **changes})
    onnx.save(model, str(path))


def swap(directory, other, name):
    target = directory / name
    if target.is_dir():
        shutil.rmtree(target)
        shutil.copytree(other / name, target)
    else:
        shutil.copy(other / name, target)
    remanifest(directory)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--reference-only"]], ids=["tensorflow", "reference-only"])
def test_edited_spec_fails_validate_naming_spec_json(copy, mode):
    """The issue's case: gamma 2 -> 0.5 in spec.json, manifest recomputed; both modes used to pass."""
    edit_spec(copy, gamma=0.5)
    artifact.verify(copy)  # the manifest check alone cannot see it
    result = run_cli("validate", copy, "--provider", "cpu", *mode)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == f"  FAIL: {copy / 'spec.json'} disagrees with the rest of the artifact"
    assert "gamma 0.5 against 2.0" in result.stdout


@pytest.mark.slow
def test_the_readmes_edited_spec_example_fails_both_validations(pristine, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(pristine, repository / "artifacts" / "variant-sparse-softmax")
    (repository / ".venv").symlink_to(ROOT / ".venv")
    lines = readme_lines("### Validation", "cp -r artifacts/variant-sparse-softmax /tmp/edited")
    results = run_lines(lines, repository, {"/tmp/edited": tmp_path / "edited"})
    assert [result.returncode for result in results] == [0, 0, 0, 1, 1], [r.stderr for r in results]
    for result in results[-2:]:
        assert result.stdout.rstrip().endswith(f"FAIL: {tmp_path / 'edited' / 'spec.json'} disagrees with the rest of the artifact")


@pytest.mark.slow
def test_untouched_artifact_agrees_in_both_modes(copy):
    for reference_only in (False, True):
        report = validate(copy, provider="cpu", reference_only=reference_only)
        assert report["passed"] and report["consistency"]["passed"], report["consistency"]["message"]
    witnesses = {w["name"] for w in validate(copy, provider="cpu")["consistency"]["witnesses"]}
    assert witnesses == {"spec.json", "model.onnx", "model.onnx metadata", "saved_model", "reference.npz"}


@pytest.mark.slow
@pytest.mark.parametrize("edit, named, modes", [
    (lambda d, o: swap(d, o, "model.onnx"), "model.onnx", (False, True)),
    (lambda d, o: swap(d, o, "reference.npz"), "reference.npz", (False, True)),
    (lambda d, o: swap(d, o, "saved_model"), "saved_model", (False,)),
    (lambda d, o: (edit_metadata(d / "model.onnx", gamma=0.5), remanifest(d)), "model.onnx", (False, True)),
], ids=["model.onnx", "reference.npz", "saved_model", "onnx-metadata"])
def test_a_swapped_or_edited_file_is_the_one_named(copy, other, edit, named, modes):
    edit(copy, other)
    for reference_only in modes:
        report = validate(copy, provider="cpu", reference_only=reference_only)
        assert not report["passed"]
        assert report["consistency"]["files"] == [named], report["consistency"]["message"]


@pytest.mark.slow
def test_a_field_no_output_shows_is_caught_by_the_metadata(copy):
    edit_spec(copy, reduction="mean")
    report = validate(copy, provider="cpu", reference_only=True)
    assert not report["passed"]
    assert "reduction 'mean' against 'none'" in report["consistency"]["message"]
    assert report["consistency"]["files"] == ["spec.json", "model.onnx"]


@pytest.mark.slow
def test_inspect_says_the_files_disagree_and_exits_1(copy):
    edit_spec(copy, gamma=0.5)
    result = run_cli("inspect", copy)
    assert result.returncode == 1
    assert f"FILES DISAGREE: {copy / 'spec.json'}" in result.stdout


@pytest.mark.slow
def test_eval_refuses_an_edited_spec_naming_it(copy, tmp_path):
    edit_spec(copy, ignore_index=3)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(20, C)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, C, 20))
    result = run_cli("eval", copy, "--predictions", tmp_path / "x.npy", "--labels", tmp_path / "y.npy",
                     "--provider", "cpu", "--summary", tmp_path / "summary.json")
    assert result.returncode == 2
    assert result.stderr.startswith(f"focalgraph eval: error: {copy / 'spec.json'}: ")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "summary.json").exists()
    with pytest.raises(ArtifactError, match="spec.json"):
        LossSession(copy, "cpu")


def logits_model(path):
    """A model whose output ``logits`` is its input ``features`` (N, 5)."""
    features = onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", C])
    logits = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", C])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["features"], ["logits"])], "model", [features], [logits])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.slow
def test_attach_refuses_an_edited_spec_naming_it(copy, tmp_path):
    edit_spec(copy, gamma=0.5)
    with pytest.raises(ArtifactError, match="spec.json"):
        attach(model=logits_model(tmp_path / "m.onnx"), output="logits", loss=copy, out=tmp_path / "c.onnx")
    assert not (tmp_path / "c.onnx").exists()


@pytest.mark.slow
def test_bare_onnx_whose_metadata_lies_is_refused_by_eval_and_attach(pristine, tmp_path):
    """The issue's case: metadata saying ignore_index=3 made eval leave class 3 out of its summary."""
    lying = tmp_path / "lying.onnx"
    shutil.copy(pristine / "model.onnx", lying)
    edit_metadata(lying, ignore_index=3)
    with pytest.raises(UsageError, match="ignore_index=3"):
        LossSession(lying, "cpu")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(20, C)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, C, 20))
    result = run_cli("eval", lying, "--predictions", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--provider", "cpu")
    assert result.returncode == 2 and result.stderr.startswith(f"focalgraph eval: error: {lying}: its focalgraph.spec metadata")
    with pytest.raises(UsageError, match="does not describe the loss its graph computes"):
        attach(model=logits_model(tmp_path / "m.onnx"), output="logits", loss=lying, out=tmp_path / "c.onnx")
    honest = LossSession(pristine / "model.onnx", "cpu")  # the untouched file still works
    assert honest.spec == SPEC


@pytest.mark.slow
@pytest.mark.parametrize("spec", [
    FocalSpec(preset="multilabel_lsr", class_counts=(5, 10, 20, 40)),
    FocalSpec(preset="multi_category", class_counts=(100, 200, 50, 10), rank=3, gamma=0.5),
    FocalSpec(preset="sparse_softmax", alpha=(1.0, 2.0, 0.5, 1.0)),
    FocalSpec(variant="sparse_softmax", rank=4, ignore_index=255, reduction="mean", dtype="float16"),
    FocalSpec(variant="sparse_softmax", from_logits=False, gamma=[0.5, 1, 2], class_counts=[1, 2, 3],
              weighting="effective_number", beta=0.9),
    FocalSpec(variant="softmax", gamma=1.5, label_smoothing=0.1, alpha=[1, 2, 3], rank=3),
    FocalSpec(variant="softmax", from_logits=False, class_weight=[1, 2, 3, 4], epsilon=1e-4),
    FocalSpec(variant="sigmoid", gamma=2.0, alpha=0.25, rank=5),
    FocalSpec(variant="sigmoid", from_logits=False, alpha=[0.1, 0.2, 0.3], label_smoothing=0.2, dtype="float16"),
], ids=lambda spec: spec.name)
def test_the_formula_agrees_with_every_kind_of_exported_loss(tmp_path, spec):
    """The float64 formula confirms every loss kind, rank and dtype it may meet (edge cases
    included: non-finite predictions, invalid and ignored labels, saturated probabilities)."""
    exported(tmp_path / "artifact", spec, format="onnx", validate=False)
    report = check_artifact(tmp_path / "artifact", spec)
    assert report["passed"], report["message"]
    changed = FocalSpec.from_dict({**spec.to_dict(), "gamma": 3.0})
    assert check_artifact(tmp_path / "artifact", changed)["disagreeing"] == ["spec.json"]


# ---------------------------------------------------------------------------------------------
# embed: the SavedModel's graph, never a rebuild from spec.json


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.Variable(np.random.default_rng(0).normal(size=(8, C)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="features")])
        def serve(self, features):
            return {"output_0": features @ self.weights}

    model = Model()
    path = tmp_path_factory.mktemp("model") / "savedmodel"
    tf.saved_model.save(model, str(path), signatures={"serving_default": model.serve})
    return path, model.weights.numpy()


def embedded_losses(path, features, labels):
    import tensorflow as tf

    serving = tf.saved_model.load(str(path)).signatures["serving_default"]
    return serving(features=tf.constant(features), labels=tf.constant(labels))["per_sample_loss"].numpy()


@pytest.mark.slow
def test_embed_refuses_an_edited_spec_and_writes_nothing(copy, model_dir, tmp_path):
    edit_spec(copy, gamma=0.5)
    result = run_cli("embed", "--savedmodel", model_dir[0], "--output", "output_0", "--loss", copy, "--out", tmp_path / "both")
    assert result.returncode == 2
    assert result.stderr.startswith(f"focalgraph embed: error: {copy / 'spec.json'}: ")
    assert not (tmp_path / "both").exists()


@pytest.mark.slow
def test_embed_refuses_a_swapped_saved_model_naming_it(copy, other, model_dir, tmp_path):
    from export.embed import embed

    swap(copy, other, "saved_model")
    with pytest.raises(ArtifactError, match=f"{copy / 'saved_model'}: saved_model does not describe"):
        embed(savedmodel=model_dir[0], output="output_0", loss=copy, out=tmp_path / "both")
    assert not (tmp_path / "both").exists()


@pytest.mark.slow
def test_embed_runs_the_artifacts_saved_model_not_a_rebuild_from_the_spec(copy, model_dir, tmp_path, monkeypatch):
    from export.embed import embed
    from focal_graph import graph

    def no_rebuild(*args, **kwargs):
        raise AssertionError("embed rebuilt the loss from spec.json")

    monkeypatch.setattr(graph.SpecLoss, "__init__", no_rebuild)
    embed(savedmodel=model_dir[0], output="output_0", loss=copy, out=tmp_path / "both")
    monkeypatch.undo()
    rng = np.random.default_rng(1)
    features = rng.normal(size=(16, 8)).astype(np.float32)
    labels = rng.integers(0, C, 16)
    want = reference.sparse_softmax_focal(labels, features.astype(np.float64) @ model_dir[1], gamma=2.0)
    np.testing.assert_allclose(embedded_losses(tmp_path / "both", features, labels), want, rtol=1e-5, atol=1e-6)
