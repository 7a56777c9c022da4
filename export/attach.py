"""``attach``: a loss artifact's ONNX graph joined to a model's ONNX graph at one of its outputs.

onnx and onnxruntime only. The combined model keeps every input and output of the model, takes
the loss's label input (``labels`` or ``targets``, prefixed if the model already has an input of
that name) and adds the loss's outputs, prefixed (``focal_loss``, ``focal_per_sample``,
``focal_sum``, ``focal_mean``; ``focal2_loss``, ... where the model already has one of those
names). The loss's batch (and other) dimensions are renamed to the
model's, so the N of the labels is the N of the model's output. It is checked with the full
checker and a real ONNX Runtime session before it is written: the model alone is run first on
sample inputs (symbolic dimensions 2, or the shapes given as ``check_shapes``), and the labels
are shaped from the output it gives, so a head whose output size is computed from its input
(H/8 x W/8) is checked with labels that fit it.

The loss takes the classes on the last axis. A model output whose class count (or, when the
loss leaves C dynamic, whose layout) shows the classes elsewhere, a channels-first (N, C, H, W)
output, is refused naming both shapes: matched by position it would be taken as N, H, W, C.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, version_converter

from export import artifact, writing
from export.cases import dimension_names
from export.consistency import confirm_loss
from export.errors import ConversionError, UsageError
from focal_graph.spec import FocalSpec

PREFIX = "focal_"
MIN_OPSET = 13  # the lowest opset a loss is exported at
MAX_CHECK_ELEMENTS = 1 << 26  # per --check-shapes input: 256 MiB of float32, allocated for the self-check


def attach(*, model, output: str, loss, out, prefix: str = PREFIX, force: bool = False,
           check_shapes=None) -> onnx.ModelProto:
    """Join the loss at ``loss`` (an artifact directory or its ``model.onnx``) to ``model``'s
    output ``output``; write the result to ``out`` and return it.

    ``check_shapes``: the model's input shapes for the self-check, ``{"image": (1, 64, 64, 3)}``
    or the command line's ``"image=1x64x64x3,mask=1x64x64"`` (a bare ``1x64x64x3`` for a model
    with one input); inputs not named get 2 for each symbolic dimension. Raises `UsageError` on a
    bad argument (an output that does not exist, a class count, layout, rank or dtype that does
    not match, a model opset below 13, check shapes that do not fit the model),
    `ConversionError` when the graphs cannot be reconciled."""
    destination = writing.check_outputs({"--out": out}, {"--model": model, "--loss": loss}, force=force)["--out"]
    network = _load("--model", model)
    check_shapes = parse_check_shapes(check_shapes, network)
    spec, loss_model = _load_loss(loss)
    confirm_loss(loss, spec, loss_model.SerializeToString())  # the spec names the inputs: it must be the graph's
    outputs = {value.name: value for value in network.graph.output}
    if output not in outputs:
        raise UsageError(f"--output: {output!r} is not an output of {model} (outputs: {', '.join(outputs)})")
    _check_compatible(spec, outputs[output], loss_model, output)

    opset = _default_opset(network)
    if opset < MIN_OPSET:
        raise UsageError(f"--model: opset {opset}; the loss needs opset {MIN_OPSET} or higher "
                         "(convert the model with onnx.version_converter, or export it at a higher opset)")
    loss_model = _at_opset(loss_model, opset)
    ir_version = max(network.ir_version, loss_model.ir_version)
    network_copy = onnx.ModelProto()
    network_copy.CopyFrom(network)
    network_copy.ir_version = loss_model.ir_version = ir_version
    _align_other_domains(network_copy, loss_model)

    true_name, prediction_name = spec.input_names
    prefix = _free_prefix(prefix, network, loss_model)
    loss_outputs = [prefix + value.name for value in loss_model.graph.output]
    try:
        combined = compose.merge_models(
            network_copy, loss_model, io_map=[(output, prediction_name)], prefix2=prefix,  # names before prefixing
            outputs=[value.name for value in network.graph.output] + loss_outputs,
        )
    except Exception as error:  # onnx raises ValueError and others for graphs it cannot join
        raise ConversionError(f"onnx.compose could not join the graphs: {error}") from error
    imports = {entry.domain or "": entry.version for entry in combined.opset_import}  # merge_models repeats them
    del combined.opset_import[:]
    combined.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in imports.items())
    label_input = true_name if true_name not in _names(network.graph) else prefix + true_name
    _rename(combined.graph, prefix + true_name, label_input)
    _tie_dimensions(combined.graph, spec, outputs[output], [label_input] + loss_outputs)
    combined.doc_string = f"{network.doc_string or 'model'} + focalgraph {spec.name} on output {output!r}"
    # the loss's metadata describes the loss alone: a combined model is not a loss artifact
    kept = [p for p in combined.metadata_props if not p.key.startswith("focalgraph.")]
    del combined.metadata_props[:]
    combined.metadata_props.extend(kept)
    onnx.helper.set_model_props(combined, {**{p.key: p.value for p in kept}, "focalgraph.attached": spec.to_json()})
    _check(combined, network, output, spec, label_input, prefix + "per_sample", check_shapes)
    writing.write_atomically("--out", destination, combined.SerializeToString(), force=force)
    return combined


def _free_prefix(prefix: str, network: onnx.ModelProto, loss_model: onnx.ModelProto) -> str:
    """``prefix``, or the first of ``prefix`` numbered (``focal2_``, ``focal3_``, ...) that gives
    none of the loss's names one the model already uses: a model with an output ``focal_loss``
    gets the loss's outputs as ``focal2_loss``, ..., as a model input ``labels`` gets the loss's
    labels as ``focal_labels`` (onnx.compose refuses names that clash)."""
    taken = _names(network.graph) | {node.name for node in network.graph.node if node.name}
    names = _names(loss_model.graph) | {node.name for node in loss_model.graph.node if node.name}
    number = 1
    while True:
        candidate = prefix if number == 1 else f"{prefix.rstrip('_')}{number}_"
        if not any(candidate + name in taken for name in names):
            return candidate
        number += 1


def _names(graph) -> set:
    """Every tensor name of a graph: inputs, outputs, initializers and node outputs."""
    names = {value.name for value in list(graph.input) + list(graph.output)}
    names |= {tensor.name for tensor in graph.initializer}
    names |= {name for node in graph.node for name in node.output}
    return names


def _load(flag: str, path) -> onnx.ModelProto:
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block onnx.load's open() for ever
        raise UsageError(f"{flag}: {path} is not a regular file (a device, pipe or socket); name an .onnx file")
    try:
        return onnx.load(str(path))
    except FileNotFoundError:
        raise UsageError(f"{flag}: {path}: no such file") from None
    except Exception as error:  # DecodeError from protobuf, OSError
        raise UsageError(f"{flag}: {path} is not a readable ONNX model ({type(error).__name__}: {error})") from None


def _load_loss(path) -> tuple[FocalSpec, onnx.ModelProto]:
    path = Path(path)
    if path.is_dir():
        return artifact.loss_artifact(path, onnx=True), _load("--loss", path / artifact.ONNX)
    if path.is_file():
        artifact.check_self_contained(path)
    model = _load("--loss", path)
    text = {p.key: p.value for p in model.metadata_props}.get(artifact.SPEC_METADATA)
    if text is None:
        raise UsageError(f"--loss: {path} is not a focalgraph loss (no {artifact.SPEC_METADATA} in its metadata)")
    return artifact.spec_from_metadata(text, path), model


def _dims(value) -> list:
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
            for d in value.type.tensor_type.shape.dim]


def _check_compatible(spec: FocalSpec, model_output, loss_model: onnx.ModelProto, name: str) -> None:
    if spec.weighted:
        raise UsageError("--loss: a weighted loss (its graph takes weights) cannot be attached; export it without --weighted")
    prediction = next((i for i in loss_model.graph.input if i.name == spec.input_names[1]), None)
    if prediction is None:
        raise UsageError(f"--loss: its ONNX graph has no input {spec.input_names[1]!r}; not a focalgraph loss")
    want_type, got_type = prediction.type.tensor_type.elem_type, model_output.type.tensor_type.elem_type
    if want_type != got_type:
        want, got = (onnx.TensorProto.DataType.Name(t).lower() for t in (want_type, got_type))
        raise UsageError(f"--loss: it takes {want} {spec.input_names[1]}; output {name!r} is {got}")
    if not model_output.type.tensor_type.HasField("shape"):
        return  # rank unknown: the session run will tell
    dims = _dims(model_output)
    if len(dims) != spec.rank:
        raise UsageError(f"--loss: it takes rank-{spec.rank} {spec.input_names[1]}; output {name!r} has rank {len(dims)}")
    takes = f"--loss: it takes {spec.input_names[1]} {_shape_text(_loss_dims(spec))}; output {name!r} is {_shape_text(dims)}"
    axis = spec.class_axis
    classes = dims[axis]
    others = [i for i in range(1, len(dims)) if i != axis]
    if spec.num_classes is not None and classes != spec.num_classes:
        elsewhere = [i for i in others if dims[i] == spec.num_classes]
        if elsewhere:  # the classes on another axis: matched by position, H or W would be taken for C
            raise UsageError(f"{takes}: its classes ({spec.num_classes}) are on axis {elsewhere[0]}, not {axis} "
                             f"(a channels-first output? export the loss with --axis {elsewhere[0]})")
        if isinstance(classes, int):
            raise UsageError(f"{takes}: it fixes C={spec.num_classes}; output {name!r} has {classes} classes")
        raise UsageError(f"{takes}: it fixes C={spec.num_classes}; the output's axis {axis} has no fixed size; attach "
                         "a loss with a dynamic class count (exported without --classes)")
    if spec.num_classes is None and not isinstance(classes, int) and spec.rank > 2:
        fixed = [i for i in others if isinstance(dims[i], int)]
        if fixed:
            # A converted model's class count is its weights' shape, always fixed; a class axis of
            # no fixed size beside a fixed one is a spatial axis: (N, C, H, W) taken for N, H, W, C.
            raise UsageError(f"{takes}: its axis {axis}, the classes to the loss, has no fixed size while axis "
                             f"{fixed[0]} has {dims[fixed[0]]} (a channels-first output? export the loss with --axis {fixed[0]})")


def _loss_dims(spec: FocalSpec) -> list:
    return [spec.num_classes or "C" if name == "C" else name for name in dimension_names(spec)]


def _shape_text(dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _default_opset(model: onnx.ModelProto) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 1)


def _at_opset(loss_model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    if _default_opset(loss_model) == opset:
        return loss_model
    try:
        converted = version_converter.convert_version(loss_model, opset)
        onnx.checker.check_model(converted)
    except Exception as error:  # the version converter's adapters do not cover every op and step
        reason = str(error).strip().splitlines()[0]
        raise UsageError(f"--loss: exported at opset {_default_opset(loss_model)}, which cannot be converted to the "
                         f"model's opset {opset} ({reason}); export the loss with --opset {opset}") from None
    return converted


def _align_other_domains(network: onnx.ModelProto, loss_model: onnx.ModelProto) -> None:
    """The loss uses only the default domain: its other imports (tf2onnx adds ai.onnx.ml) are
    dropped, so merge_models does not see two versions of one domain."""
    used = {node.domain for node in loss_model.graph.node}
    keep = [entry for entry in loss_model.opset_import if entry.domain in ("", "ai.onnx") or entry.domain in used]
    del loss_model.opset_import[:]
    loss_model.opset_import.extend(keep)


def _rename(graph, old: str, new: str) -> None:
    if old == new:
        return
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _tie_dimensions(graph, spec: FocalSpec, model_output, names) -> None:
    """The loss's named dimensions (N, T, H, W, ..., C) become the model output's, in the label
    input and the loss outputs."""
    model_dims = _dims(model_output) if model_output.type.tensor_type.HasField("shape") else []
    mapping = {name: dim for name, dim in zip(dimension_names(spec), model_dims) if dim is not None}
    for value in list(graph.input) + list(graph.output):
        if value.name not in names:
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                target = mapping[dim.dim_param]
                if isinstance(target, int):
                    dim.dim_value = target  # clears dim_param
                else:
                    dim.dim_param = target


def parse_check_shapes(text, network: onnx.ModelProto) -> dict:
    """``--check-shapes`` as ``{input name: shape}``: ``"image=1x64x64x3,mask=1x64x64"``, a bare
    ``1x64x64x3`` for a model with one input, or a dict of sequences. Each shape must have the
    input's rank and its fixed sizes; `UsageError` naming the input otherwise."""
    if text is None:
        return {}
    inputs = {value.name: value for value in _graph_inputs(network)}
    if isinstance(text, str):
        shapes = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            name, _, sizes = item.rpartition("=")
            if not name and len(inputs) != 1:
                raise UsageError(f"--check-shapes: the model has {len(inputs)} inputs ({', '.join(inputs)}); "
                                 f"name each, as NAME=1x64x64x3, not {item!r}")
            name = name or next(iter(inputs))
            parts = sizes.lower().split("x")
            # ASCII digits only: int() also takes "１２" (fullwidth), "+3", " 3" and "1_000"
            if not all(re.fullmatch("[0-9]+", part) for part in parts):
                raise UsageError(f"--check-shapes: expected NAME=1x64x64x3[,NAME=...] (sizes in digits 0-9, "
                                 f"joined by x), got {item!r}")
            if name in shapes:
                raise UsageError(f"--check-shapes: input {name!r} is given twice; give each input's shape once")
            shapes[name] = tuple(int(part) for part in parts)
    elif isinstance(text, dict):
        try:
            shapes = {name: tuple(_size(size) for size in shape) for name, shape in text.items()}
        except (TypeError, ValueError):
            raise UsageError(f"--check-shapes: expected {{NAME: (sizes, ...)}} of integers, got {text!r}") from None
    else:
        raise UsageError(f"--check-shapes: expected NAME=1x64x64x3[,NAME=...] or a dict of shapes, got {text!r}")
    for name, shape in shapes.items():
        if name not in inputs:
            raise UsageError(f"--check-shapes: {name!r} is not an input of the model (inputs: {', '.join(inputs)})")
        dims = _dims(inputs[name])
        fits = len(shape) == len(dims) and all(
            not isinstance(d, int) or d == size for d, size in zip(dims, shape))
        if not fits:
            raise UsageError(f"--check-shapes: input {name!r} is {_shape_text(dims)}; "
                             f"{'x'.join(map(str, shape))} does not fit it")
        if not all(size >= 1 for size in shape):  # an empty input runs nothing: the check would prove nothing
            raise UsageError(f"--check-shapes: input {name!r}: every size must be 1 or more, got "
                             f"{'x'.join(map(str, shape))}")
        if math.prod(shape) > MAX_CHECK_ELEMENTS:
            raise UsageError(f"--check-shapes: input {name!r}: {'x'.join(map(str, shape))} is more than "
                             f"{MAX_CHECK_ELEMENTS:,} elements; the self-check needs only a small sample")
    return shapes


