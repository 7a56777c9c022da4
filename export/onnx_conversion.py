"""A spec's loss graph through tf2onnx, then proved: known ops, the right inputs, a full
`onnx.checker` pass and a real ONNX Runtime run. Any failure raises `ConversionError`.

tf2onnx does not stop on an op it cannot convert (it keeps the TF op in the graph and writes a
model that nothing loads) and turns captured tensors into graph inputs (tf2onnx 1.17, measured), so
its output is never trusted unchecked.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx

from export import artifact
from export.cases import generate, tensor_dimension_names
from export.errors import ConversionError, UsageError
from export.quiet import import_tf2onnx, silenced_stderr
from export.tensorflow_reference import forms_function
from focal_graph.spec import FocalSpec

OPSETS = range(13, 19)  # tf2onnx 1.17 writes at most 18; 13 is the first with ReduceSum(axes) as input
DEFAULT_OPSET = 17
METADATA_PREFIX = "focalgraph."


def check_opset(opset) -> int:
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or opset not in OPSETS:
        raise UsageError(f"--opset: expected an integer from {OPSETS.start} to {OPSETS.stop - 1}, got {opset!r}")
    return int(opset)


def convert(spec: FocalSpec, opset: int = DEFAULT_OPSET, metadata: dict | None = None) -> onnx.ModelProto:
    """The spec's forms as a checked ONNX model: inputs named as in the spec, dimensions named
    (`export.cases.dimension_names`), outputs ``loss``, ``per_sample``, ``sum``, ``mean``, and
    ``metadata`` stored as model properties under ``focalgraph.``."""
    opset = check_opset(opset)
    tf2onnx = import_tf2onnx()
    function = forms_function(spec)  # imports TensorFlow
    try:
        with silenced_stderr(), _without_global_pool_optimizer(), _softmax_kept_classes_last():
            model, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=opset,
                                                     custom_op_handlers=CUSTOM_OP_HANDLERS)
    except Exception as error:  # tf2onnx raises many types; each is a failed conversion
        raise ConversionError(f"tf2onnx failed on {spec.name}: {type(error).__name__}: {error}") from error
    model = _arranged(model, spec)
    if metadata:
        onnx.helper.set_model_props(model, {METADATA_PREFIX + key: str(value) for key, value in metadata.items()})
    model.doc_string = f"focalgraph {spec.name}: {spec.input_names[0]}, {spec.input_names[1]} -> {', '.join(artifact.forms(spec))}"
    check(model, spec)
    return model


def _log1p_compensated(ctx, node, name, args):
    """tf2onnx handler for TensorFlow's ``Log1p`` (tf2onnx 1.17 has none; ONNX has no such op):
    ``log(u) - ((u - 1) - x)`` with ``u = 1 + x`` as rounded.

    For x in [-1, 1], the focal losses' only arguments (``exp(-|logit|)`` and minus a
    probability), ``u - 1`` is exact (Sterbenz) and so is the rounding error ``d = (u - 1) - x``;
    ``log(1 + x) = log(u - d) = log(u) - d/u + O(d**2)``, and dropping the 1/u costs at most
    ``|d| |1 - 1/u|``, below 2**-24 |x| relative, so the result is within float32's rounding of
    log1p (tests/test_sigmoid_exactness.py, over logits -80..80 in bare ONNX Runtime). Where
    ``u == 1`` it is exactly x. TensorFlow keeps its own exact ``Log1p``
    (`focal_graph.probabilities.log1p_exp`): the compensation is written here, in the ONNX graph,
    because Grappler and XLA rewrite it away in a TensorFlow graph, while neither tf2onnx's
    optimizers nor ONNX Runtime reassociate floating-point arithmetic.
    """
    from tf2onnx import utils

    x = node.input[0]
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype)).output[0]
    rounded = ctx.make_node("Add", [one, x], name=utils.make_name(f"{name}_u")).output[0]
    exact_part = ctx.make_node("Sub", [rounded, one], name=utils.make_name(f"{name}_u_minus_1")).output[0]
    rounding = ctx.make_node("Sub", [exact_part, x], name=utils.make_name(f"{name}_rounding")).output[0]
    logarithm = ctx.make_node("Log", [rounded], name=utils.make_name(f"{name}_log")).output[0]
    node.type = "Sub"
    ctx.replace_inputs(node, [logarithm, rounding])


# What tf2onnx needs beyond its own handlers to convert focal_graph's graphs; pass it as
# ``tf2onnx.convert.from_function(..., custom_op_handlers=CUSTOM_OP_HANDLERS)`` to convert one
# yourself (without it tf2onnx leaves the sigmoid losses' Log1p unconverted). The Log1p handler is
# exact for arguments in [-1, 1], all that focal_graph feeds it; beyond 2**24 ``u - 1`` is no
# longer exact (12% off at 1.68e7, a review measured) and log1p(inf) is NaN: not a general Log1p.
CUSTOM_OP_HANDLERS = {"Log1p": (_log1p_compensated, [])}


@contextlib.contextmanager
def _without_global_pool_optimizer():
    """tf2onnx's global-pool optimizer rewrites a ReduceMax over the last axis of an (N, T, C)
    tensor into GlobalMaxPool, which ONNX Runtime rejects when T is 0 ("Only N can be zero"), so
    it is left out of the optimizer table while we convert. The table is tf2onnx's module-level
    ``optimizer._optimizers`` (tf2onnx 1.17); a test checks the rewrite stays out."""
    import tf2onnx.optimizer

    table = getattr(tf2onnx.optimizer, "_optimizers", {})
    saved = dict(table)
    table.pop("global_pool_optimizer", None)
    try:
        yield
    finally:
        table.clear()
        table.update(saved)  # in its original order


@contextlib.contextmanager
def _softmax_kept_classes_last():
    """A spec with the class axis elsewhere (``axis``) transposes the classes last before its
    (Log)Softmax; tf2onnx's transpose optimizer would move that Transpose after it and give the
    (Log)Softmax the other axis, which ONNX Runtime 1.31's CPU kernel runs far slower: on
    (8, 19, 128, 128) float32, LogSoftmax over axis 1 took 84 ms, a Transpose to classes-last
    2.8 ms and LogSoftmax over the last axis 7.8 ms (minima of 9 interleaved runs). So the
    optimizer's (Log)Softmax handlers are left out while we convert; graphs without such a
    Transpose (the classes-last default) do not change. The handlers are built by
    ``TransposeOptimizer._initialize_handlers`` (tf2onnx 1.17)."""
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    original = TransposeOptimizer._initialize_handlers

    def without_softmax(self):
        original(self)
        for op in ("Softmax", "LogSoftmax"):
            self._handler_map.pop(op, None)

    TransposeOptimizer._initialize_handlers = without_softmax
    try:
        yield
    finally:
        TransposeOptimizer._initialize_handlers = original


def _arranged(model: onnx.ModelProto, spec: FocalSpec) -> onnx.ModelProto:
    """Outputs in `export.artifact.forms` order; every dynamic dimension of the inputs and outputs named so that
    the N of the labels is the N of the logits; tf2onnx's per-tensor shape hints (``unk__``
    names) dropped, as ONNX Runtime infers those itself."""
    graph = model.graph
    by_name = {output.name: output for output in graph.output}
    forms = artifact.forms(spec)
    if set(by_name) == set(forms):
        ordered = [by_name[name] for name in forms]
        del graph.output[:]
        graph.output.extend(ordered)
    names = tensor_dimension_names(spec)
    # Each input and output by its own layout (labels (N, H, W) beside channels-first logits
    # (N, C, H, W)); a fixed size (C, or multi_category's trailing 1) keeps its value.
    for value in list(graph.input) + list(graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, names.get(value.name, ())):
            if not dim.HasField("dim_value"):
                dim.dim_param = name
    del graph.value_info[:]
    return model


def check(model: onnx.ModelProto, spec: FocalSpec) -> None:
    """Raise `ConversionError` unless every op is a known ONNX op, the graph inputs are exactly
    the spec's, the outputs are its forms (`export.artifact.forms`), the full checker passes and ONNX Runtime runs it."""
    for node in _nodes(model.graph):
        if not onnx.defs.has(node.op_type, node.domain or ""):
            raise ConversionError(
                f"ONNX op {node.op_type!r} (node {node.name!r}) is not an ONNX operator: tf2onnx could not convert it"
            )
    inputs = [value.name for value in model.graph.input]
    initializers = {tensor.name for tensor in model.graph.initializer}
    expected = list(spec.graph_inputs)
    extra = [name for name in inputs if name not in expected and name not in initializers]
    if extra:
        raise ConversionError(
            f"ONNX graph input {extra[0]!r} is not an input of {spec.name} (a tensor captured from outside the tf.function?)"
        )
    if [name for name in inputs if name in expected] != expected:
        raise ConversionError(f"ONNX graph inputs {inputs}: expected {expected}")
    outputs = [value.name for value in model.graph.output]
    forms = list(artifact.forms(spec))
    if outputs != forms:
        raise ConversionError(f"ONNX graph outputs {outputs}: expected {forms}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # onnx.checker.ValidationError, shape-inference errors
        raise ConversionError(f"onnx.checker rejected the model: {str(error).strip().splitlines()[0]}") from error
    from export.runtime import open_session

    try:
        session = open_session(model.SerializeToString(), "cpu")
        case = generate(spec)[0]
        results = session.run(case.inputs)
    except Exception as error:
        raise ConversionError(f"ONNX Runtime cannot run the model: {type(error).__name__}: {error}") from error
    if set(results) != set(forms) or results["per_sample"].shape != case.shape[:1]:
        raise ConversionError(f"ONNX Runtime returned outputs {sorted(results)} of unexpected shapes")


def _nodes(graph):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _nodes(subgraph)
