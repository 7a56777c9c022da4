"""An artifact directory: its layout and its manifest (writing it: `export.writing`).

Standard library and focalgraph's numpy-only spec, so every host (with or without TensorFlow)
can verify and read an artifact.

    DIR/
      spec.json        the FocalSpec, exactly as FocalSpec.to_json() writes it
      saved_model/     TF SavedModel: serving_default (unreduced loss), per_sample, sum, mean
                       (sigmoid: also normalized, per_sample_normalized)
      model.onnx       the same graph through tf2onnx
      reference.npz    validation inputs and TensorFlow's outputs
      validation.json  the export run's parity report
      manifest.json    size and sha256 of every other file, versions, creation time
      signature.sig    (after `focalgraph sign`) a signature of every other file
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sys
from importlib import metadata
from pathlib import Path

from export.errors import ArtifactError
from focal_graph.spec import FocalSpec

SPEC = "spec.json"
SAVED_MODEL = "saved_model"
ONNX = "model.onnx"
REFERENCE = "reference.npz"
VALIDATION = "validation.json"
MANIFEST = "manifest.json"
# `focalgraph sign`'s signature of every other file: outside the manifest (which it signs), so the
# manifest check accepts it unlisted; `export.signing` checks it.
SIGNATURE = "signature.sig"
MANIFEST_VERSION = 1
SPEC_METADATA = "focalgraph.spec"  # the ONNX metadata key that holds the spec's JSON
# The loss's forms: the ONNX model's outputs in this order, one SavedModel signature each.
FORMS = ("loss", "per_sample", "sum", "mean")
# RetinaNet's normalisation by positives, after FORMS in the artifacts of the losses that have it
# (`FocalSpec.normalized_by_positives`: the sigmoid variant).
NORMALIZED_FORMS = ("normalized", "per_sample_normalized")
KNOWN_FORMS = FORMS + NORMALIZED_FORMS


def forms(spec: FocalSpec) -> tuple[str, ...]:
    """The forms an artifact of ``spec`` carries, in output order."""
    return KNOWN_FORMS if spec.normalized_by_positives else FORMS

# Libraries whose versions decide the artifact's numbers; recorded in every manifest.
LIBRARIES = ("focalgraph", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime-gpu", "onnxruntime", "numpy", "protobuf")


def library_versions() -> dict[str, str]:
    """Installed versions of `LIBRARIES` (those not installed are left out), and Python's."""
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[str]:
    """Every file under ``directory``, as sorted POSIX paths relative to it. Anything else that is
    not a directory (a link, a pipe, a device) is an `ArtifactError`: an artifact holds files."""
    names = []
    for path in directory.rglob("*"):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise ArtifactError(f"{path}: not a regular file (a link or special file has no place in an artifact)")
        if path.is_file():
            names.append(path.relative_to(directory).as_posix())
    return sorted(names)


def write_manifest(directory: Path, spec_name: str, details: dict | None = None) -> dict:
    """Write ``manifest.json`` describing every file now in ``directory`` (and ``details`` of how
    it was made); returns it."""
    files = {
        name: {"size": (directory / name).stat().st_size, "sha256": sha256(directory / name)}
        for name in _files(directory)
        if name not in (MANIFEST, SIGNATURE)
    }
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "spec": spec_name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        **(details or {}),
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


MAX_MANIFEST_BYTES = 16 << 20  # far above any real manifest; a bigger file is not one


