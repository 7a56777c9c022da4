"""``attach``: a loss artifact's ONNX graph joined to a model's ONNX graph at one of its outputs.

onnx and onnxruntime only. The combined model keeps every input and output of the model, takes
the loss's label input (``labels`` or ``targets``, prefixed if the model already has an input of
that name) and adds the loss's outputs, prefixed (``focal_loss``, ``focal_per_sample``,
``focal_sum``, ``focal_mean``). The loss's batch (and other) dimensions are renamed to the
model's, so the N of the labels is the N of the model's output. It is checked with the full
checker and a real ONNX Runtime session before it is written.
"""

from __future__ import annotations

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


def attach(*, model, output: str, loss, out, prefix: str = PREFIX, force: bool = False) -> onnx.ModelProto:
    """Join the loss at ``loss`` (an artifact directory or its ``model.onnx``) to ``model``'s
    output ``output``; write the result to ``out`` and return it. Raises `UsageError` on a bad
    argument (an output that does not exist, a class count or rank or dtype that does not match,
    a model opset below 13), `ConversionError` when the graphs cannot be reconciled."""
    destination = writing.check_outputs({"--out": out}, {"--model": model, "--loss": loss}, replace=force)["--out"]
    network = _load("--model", model)
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
    _check(combined)
    writing.write_atomically("--out", destination, combined.SerializeToString())
    return combined


def _names(graph) -> set:
    """Every tensor name of a graph: inputs, outputs, initializers and node outputs."""
    names = {value.name for value in list(graph.input) + list(graph.output)}
    names |= {tensor.name for tensor in graph.initializer}
    names |= {name for node in graph.node for name in node.output}
    return names


def _load(flag: str, path) -> onnx.ModelProto:
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
    classes = dims[spec.class_axis]
    if spec.num_classes is not None and isinstance(classes, int) and classes != spec.num_classes:
        raise UsageError(f"--loss: it fixes C={spec.num_classes}; output {name!r} has {classes} classes")
    if spec.num_classes is not None and not isinstance(classes, int):
        raise UsageError(f"--loss: it fixes C={spec.num_classes}; output {name!r} has a class dimension of unknown "
                         "size; attach a loss with a dynamic class count (exported without --classes)")


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


def _check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:
        raise ConversionError(f"onnx.checker rejected the combined model: {str(error).strip().splitlines()[0]}") from error
    from export.runtime import open_session

    try:
        session = open_session(model.SerializeToString(), "cpu").session
        session.run(None, {i.name: _sample(i) for i in session.get_inputs()})
    except Exception as error:
        raise ConversionError(f"ONNX Runtime cannot run the combined model: {type(error).__name__}: {error}") from error


_NUMPY_TYPES = {
    "float": np.float32, "double": np.float64, "float16": np.float16, "bool": np.bool_,
    **{name: getattr(np, name) for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")},
}


def _sample(value) -> np.ndarray:
    """A small input for a session input: symbolic dimensions 2, zeros (a valid label too)."""
    shape = [d if isinstance(d, int) else 2 for d in value.shape]
    element = value.type[len("tensor("):-1]
    if element == "string":
        return np.full(shape, "", dtype=object)
    if element not in _NUMPY_TYPES:
        raise ConversionError(f"cannot make a sample input of type {value.type} for {value.name!r} to check the model")
    return np.zeros(shape, _NUMPY_TYPES[element])

