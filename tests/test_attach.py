"""`focalgraph attach`: a loss joined to a real model's ONNX graph (a Keras MLP through tf2onnx)."""

import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
import tf2onnx

from exporting import exported, run_cli
from export.attach import attach
from export.errors import UsageError
from export.runtime import LossSession
from focal_graph.spec import FocalSpec

pytestmark = pytest.mark.slow
C = 5


def keras_mlp_onnx(path, classes=C, opset=17):
    """A small Keras MLP with two outputs (logits and softmax probabilities), through tf2onnx."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(classes)])

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="features")])
    def serve(features):
        logits = model(features)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
    onnx.save(onnx_model, str(path))
    return path


@pytest.fixture(scope="module")
def pieces(tmp_path_factory):
    root = tmp_path_factory.mktemp("attach")
    exported(root / "loss", FocalSpec(variant="sparse_softmax", ignore_index=-1), validate=False)
    return keras_mlp_onnx(root / "mlp.onnx"), root / "loss"


def test_combined_loss_equals_model_then_loss_and_other_outputs_are_unchanged(pieces, tmp_path):
    mlp, loss = pieces
    attach(model=mlp, output="logits", loss=loss, out=tmp_path / "combined.onnx")
    combined = onnxruntime.InferenceSession(str(tmp_path / "combined.onnx"), providers=["CPUExecutionProvider"])
    model = onnxruntime.InferenceSession(str(mlp), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 8)).astype(np.float32)
    labels = rng.integers(0, C, 64)
    labels[::9] = -1
    got = dict(zip([o.name for o in combined.get_outputs()], combined.run(None, {"features": features, "labels": labels})))
    logits, probabilities = model.run(["logits", "probabilities"], {"features": features})
    np.testing.assert_array_equal(got["logits"], logits)
    np.testing.assert_array_equal(got["probabilities"], probabilities)
    separate = LossSession(loss, provider="cpu").forms(labels, logits)
    for form in ("loss", "per_sample", "sum", "mean"):
        np.testing.assert_allclose(got["focal_" + form], separate[form], rtol=1e-6)


def test_combined_model_ties_the_label_batch_to_the_models_and_keeps_one_import_per_domain(pieces, tmp_path):
    mlp, loss = pieces
    combined = attach(model=mlp, output="logits", loss=loss, out=tmp_path / "combined.onnx")
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(combined.graph.input) + list(combined.graph.output)}
    assert dims["labels"][0] == dims["logits"][0] == dims["focal_per_sample"][0]
    domains = [entry.domain for entry in combined.opset_import]
    assert len(domains) == len(set(domains))


def test_cli_attach_prints_the_interface(pieces, tmp_path):
    mlp, loss = pieces
    result = run_cli("attach", "--model", mlp, "--output", "logits", "--loss", loss, "--out", tmp_path / "c.onnx")
    assert result.returncode == 0, result.stderr
    assert "inputs features, labels; outputs logits, probabilities, focal_loss" in result.stdout


@pytest.mark.parametrize("case", ["not-an-output", "class-count", "low-opset", "not-onnx"])
def test_bad_attach_is_a_clear_usage_error(pieces, tmp_path, case):
    mlp, loss = pieces
    arguments = dict(model=mlp, output="logits", loss=loss, out=tmp_path / "c.onnx")
    message = {"not-an-output": "--output: 'scores' is not an output", "class-count": "it fixes C=4; output 'logits' has 5",
               "low-opset": "--model: opset 11; the loss needs opset 13", "not-onnx": "is not a readable ONNX model"}[case]
    if case == "not-an-output":
        arguments["output"] = "scores"
    elif case == "class-count":
        exported(tmp_path / "four", FocalSpec(variant="sparse_softmax", num_classes=4), validate=False)
        arguments["loss"] = tmp_path / "four"
    elif case == "low-opset":
        arguments["model"] = keras_mlp_onnx(tmp_path / "old.onnx", opset=11)
    else:
        (tmp_path / "junk.onnx").write_bytes(b"not a model")
        arguments["model"] = tmp_path / "junk.onnx"
    with pytest.raises(UsageError, match=message):
        attach(**arguments)
    assert not (tmp_path / "c.onnx").exists()
    flags = [f"--{k}={v}" for k, v in arguments.items()]
    result = run_cli("attach", *flags)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_loss_exported_at_another_opset_is_converted_to_the_models(pieces, tmp_path):
    mlp, _ = pieces
    exported(tmp_path / "loss13", FocalSpec(variant="sparse_softmax"), opset=13, validate=False)
    combined = attach(model=mlp, output="logits", loss=tmp_path / "loss13", out=tmp_path / "c.onnx")
    assert {e.version for e in combined.opset_import if e.domain in ("", "ai.onnx")} == {17}


def test_model_with_a_tensor_named_labels_gets_a_prefixed_label_input(pieces, tmp_path):
    mlp, loss = pieces
    model = onnx.load(str(mlp))
    model.graph.node.append(onnx.helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0))
    model.graph.output.append(onnx.helper.make_tensor_value_info("labels", onnx.TensorProto.INT64, ["batch"]))
    onnx.save(model, str(tmp_path / "m.onnx"))
    combined = attach(model=tmp_path / "m.onnx", output="logits", loss=loss, out=tmp_path / "c.onnx")
    assert "focal_labels" in [i.name for i in combined.graph.input]


def test_combined_model_is_not_mistaken_for_a_loss(pieces, tmp_path):
    mlp, loss = pieces
    attach(model=mlp, output="logits", loss=loss, out=tmp_path / "c.onnx")
    with pytest.raises(UsageError, match="not a focalgraph loss"):
        attach(model=mlp, output="logits", loss=tmp_path / "c.onnx", out=tmp_path / "d.onnx")
