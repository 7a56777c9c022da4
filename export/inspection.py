"""``inspect``: what an artifact holds, after checking it against its manifest (and, with a
public key, its signature), and whether its files agree on the loss (`export.consistency`).

Needs onnx and onnxruntime; TensorFlow only to list the SavedModel's signatures (skipped, and said
so, without it).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path

from export import artifact, consistency
from export.errors import ArtifactError


def inspect(artifact_dir, *, public_key=None) -> dict:
    """The artifact's spec, manifest, signature, SavedModel signatures, ONNX interface,
    validation at export, and whether its files agree on the loss (``consistency``: spec.json,
    the ONNX metadata and graph and reference.npz, without TensorFlow).

    ``public_key``: refuse the artifact unless its signature verifies with this public key
    (`export.signing.verify`). Raises `ArtifactError` for an unsigned artifact or one whose
    signature does not verify, and naming the first file that does not match the manifest or
    cannot be read as what it should be.
    """
    directory = Path(artifact_dir)
    if public_key is not None:
        from export import signing

        signing.verify(directory, public_key)
    spec = artifact.loss_artifact(directory)
    manifest = artifact.read_manifest(directory / artifact.MANIFEST)
    info = {
        "artifact": str(directory),
        "spec": spec.to_dict(),
        "manifest": {
            "verified": True,
            "files": len(manifest["files"]),
            "bytes": sum(entry["size"] for entry in manifest["files"].values()),
            "created": manifest["created"],
            "versions": manifest["versions"],
        },
        "signature": {
            "file": artifact.SIGNATURE if (directory / artifact.SIGNATURE).is_file() else None,
            "verified_with": None if public_key is None else str(public_key),
        },
        # files signed with no witness checking them (sign --unchecked-saved-model): {file: why}
        "unchecked": artifact.unchecked_files(manifest),
    }
    if (directory / artifact.SAVED_MODEL).is_dir():
        with _reading(directory / artifact.SAVED_MODEL):
            info["saved_model"] = _signatures(directory / artifact.SAVED_MODEL)
    if (directory / artifact.ONNX).is_file():
        with _reading(directory / artifact.ONNX):
            info["onnx"] = _onnx(directory / artifact.ONNX)
    if (directory / artifact.VALIDATION).is_file():
        with _reading(directory / artifact.VALIDATION):
            report = json.loads((directory / artifact.VALIDATION).read_bytes())
            info["validation"] = {
                "passed": bool(report["passed"]),
                "provider": str(report["onnxruntime"]["provider"]),
                "cases": len(report["cases"]),
                "max_abs_error": {str(v["output"]): v["max_abs_error"] for v in report["outputs"]},
            }
    info["consistency"] = _agreement(directory, spec)
    return info


@contextlib.contextmanager
def _reading(path: Path):
    """Any error while reading ``path`` (that the manifest check let through: a manifest can be
    recomputed over any content) becomes an `ArtifactError` naming it."""
    try:
        yield
    except ArtifactError:
        raise
    except Exception as error:  # json, onnx, TensorFlow and protobuf errors, OSError, KeyError, TypeError
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise ArtifactError(f"{path}: not a readable {path.name} ({type(error).__name__}{': ' + reason if reason else ''})") from None


def _agreement(directory: Path, spec) -> dict:
    """`export.consistency.check_artifact` without TensorFlow, as passed, the disagreeing files
    and the message; inspect shows what is there even when the files disagree."""
    report = consistency.check_artifact(directory, spec)
    return {key: report[key] for key in ("passed", "files", "message", "inputs")} | {
        "witnesses": [witness["name"] for witness in report["witnesses"]]}


def _signatures(path: Path) -> dict:
    try:
        from export.quiet import import_tensorflow, silenced_stderr

        import_tensorflow()
        with silenced_stderr():
            from tensorflow.python.tools import saved_model_utils

            meta_graph = saved_model_utils.get_meta_graph_def(str(path), "serve")
    except ImportError:
        return {"unavailable": "TensorFlow is not installed here"}
    import tensorflow as tf

    def tensors(mapping):
        return {
            key: {
                "dtype": tf.as_dtype(info.dtype).name,
                "shape": [None if d.size == -1 else d.size for d in info.tensor_shape.dim],
            }
            for key, info in sorted(mapping.items())
        }

    return {
        name: {"inputs": tensors(signature.inputs), "outputs": tensors(signature.outputs)}
        for name, signature in sorted(meta_graph.signature_def.items())
        if not name.startswith("__")
    }


def _onnx(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))

    def values(items):
        return [
            {
                "name": value.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name,
                "dims": [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim],
            }
            for value in items
        ]

    histogram = Counter(node.op_type for node in model.graph.node)
    return {
        "opset": {entry.domain or "ai.onnx": entry.version for entry in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": values(model.graph.input),
        "outputs": values(model.graph.output),
        "nodes": len(model.graph.node),
        "ops": dict(sorted(histogram.items(), key=lambda item: (-item[1], item[0]))),
        "metadata": {p.key: p.value for p in model.metadata_props if p.key != artifact.SPEC_METADATA},
    }


def format_inspection(info: dict) -> str:
    """``inspect``'s result as the command line prints it."""
    spec = {key: value for key, value in info["spec"].items() if value is not None}
    manifest = info["manifest"]
    lines = [
        f"{info['artifact']}",
        f"  spec: {json.dumps(spec)}",
        f"  manifest: verified, {manifest['files']} files, {manifest['bytes']} bytes, created {manifest['created']}",
        "  versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()),
    ]
    signature = info.get("signature", {})
    if signature.get("verified_with"):
        lines.append(f"  signature: {signature['file']} verified with {signature['verified_with']}")
    else:
        lines.append(f"  signature: {signature['file']} (not checked: pass --public-key)" if signature.get("file")
                     else "  signature: none (the manifest guards against damage, not against edits: see focalgraph sign)")
    lines.extend(f"  unchecked: {name}: {why}" for name, why in info.get("unchecked", {}).items())
    if "saved_model" in info:
        lines.append("  SavedModel signatures:")
        signatures = info["saved_model"]
        if "unavailable" in signatures:
            lines.append(f"    ({signatures['unavailable']})")
        for name, signature in signatures.items():
            if name == "unavailable":
                continue
            inputs = ", ".join(f"{k}: {v['dtype']}{_shape(v['shape'])}" for k, v in signature["inputs"].items())
            outputs = ", ".join(f"{k}: {v['dtype']}{_shape(v['shape'])}" for k, v in signature["outputs"].items())
            lines.append(f"    {name}({inputs}) -> {outputs}")
    if "onnx" in info:
        model = info["onnx"]
        opsets = ", ".join(f"{domain} {version}" for domain, version in model["opset"].items())
        lines.append(f"  ONNX: opset {opsets}; IR {model['ir_version']}; producer {model['producer']}; {model['nodes']} nodes")
        for kind in ("inputs", "outputs"):
            for value in model[kind]:
                lines.append(f"    {kind[:-1]:<6} {value['name']}: {value['dtype']}{_shape(value['dims'])}")
        lines.append("    ops: " + ", ".join(f"{op} {count}" for op, count in model["ops"].items()))
    if "validation" in info:
        validation = info["validation"]
        verdict = "PASS" if validation["passed"] else "FAIL"
        lines.append(f"  validation at export: {verdict} on {validation['provider']}, {validation['cases']} cases")
    if "consistency" in info:
        agreement = info["consistency"]
        checked = ", ".join(agreement["witnesses"])
        lines.append(f"  files agree on the loss ({checked}; on {agreement['inputs']})" if agreement["passed"]
                     else f"  FILES DISAGREE: {Path(info['artifact']) / agreement['files'][0]}: {agreement['message']}")
    return "\n".join(lines)


def _shape(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