def _size(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(value)
    return int(value)


def _graph_inputs(model: onnx.ModelProto) -> list:
    """The inputs a caller feeds: initializers listed as inputs (old exporters) are not."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _check(combined: onnx.ModelProto, network: onnx.ModelProto, output: str, spec: FocalSpec, label_input: str,
           per_sample: str, check_shapes: dict) -> None:
    """The full checker, then ONNX Runtime: the model alone on sample inputs, then the combined
    model on the same inputs with labels shaped from the output the model gave."""
    try:
        onnx.checker.check_model(combined, full_check=True)
    except Exception as error:
        raise ConversionError(f"onnx.checker rejected the combined model: {str(error).strip().splitlines()[0]}") from error
    from export.quiet import silenced_stderr
    from export.runtime import open_session

    feeds = {value.name: _sample(value.name, _dims(value), value.type.tensor_type.elem_type, check_shapes.get(value.name))
             for value in _graph_inputs(network)}
    shown = ", ".join(f"{name} {'x'.join(map(str, array.shape))}" for name, array in feeds.items())
    # ONNX Runtime logs a failed run on stderr itself ([E:onnxruntime:...]); the error says it all
    with silenced_stderr():
        try:
            produced = open_session(network.SerializeToString(), "cpu").session.run([output], feeds)[0]
        except Exception as error:
            reason = _first_line(error)
            if check_shapes:
                raise UsageError(f"--check-shapes: ONNX Runtime cannot run --model on {shown}: {reason}") from None
            raise UsageError(f"--model: ONNX Runtime cannot run it on sample inputs ({shown}): {reason}; give input "
                             "shapes it takes with --check-shapes NAME=1x64x64x3") from None
        axis = spec.class_axis
        labels_shape = produced.shape[:axis] + produced.shape[axis + 1:] if spec.sparse else produced.shape
        labels_type = np.int64 if spec.sparse else produced.dtype
        feeds[label_input] = np.zeros(labels_shape, labels_type)  # class 0, or all-zero targets: valid labels
        try:
            outputs = open_session(combined.SerializeToString(), "cpu").session.run(None, feeds)
        except Exception as error:
            raise ConversionError(f"ONNX Runtime cannot run the combined model on {shown} and labels "
                                  f"{'x'.join(map(str, labels_shape))}: {type(error).__name__}: {_first_line(error)}") from error
    names = [value.name for value in combined.graph.output]
    loss = dict(zip(names, outputs)).get(per_sample)
    if loss is not None and np.isfinite(produced).all() and not np.isfinite(loss).all():
        raise ConversionError("the combined model's loss is not finite on sample inputs and labels of class 0: "
                              "the labels do not line up with the model's output")


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


_NUMPY_TYPES = {
    "FLOAT": np.float32, "DOUBLE": np.float64, "FLOAT16": np.float16, "BOOL": np.bool_,
    **{name.upper(): getattr(np, name) for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")},
}


def _sample(name: str, dims, element_type: int, shape=None) -> np.ndarray:
    """A small input for the check: ``shape`` where given, else symbolic dimensions 2; zeros."""
    shape = shape if shape is not None else [d if isinstance(d, int) else 2 for d in dims]
    element = onnx.TensorProto.DataType.Name(element_type)
    if element == "STRING":
        return np.full(shape, "", dtype=object)
    if element not in _NUMPY_TYPES:
        raise ConversionError(f"cannot make a sample input of type {element.lower()} for {name!r} to check the model")
    return np.zeros(shape, _NUMPY_TYPES[element])
