"""``export``: a spec to an artifact directory (see `export.artifact`), all or nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export import artifact, writing
from export.cases import generate, save_reference
from export.errors import OutputError, UsageError, ValidationFailed
from export.onnx_conversion import DEFAULT_OPSET, check_opset
from export.options import spec_from_options
from export.runtime import check_provider
from export.validation import tolerances
from focal_graph.spec import FocalSpec

FORMATS = ("savedmodel", "onnx")


@dataclass
class ExportResult:
    out: Path
    spec: FocalSpec
    formats: tuple[str, ...]
    validation: dict | None  # the report, None with validate=False or without ONNX


def export(out, *, preset=None, variant=None, spec=None, keras=None, format="savedmodel,onnx", opset: int | None = None,
           validate: bool = True, force: bool = False, provider: str = "auto", xla: bool = True,
           **spec_options) -> ExportResult:
    """Export one loss to the artifact directory ``out``.

    The loss is ``preset`` | ``variant`` | ``spec`` (a FocalSpec or a JSON file) | ``keras`` (a
    ``.keras`` model file: the loss it was compiled with, `export.keras_model`) with
    ``spec_options`` (``classes``, ``gamma``, ``alpha``, ... as on the command line) overriding
    fields. ``format``: ``savedmodel``, ``onnx`` or both (comma-separated or a sequence).
    ``opset``: 13 to 18 (default 17; ONNX only). With ``validate`` (and ONNX), ONNX Runtime on ``provider`` must match
    TensorFlow on every validation case, else `ValidationFailed`. ``xla``: compile the
    SavedModel's signatures with XLA (see `tensorflow_reference.save_saved_model`).

    Everything is written to a temporary directory beside ``out`` and renamed to ``out`` at the
    end (`export.writing.staged`): a failed or interrupted export leaves nothing at ``out``, and
    an existing ``out`` is replaced only with ``force``, and only if focalgraph wrote it or it is
    empty. Bad options raise `UsageError` before anything is written; a write that fails (a full
    disk) raises `OutputError`.
    """
    loss_spec = spec_from_options(preset=preset, variant=variant, spec=spec, keras=keras, **spec_options)
    formats = parse_formats(format)
    if opset is not None and "onnx" not in formats:
        raise UsageError("--opset: applies only with --format onnx")
    opset = check_opset(DEFAULT_OPSET if opset is None else opset)
    check_provider(provider)
    if loss_spec.dtype == "bfloat16":
        raise UsageError(
            "--dtype: bfloat16 cannot be exported (tf2onnx writes it as float16 and the model does not load; "
            "numpy has no bfloat16 for the reference outputs); export float32 or float16"
        )
    spec_file = spec if spec is not None and not isinstance(spec, FocalSpec) else None
    destination = writing.check_outputs({"--out": out}, {"--spec": spec_file, "--keras": keras}, directory=True,
                                        force=force)["--out"]

    from export import tensorflow_reference
    from export.onnx_conversion import convert
    from export.quiet import import_tensorflow
    from export.validation import run

    tf = import_tensorflow()
    with writing.staged(destination, force=force) as stage:
        (stage / artifact.SPEC).write_text(loss_spec.to_json())
        cases = generate(loss_spec)
        if "savedmodel" in formats:
            try:
                tensorflow_reference.save_saved_model(loss_spec, stage / artifact.SAVED_MODEL, xla=xla)
            except tf.errors.OpError as error:  # TF's own error for a full disk, say
                reason = error.message.strip().splitlines()[0].rpartition("; ")[2]
                raise OutputError(f"--out: cannot write {out} (TensorFlow could not save the SavedModel: {reason}); "
                                  "nothing was written") from None
            expected = tensorflow_reference.outputs_from_saved_model(stage / artifact.SAVED_MODEL, cases)
        else:
            expected = tensorflow_reference.outputs_from_spec(loss_spec, cases)
        save_reference(stage / artifact.REFERENCE, cases, expected)
        report = None
        if "onnx" in formats:
            metadata = {"spec": loss_spec.to_json(), "opset": opset, **artifact.library_versions()}
            model = convert(loss_spec, opset, metadata)
            (stage / artifact.ONNX).write_bytes(model.SerializeToString())
            if validate:
                atol, rtol = tolerances(loss_spec, None, None)
                source = "TensorFlow: " + (artifact.SAVED_MODEL if "savedmodel" in formats else "the spec's graph")
                report = run(stage / artifact.ONNX, loss_spec, cases, expected, provider=provider, atol=atol, rtol=rtol,
                             source=source)
                report["artifact"] = str(out)
                if not report["passed"]:
                    raise ValidationFailed(f"{out}: ONNX Runtime does not match TensorFlow; nothing was written", report)
                (stage / artifact.VALIDATION).write_bytes(artifact.json_bytes(report))
        artifact.write_manifest(stage, loss_spec.name, {"saved_model_xla": xla} if "savedmodel" in formats else {})
    return ExportResult(Path(out), loss_spec, formats, report)


def parse_formats(format) -> tuple[str, ...]:
    items = [item.strip() for item in format.split(",")] if isinstance(format, str) else list(format)
    if not items or any(item not in FORMATS for item in items):
        raise UsageError(f"--format: expected savedmodel, onnx or savedmodel,onnx, got {format!r}")
    return tuple(name for name in FORMATS if name in items)


def default_specs() -> dict[str, FocalSpec]:
    """The artifacts ``make artifacts`` exports: the three presets on their seeds' own numbers,
    and the variants as people use them. Variants leave C dynamic (no per-class parameter), so
    one artifact serves any class count."""
    return {
        # seed 000 takes the counts as an argument; these are the demo's
        "preset-multilabel-lsr": FocalSpec(preset="multilabel_lsr", class_counts=(5, 10, 20, 40)),
        "preset-multi-category": FocalSpec(preset="multi_category", class_counts=(100, 200, 50, 10)),  # seed 001
        "preset-sparse-softmax": FocalSpec(preset="sparse_softmax", alpha=(1.0, 1.0, 1.0, 1.0)),  # seed 002
        "variant-sparse-softmax": FocalSpec(variant="sparse_softmax", gamma=2.0),
        # (N, H, W, C) segmentation; 255 marks unlabelled pixels (Pascal VOC's convention)
        "variant-sparse-softmax-nhwc": FocalSpec(variant="sparse_softmax", rank=4, ignore_index=255, reduction="mean"),
        "variant-softmax": FocalSpec(variant="softmax", gamma=2.0),
        "variant-sigmoid": FocalSpec(variant="sigmoid", gamma=2.0, alpha=0.25),  # RetinaNet's values
    }


def export_defaults(out="artifacts", *, opset: int | None = None, validate: bool = True, force: bool = False,
                    provider: str = "auto", xla: bool = True, progress=None) -> list[ExportResult]:
    """Export every `default_specs` artifact to ``out/NAME``; ``progress(name, result)`` is
    called after each. Every destination is checked before the first is written."""
    for name in default_specs():
        writing.check_outputs({"--out": Path(out) / name}, directory=True, force=force)
    results = []
    for name, spec in default_specs().items():
        result = export(Path(out) / name, spec=spec, opset=opset, validate=validate, force=force, provider=provider,
                        xla=xla)
        if progress is not None:
            progress(name, result)
        results.append(result)
    return results
