"""Every graph uses only ops tf2onnx converts, with focalgraph's one added handler (TensorFlow's
Log1p, which the sigmoid losses use because Grappler and XLA undo a compensated log(1 + e);
`export.onnx_conversion.CUSTOM_OP_HANDLERS`): converted, checked and run in ONNX Runtime.

This guards the core library's promise to the exporter; the exporter's own parity tests are
separate.
"""

import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
import tf2onnx

import focal_graph as fg
from focal_graph.spec import FocalSpec

from export.onnx_conversion import CUSTOM_OP_HANDLERS

# tf2onnx 1.17 has no handler for these (checked in its onnx_opset/ sources); Log1p has ours
UNCONVERTIBLE = {"Log1p", "Expm1", "Xlogy", "Xlog1py", "MulNoNan"} - set(CUSTOM_OP_HANDLERS)

SPECS = [
    FocalSpec(variant="sparse_softmax", ignore_index=-1, gamma=0.5, alpha=[0.25, 0.5, 1.0, 2.0], rank=3),
    FocalSpec(variant="sparse_softmax", from_logits=False, reduction="mean"),
    FocalSpec(variant="softmax", label_smoothing=0.1, class_counts=[5, 10, 20, 40], rank=4),
    FocalSpec(variant="sigmoid", alpha=0.25, gamma=[1.0, 2.0, 0.0, 5.0], reduction="sum", rank=2),
    FocalSpec(preset="multilabel_lsr", class_counts=[5, 10, 20, 40]),
    FocalSpec(preset="multi_category", class_counts=[100, 200, 50, 10]),
    FocalSpec(preset="sparse_softmax", alpha=[1.0, 2.0, 0.5, 1.0], rank=3),
]


def graph_op_types(graph):
    concrete = graph.get_concrete_function()
    ops = {op.type for op in concrete.graph.get_operations()}
    for function in concrete.graph._functions.values():
        ops |= {node.op for node in function.cached_definition.node_def}
    return ops


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_graph_has_no_op_tf2onnx_cannot_convert(spec):
    assert not graph_op_types(fg.build_graph(spec)) & UNCONVERTIBLE


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_graph_converts_and_onnx_runtime_agrees(rng, spec):
    graph = fg.build_graph(spec)
    model, _ = tf2onnx.convert.from_function(graph, input_signature=graph.input_signature, opset=17,
                                             custom_op_handlers=CUSTOM_OP_HANDLERS)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [s.name for s in graph.input_signature]

    shape = (3,) + (2,) * (spec.rank - 2) + (4,)
    logits = (rng.normal(size=shape) * 3).astype(np.float32)
    if spec.kind[1] == "sparse_softmax":
        y_true = rng.integers(0, 4, size=shape[:-1]).astype(np.int64)
    else:
        y_true = rng.integers(0, 2, size=shape).astype(np.float32)
    predictions = logits if spec.from_logits else tf.nn.softmax(logits).numpy()
    want = graph(tf.constant(y_true), tf.constant(predictions)).numpy()
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (got,) = session.run(None, dict(zip(names, [y_true, predictions])))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_invalid_label_is_nan_in_onnx_runtime_too():
    spec = FocalSpec(variant="sparse_softmax", ignore_index=-1)
    graph = fg.build_graph(spec)
    model, _ = tf2onnx.convert.from_function(graph, input_signature=graph.input_signature, opset=17)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels = np.array([0, 3, -1, -2, 2], np.int64)
    (got,) = session.run(None, {"labels": labels, "logits": np.zeros((5, 3), np.float32)})
    np.testing.assert_allclose(got[[0, 2, 4]], [np.log(3) * (2 / 3) ** 2, 0.0, np.log(3) * (2 / 3) ** 2], rtol=1e-6)
    assert np.isnan(got[1]) and np.isnan(got[3])


@pytest.mark.slow
def test_sigmoid_graph_needs_the_log1p_handler_and_it_is_exact():
    """Without the handler tf2onnx leaves TensorFlow's Log1p in the model (not an ONNX op); with
    it, the compensated log(u) - ((u - 1) - e) is exact where log(u) alone is 0 (|x| > 17)."""
    spec = FocalSpec(variant="sigmoid", gamma=0.0)
    graph = fg.build_graph(spec)
    plain, _ = tf2onnx.convert.from_function(graph, input_signature=graph.input_signature, opset=17)
    assert "Log1p" in {node.op_type for node in plain.graph.node}
    model, _ = tf2onnx.convert.from_function(graph, input_signature=graph.input_signature, opset=17,
                                             custom_op_handlers=CUSTOM_OP_HANDLERS)
    assert "Log1p" not in {node.op_type for node in model.graph.node}
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = np.array([[-30.0, -18.0, -0.5, 0.0, 3.0, 18.0, 30.0]], np.float32)
    targets = np.zeros_like(logits)
    (got,) = session.run(None, {"targets": targets, "logits": logits})
    want = np.logaddexp(0.0, logits.astype(np.float64))  # BCE at target 0: softplus(x)
    np.testing.assert_allclose(got, want, rtol=3e-7)
