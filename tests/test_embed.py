"""`focalgraph embed`: a model's SavedModel and a loss in one serving signature."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import reference
from exporting import exported, run_cli
from export import artifact
from export.embed import embed, embed_keras
from export.errors import UsageError
from focal_graph.spec import FocalSpec

pytestmark = pytest.mark.slow
C = 5


@pytest.fixture(scope="module")
def pieces(tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("embed")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,), name="features"), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(C)])
    model.export(str(root / "model"), format="tf_saved_model", verbose=False)
    exported(root / "loss", FocalSpec(variant="sparse_softmax", alpha=0.5), validate=False)
    return model, root / "model", root / "loss"


def inputs(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(32, 8)).astype(np.float32)
    labels = rng.integers(0, C, 32)
    np.save(tmp_path / "features.npy", features)
    np.save(tmp_path / "labels.npy", labels)
    return features, labels


def test_saved_model_cli_run_gives_the_loss_of_the_separate_pieces(pieces, tmp_path):
    model, saved_model, loss = pieces
    result = run_cli("embed", "--savedmodel", saved_model, "--output", "output_0", "--loss", loss, "--out", tmp_path / "both")
    assert result.returncode == 0, result.stderr
    artifact.verify(tmp_path / "both")
    features, labels = inputs(tmp_path)
    cli = Path(sys.executable).parent / "saved_model_cli"
    run = subprocess.run(
        [cli, "run", "--dir", tmp_path / "both", "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", f"features={tmp_path / 'features.npy'};labels={tmp_path / 'labels.npy'}", "--outdir", tmp_path / "run"],
        capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    logits = np.asarray(model(features))
    np.testing.assert_allclose(np.load(tmp_path / "run" / "output_0.npy"), logits, rtol=1e-6)
    want = reference.sparse_softmax_focal(labels, logits, gamma=2.0, alpha=0.5)
    np.testing.assert_allclose(np.load(tmp_path / "run" / "per_sample_loss.npy"), want, rtol=1e-5, atol=1e-6)


def test_in_memory_keras_model(pieces, tmp_path):
    import tensorflow as tf

    model, _, loss = pieces
    embed_keras(model, loss=loss, out=tmp_path / "both")
    serving = tf.saved_model.load(str(tmp_path / "both")).signatures["serving_default"]
    features, labels = inputs(tmp_path)
    outputs = serving(features=tf.constant(features), labels=tf.constant(labels))
    want = reference.sparse_softmax_focal(labels, np.asarray(model(features)), gamma=2.0, alpha=0.5)
    np.testing.assert_allclose(outputs["per_sample_loss"].numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["not-an-output", "class-count", "not-a-savedmodel"])
def test_bad_embed_is_a_clear_usage_error(pieces, tmp_path, case):
    _, saved_model, loss = pieces
    arguments = dict(savedmodel=saved_model, output="output_0", loss=loss, out=tmp_path / "both")
    if case == "not-an-output":
        arguments["output"] = "scores"
        message = "--output: 'scores' is not an output"
    elif case == "class-count":
        exported(tmp_path / "four", FocalSpec(variant="sparse_softmax", num_classes=4), validate=False)
        arguments["loss"] = tmp_path / "four"
        message = "it fixes C=4; output 'output_0' has 5 classes"
    else:
        (tmp_path / "empty").mkdir()
        arguments["savedmodel"] = tmp_path / "empty"
        message = "is not a readable SavedModel"
    with pytest.raises(UsageError, match=message):
        embed(**arguments)
    assert not (tmp_path / "both").exists()


def test_column_labels_work_as_in_training_and_other_shapes_are_refused(pieces, tmp_path):
    """(N, 1) labels train with the Keras wrapper; the embedded SavedModel returned an all-NaN
    (N, 1) loss for them. Now they give the (N,) loss of the same labels, and labels of another
    shape raise instead of broadcasting."""
    import tensorflow as tf

    model, model_dir, loss_dir = pieces
    out = embed(savedmodel=model_dir, output="output_0", loss=loss_dir, out=tmp_path / "combined")
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    features, labels = inputs(tmp_path)
    want = reference.sparse_softmax_focal(labels, np.asarray(model(features)), alpha=0.5)
    for shaped in (labels, labels[:, None]):
        got = serve(features=tf.constant(features), labels=tf.constant(shaped))["per_sample_loss"].numpy()
        assert got.shape == (32,)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    for bad in (np.stack([labels, labels], axis=1), labels[:31], labels[None, :]):
        with pytest.raises(tf.errors.InvalidArgumentError):
            serve(features=tf.constant(features), labels=tf.constant(bad))
