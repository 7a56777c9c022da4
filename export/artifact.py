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
# The manifest's record of files signed without a witness checking them (`export.signing.sign`
# with ``unchecked_saved_model``): {file: why}. The signature covers it, inspect and validate print it.
UNCHECKED = "unchecked"
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


def unchecked_files(manifest: dict) -> dict[str, str]:
    """The files ``manifest`` records as signed with no witness checking them, ``{file: why}``
    ({} for none; see `export.signing.sign`)."""
    record = manifest.get(UNCHECKED)
    return {str(name): str(why) for name, why in record.items()} if isinstance(record, dict) else {}


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
    point anywhere (``../../secret``) for ONNX Runtime to read. Every tensor is looked at: the
    graph's initializers (sparse ones too), node attributes, subgraphs, the model's functions
    (ONNX Runtime inlines their Constant nodes and loads external data for them) and its training
    graphs. The file is read as protobuf wire data, without the ``onnx`` package: importing it
    took 0.73 s, longer than eval of a small file."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ArtifactError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        found = _external_tensor(data)
    except ValueError:
        raise ArtifactError(f"{path}: not a readable ONNX model (DecodeError)") from None
    if found is not None:
        name, location = found
        raise ArtifactError(f"{path}: tensor {name!r} keeps its data in another file ({location!r}); "
                            "a focalgraph loss is one self-contained file")


# onnx.proto's field numbers on every path from ModelProto to a TensorProto (onnx 1.23; they never
# change, protobuf's compatibility rule): message kind -> {field number: kind of that field}
_PATHS_TO_TENSORS = {
    "model": {7: "graph", 20: "training", 25: "function"},  # graph, training_info, functions
    "training": {1: "graph", 2: "graph"},  # initialization, algorithm
    "function": {7: "node", 11: "attribute"},  # node, attribute_proto (attribute defaults)
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # node, initializer, sparse_initializer
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},  # values, indices
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 8, 13, 14, 1


def _external_tensor(data: bytes):
    """(name, location) of the first TensorProto in the serialized ModelProto ``data`` whose data
    is external (``data_location`` EXTERNAL, or any ``external_data`` entry), or None; ValueError
    when ``data`` is not protobuf wire data."""
    pending = [("model", 0, len(data))]
    while pending:
        kind, start, end = pending.pop()
        if kind == "tensor":
            name, location, external = "", "", False
            for number, value in _wire_fields(data, start, end):
                if number == _TENSOR_NAME and isinstance(value, tuple):
                    name = data[value[0]:value[1]].decode("utf-8", "replace")
                elif number == _TENSOR_EXTERNAL_DATA and isinstance(value, tuple):
                    external = True
                    entry = {key: data[field[0]:field[1]] for key, field in _wire_fields(data, *value)
                             if isinstance(field, tuple)}  # StringStringEntryProto: key 1, value 2
                    if entry.get(1) == b"location":
                        location = entry.get(2, b"").decode("utf-8", "replace")
                elif number == _TENSOR_DATA_LOCATION and value == _EXTERNAL:
                    external = True
            if external:
                return name, location
            continue
        fields = _PATHS_TO_TENSORS[kind]
        for number, value in _wire_fields(data, start, end):
            if number in fields and isinstance(value, tuple):
                pending.append((fields[number], *value))
    return None


def _wire_fields(data: bytes, start: int, end: int):
    """(field number, value) of the protobuf message in ``data[start:end]``: an int for a varint,
    (start, end) for a length-delimited field, None for a fixed-size one."""
    position = start
    while position < end:
        key, position = _varint(data, position, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == 0:
            value, position = _varint(data, position, end)
            yield number, value
        elif wire_type == 2:
            length, position = _varint(data, position, end)
            if position + length > end:
                raise ValueError("truncated field")
            yield number, (position, position + length)
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
            if position > end:
                raise ValueError("truncated field")
            yield number, None
        else:  # groups (3, 4): no ONNX message has one
            raise ValueError(f"wire type {wire_type}")


def _varint(data: bytes, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


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