def read_manifest(path) -> dict:
    """``manifest.json`` at ``path``, checked against focalgraph's own schema (the fields
    `write_manifest` writes, each of its type; file names inside the artifact), or `ArtifactError`
    naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise ArtifactError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        if len(data) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        manifest = json.loads(data)
        if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION:
            raise ValueError("unknown manifest version")
        for key, kind in (("spec", str), ("created", str), ("versions", dict), ("files", dict)):
            if not isinstance(manifest.get(key), kind):
                raise ValueError(f"{key!r} missing or not a {kind.__name__}")
        for name, entry in manifest["files"].items():
            parts = Path(name).parts
            if Path(name).is_absolute() or ".." in parts or not parts or name == MANIFEST:
                raise ValueError(f"file name {name!r} is not a path inside the artifact")
            if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)):
                raise ValueError(f"entry for {name!r} needs an integer size and a sha256")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise ArtifactError(f"{path}: unreadable manifest ({error})") from None
    return manifest


def is_manifest(path) -> bool:
    """Whether ``path`` is a manifest focalgraph wrote (by its schema; the files are not checked)."""
    try:
        read_manifest(path)
    except ArtifactError:
        return False
    return True


def verify(directory) -> dict:
    """Check ``directory`` against its manifest; returns the manifest.

    Raises `ArtifactError` naming the first file that is missing, unreadable, of another size, of
    another content, or present but not in the manifest.
    """
    directory = Path(directory)
    if not directory.is_dir():
        reason = "a file, not a directory" if directory.exists() else "no such directory"
        raise ArtifactError(f"{directory}: not an artifact directory ({reason})")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; not a focalgraph artifact, or an incomplete one")
    manifest = read_manifest(path)
    files = manifest["files"]
    try:
        present = _files(directory)
    except OSError as error:
        raise ArtifactError(f"{error.filename or directory}: cannot read it ({error.strerror or error})") from None
    for name, entry in sorted(files.items()):
        file = directory / name
        if name not in present:
            raise ArtifactError(f"{file}: listed in {MANIFEST} but missing")
        try:
            size = file.stat().st_size
            digest = sha256(file) if size == entry["size"] else None
        except OSError as error:
            raise ArtifactError(f"{file}: cannot read it ({error.strerror or error})") from None
        if size != entry["size"]:
            raise ArtifactError(f"{file}: {size} bytes, {MANIFEST} says {entry['size']} (truncated or edited)")
        if digest != entry["sha256"]:
            raise ArtifactError(f"{file}: sha256 differs from {MANIFEST} (edited)")
    extra = [name for name in present if name not in (MANIFEST, SIGNATURE) and name not in files]
    if extra:
        raise ArtifactError(f"{directory / extra[0]}: not listed in {MANIFEST} (added after export)")
    return manifest


def first_foreign(directory) -> tuple[str, str] | None:
    """The first entry under ``directory`` that focalgraph did not write, as (relative path, why),
    or None: for an empty directory, or one whose every file its focalgraph manifest lists (sizes
    and contents aside: an edited artifact is still focalgraph's), `SIGNATURE` aside. Directories
    hold no data of their own and are not listed; links and special files are never focalgraph's."""
    directory = Path(directory)
    listed = None
    manifest = directory / MANIFEST
    if os.path.lexists(manifest):
        if manifest.is_symlink() or not manifest.is_file():
            return MANIFEST, "is not a focalgraph manifest (a link, or not a file)"
        try:
            listed = set(read_manifest(manifest)["files"])
        except ArtifactError:
            return MANIFEST, "is not a focalgraph manifest"
    for relative, kind in _entries(directory):
        if kind == "unreadable":
            return relative, "cannot be listed, so it may hold anything"
        if kind == "other":
            return relative, "is a link or special file, which focalgraph never writes"
        if relative == MANIFEST or (relative == SIGNATURE and listed is not None):
            continue  # `focalgraph sign` writes signature.sig beside the manifest it signs, never into it
        if listed is None:
            return relative, "was not written by focalgraph (no focalgraph manifest lists it)"
        if relative not in listed:
            return relative, f"is not listed in {MANIFEST} (focalgraph did not write it)"
    return None


def _entries(directory: Path, prefix: str = ""):
    """(relative POSIX path, "file" | "other" | "unreadable") for everything under ``directory``
    but directories, in sorted order, lazily (a foreign tree is not walked further than needed)."""
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError:
        yield (prefix.rstrip("/") or "."), "unreadable"
        return
    for entry in entries:
        relative = prefix + entry.name
        if entry.is_symlink():
            yield relative, "other"
        elif entry.is_dir(follow_symlinks=False):
            yield from _entries(Path(entry.path), relative + "/")
        elif entry.is_file(follow_symlinks=False):
            yield relative, "file"
        else:
            yield relative, "other"


def read_spec(directory) -> FocalSpec:
    """The artifact's ``spec.json``, or `ArtifactError` naming it."""
    path = Path(directory) / SPEC
    if not path.is_file():
        raise ArtifactError(f"{Path(directory)}: not a loss artifact (no {SPEC})")
    try:
        return FocalSpec.from_json(path.read_text())
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{path}: not a readable FocalSpec ({error})") from None


def loss_artifact(directory, *, onnx: bool = False) -> FocalSpec:
    """Verify a loss artifact against its manifest and return its spec; its ``model.onnx``, if
    any, must be self-contained (`check_self_contained`). With ``onnx``, an artifact exported
    without ``model.onnx`` is an `ArtifactError` too. The one way every command opens an artifact."""
    directory = Path(directory)
    verify(directory)
    spec = read_spec(directory)
    if (directory / ONNX).is_file():
        check_self_contained(directory / ONNX)
    elif onnx:
        raise ArtifactError(f"{directory / ONNX}: missing; this artifact was exported without ONNX")
    return spec


def check_self_contained(path) -> None:
    """`ArtifactError` unless ``path`` is a readable ONNX model holding all of its tensors' data.

    A loss never needs ONNX external data, and a tensor whose data lives "in another file" could
    point anywhere (``../../secret``) for ONNX Runtime to read."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except OSError as error:
        raise ArtifactError(f"{path}: cannot read it ({error.strerror or error})") from None
    except Exception as error:  # protobuf's DecodeError and others
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(error).__name__})") from None
    for tensor in _model_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
            raise ArtifactError(f"{path}: tensor {tensor.name!r} keeps its data in another file ({location!r}); "
                                "a focalgraph loss is one self-contained file")


def _model_tensors(model):
    """Every TensorProto of a model: its graph's, its functions' (ONNX Runtime inlines a
    function's Constant nodes, and loads their external data like an initializer's) and its
    training graphs'."""
    yield from _tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)
        yield from _attribute_tensors(function.attribute_proto)  # the functions' attribute defaults
    for training in model.training_info:
        yield from _tensors(training.initialization)
        yield from _tensors(training.algorithm)


def _tensors(graph):
    """Every TensorProto of a graph: initializers, sparse ones, and node attributes, subgraphs
    included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes):
    for node in nodes:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes):
    for attribute in attributes:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        for sparse in ([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []) + list(attribute.sparse_tensors):
            yield sparse.values
            yield sparse.indices
        if attribute.HasField("g"):
            yield from _tensors(attribute.g)
        for subgraph in attribute.graphs:
            yield from _tensors(subgraph)


def spec_from_metadata(text: str, where) -> FocalSpec:
    """The FocalSpec stored under `SPEC_METADATA` in an ONNX model's metadata, or `ArtifactError`
    naming ``where`` (the model file)."""
    try:
        return FocalSpec.from_json(text)
    except (ValueError, TypeError) as error:
        raise ArtifactError(f"{where}: its {SPEC_METADATA} metadata is not a readable FocalSpec ({error})") from None


def json_bytes(data: dict) -> bytes:
    """``data`` as strict JSON (a NaN or infinity is an error, not a non-standard token)."""
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()
