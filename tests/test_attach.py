"""`focalgraph attach`: a loss joined to a real model's ONNX graph (a Keras MLP through tf2onnx)."""

import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
import tf2onnx

import reference
from exporting import exported, one_line_error, run_cli, run_main
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


# ---------------------------------------------------------------------------------------------
# Dense heads (issue 12): outputs whose spatial size is computed from the input, channels-first


def conv_head_onnx(path, *, classes, stride, pads, channels_first=False, size=None):
    """A hand-made segmentation head: image (batch, height, width, 3) -> a 3x3 Conv of ``stride``
    (``pads`` on each side) -> logits (batch, oh, ow, classes), or (batch, classes, oh, ow)
    with ``channels_first``. oh and ow are computed from height and width by the Conv; with
    ``size``, height and width are fixed at ``size`` while oh and ow stay symbolic (as tf2onnx
    leaves them when it cannot infer a shape)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weights = numpy_helper.from_array((rng.normal(size=(classes, 3, 3, 3)) * 2).astype(np.float32), "w")
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["conv"], strides=[stride, stride], pads=[pads] * 4,
                              kernel_shape=[3, 3])]
    if channels_first:
        nodes.append(helper.make_node("Identity", ["conv"], ["logits"]))
        dims = ["batch", classes, "oh", "ow"]
    else:
        nodes.append(helper.make_node("Transpose", ["conv"], ["logits"], perm=[0, 2, 3, 1]))
        dims = ["batch", "oh", "ow", classes]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                      ["batch", size or "height", size or "width", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def dense_losses(tmp_path_factory):
    """Rank-4 sparse softmax losses with ignore label 255: C dynamic, and C fixed at 19."""
    root = tmp_path_factory.mktemp("dense")
    exported(root / "dynamic", FocalSpec(variant="sparse_softmax", rank=4, ignore_index=255), format="onnx",
             validate=False)
    exported(root / "nineteen", FocalSpec(variant="sparse_softmax", rank=4, num_classes=19, ignore_index=255),
             format="onnx", validate=False)
    exported(root / "channels-first", FocalSpec(variant="sparse_softmax", rank=4, num_classes=19, ignore_index=255,
                                                axis=1), format="onnx", validate=False)
    return root


def test_strided_head_with_dynamic_height_and_width_attaches_and_computes_the_formula(dense_losses, tmp_path):
    # no padding: the default check input (2 x 2 images) is too small for a 3x3 kernel
    head = conv_head_onnx(tmp_path / "head.onnx", classes=5, stride=4, pads=0)
    arguments = dict(model=head, output="logits", loss=dense_losses / "dynamic", out=tmp_path / "c.onnx")
    with pytest.raises(UsageError, match="--model: ONNX Runtime cannot run it on sample inputs \\(image 2x2x2x3\\).*"
                                         "--check-shapes"):
        attach(**arguments)
    attach(**arguments, check_shapes="image=1x13x13x3")  # logits 3 x 3, where labels of 2 x 2 would not fit
    combined = onnxruntime.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 33, 17, 3)).astype(np.float32)
    logits = onnxruntime.InferenceSession(str(head), providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
    assert logits.shape == (2, 8, 4, 5)  # (33 - 3) // 4 + 1, (17 - 3) // 4 + 1
    labels = rng.integers(0, 5, logits.shape[:-1])
    labels[0, :2] = 255
    got = dict(zip([o.name for o in combined.get_outputs()], combined.run(None, {"image": image, "labels": labels})))
    want = reference.sparse_softmax_focal(labels, logits, gamma=2.0, ignore_index=255)
    np.testing.assert_allclose(got["focal_per_sample"], want.sum(axis=(1, 2)), rtol=1e-5)
    graph = onnx.load(str(tmp_path / "c.onnx")).graph
    label_dims = [d.dim_param for d in next(i for i in graph.input if i.name == "labels").type.tensor_type.shape.dim]
    assert label_dims == ["batch", "oh", "ow"]


def test_labels_of_the_check_are_shaped_from_the_output_the_model_gives(dense_losses, tmp_path):
    # input fixed at 64 x 64, output oh x ow symbolic: 2 per symbolic dimension would give labels
    # of 2 x 2 against logits of 16 x 16
    head = conv_head_onnx(tmp_path / "head.onnx", classes=5, stride=4, pads=0, size=64)
    attach(model=head, output="logits", loss=dense_losses / "dynamic", out=tmp_path / "c.onnx")
    combined = onnxruntime.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype(np.float32)
    got = combined.run(None, {"image": image, "labels": np.ones((1, 16, 16), np.int64)})
    want = reference.sparse_softmax_focal(np.ones((1, 16, 16), np.int64), got[0], gamma=2.0)
    np.testing.assert_allclose(got[2], want.sum(axis=(1, 2)), rtol=1e-5)  # outputs: logits, focal_loss, focal_per_sample


@pytest.mark.parametrize("loss", ["dynamic", "nineteen"])
def test_channels_first_output_is_refused_naming_both_shapes(dense_losses, tmp_path, loss):
    head = conv_head_onnx(tmp_path / "nchw.onnx", classes=19, stride=2, pads=1, channels_first=True)
    result = run_main("attach", "--model", head, "--output", "logits", "--loss", dense_losses / loss,
                     "--out", tmp_path / "c.onnx")
    line = one_line_error(result, "attach")
    taken = {"dynamic": "(N, H, W, C)", "nineteen": "(N, H, W, 19)"}[loss]
    assert f"it takes logits {taken}; output 'logits' is (batch, 19, oh, ow)" in line
    assert "channels-first" in line and "--axis 1" in line
    assert not (tmp_path / "c.onnx").exists()


def test_an_axis_1_loss_attaches_to_a_channels_first_output_directly(dense_losses, tmp_path):
    head = conv_head_onnx(tmp_path / "nchw.onnx", classes=19, stride=2, pads=1, channels_first=True)
    attach(model=head, output="logits", loss=dense_losses / "channels-first", out=tmp_path / "c.onnx")
    graph = onnx.load(str(tmp_path / "c.onnx")).graph
    label_dims = [d.dim_param for d in next(i for i in graph.input if i.name == "labels").type.tensor_type.shape.dim]
    assert label_dims == ["batch", "oh", "ow"]
    combined = onnxruntime.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    image = rng.normal(size=(2, 12, 10, 3)).astype(np.float32)
    logits = onnxruntime.InferenceSession(str(head), providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
    assert logits.shape == (2, 19, 6, 5)
    labels = rng.integers(0, 19, (2, 6, 5))
    labels[1, 0] = 255
    got = dict(zip([o.name for o in combined.get_outputs()], combined.run(None, {"image": image, "labels": labels})))
    # the float64 formula on the classes-last transpose: no transpose on the user's side
    want = reference.sparse_softmax_focal(labels, np.moveaxis(logits, 1, -1), gamma=2.0, ignore_index=255)
    np.testing.assert_allclose(got["focal_loss"], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["focal_per_sample"], want.sum(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("shapes, named", [("image=1x16x16x4", "input 'image' is (batch, height, width, 3); 1x16x16x4"),
                                           ("picture=1x16x16x3", "'picture' is not an input of the model"),
                                           ("image=1x1x1x3", "ONNX Runtime cannot run --model on image 1x1x1x3")])
def test_check_shapes_that_do_not_fit_the_model_are_one_line_naming_the_input(dense_losses, tmp_path, shapes, named):
    head = conv_head_onnx(tmp_path / "head.onnx", classes=5, stride=2, pads=0)
    result = run_cli("attach", "--model", head, "--output", "logits", "--loss", dense_losses / "dynamic",
                     "--out", tmp_path / "c.onnx", "--check-shapes", shapes)
    line = one_line_error(result, "attach")
    assert f"--check-shapes: {named}" in line
    assert "[E:onnxruntime" not in result.stderr and not (tmp_path / "c.onnx").exists()
