"""``export``: a spec to an artifact directory (see `export.artifact`), all or nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export import artifact
from export.cases import generate, save_reference
from export.errors import UsageError, ValidationFailed
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


def export(out, *, preset=None, variant=None, spec=None, format="savedmodel,onnx", opset: int | None = None,
           validate: bool = True, force: bool = False, provider: str = "auto", xla: bool = True,
           **spec_options) -> ExportResult:
    """Export one loss to the artifact directory ``out``.

    The loss is ``preset`` | ``variant`` | ``spec`` (a FocalSpec or a JSON file) with
    ``spec_options`` (``classes``, ``gamma``, ``alpha``, ... as on the command line) overriding
    fields. ``format``: ``savedmodel``, ``onnx`` or both (comma-separated or a sequence).
    ``opset``: 13 to 18 (default 17; ONNX only). With ``validate`` (and ONNX), ONNX Runtime on ``provider`` must match
    TensorFlow on every validation case, else `ValidationFailed`. ``xla``: compile the
    SavedModel's signatures with XLA (see `tensorflow_reference.save_saved_model`).

    Everything is written to a temporary directory beside ``out`` and renamed to ``out`` at the
    end: a failed or interrupted export leaves nothing at ``out``, and an existing ``out`` is
    replaced only with ``force``. Bad options raise `UsageError` before anything is written.
    """
    loss_spec = spec_from_options(preset=preset, variant=variant, spec=spec, **spec_options)
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
    artifact.check_destination(out, force)

    from export import tensorflow_reference
    from export.onnx_conversion import convert
    from export.validation import run

    with artifact.staged(Path(out), force) as stage:
        (stage / artifact.SPEC).write_text(loss_spec.to_json())
        cases = generate(loss_spec)
        if "savedmodel" in formats:
            tensorflow_reference.save_saved_model(loss_spec, stage / artifact.SAVED_MODEL, xla=xla)
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
                artifact.write_json_atomically(stage / artifact.VALIDATION, report)
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
    called after each."""
    results = []
    for name, spec in default_specs().items():
        result = export(Path(out) / name, spec=spec, opset=opset, validate=validate, force=force, provider=provider,
                        xla=xla)
        if progress is not None:
            progress(name, result)
        results.append(result)
    return results
