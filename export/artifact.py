"""An artifact directory: its layout, its manifest, and writing it atomically.

Standard library and focalgraph's numpy-only spec, so every host (with or without TensorFlow)
can verify and read an artifact.

    DIR/
      spec.json        the FocalSpec, exactly as FocalSpec.to_json() writes it
      saved_model/     TF SavedModel: serving_default (unreduced loss), per_sample, sum, mean
      model.onnx       the same graph through tf2onnx
      reference.npz    validation inputs and TensorFlow's outputs
      validation.json  the export run's parity report
      manifest.json    size and sha256 of every other file, versions, creation time
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Iterator

from export.errors import ArtifactError, UsageError
from focal_graph.spec import FocalSpec

SPEC = "spec.json"
SAVED_MODEL = "saved_model"
ONNX = "model.onnx"
REFERENCE = "reference.npz"
VALIDATION = "validation.json"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# The loss's forms: the ONNX model's outputs in this order, one SavedModel signature each.
FORMS = ("loss", "per_sample", "sum", "mean")

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
        if name != MANIFEST
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


def verify(directory) -> dict:
    """Check ``directory`` against its manifest; returns the manifest.

    Raises `ArtifactError` naming the first file that is missing, of another size, of another
    content, or present but not in the manifest.
    """
    directory = Path(directory)
    if not directory.is_dir():
        reason = "a file, not a directory" if directory.exists() else "no such directory"
        raise ArtifactError(f"{directory}: not an artifact directory ({reason})")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; not a focalgraph artifact, or an incomplete one")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("manifest_version") != MANIFEST_VERSION or not isinstance(files, dict):
            raise ValueError("unknown manifest version")
        for name, entry in files.items():
            parts = Path(name).parts
            if Path(name).is_absolute() or ".." in parts or not parts or name == MANIFEST:
                raise ValueError(f"file name {name!r} is not a path inside the artifact")
            if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)):
                raise ValueError(f"entry for {name!r} needs an integer size and a sha256")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise ArtifactError(f"{path}: unreadable manifest ({error})") from None
    present = _files(directory)
    for name, entry in sorted(files.items()):
        file = directory / name
        if name not in present:
            raise ArtifactError(f"{file}: listed in {MANIFEST} but missing")
        size = file.stat().st_size
        if size != entry["size"]:
            raise ArtifactError(f"{file}: {size} bytes, {MANIFEST} says {entry['size']} (truncated or edited)")
        if sha256(file) != entry["sha256"]:
            raise ArtifactError(f"{file}: sha256 differs from {MANIFEST} (edited)")
    extra = [name for name in present if name != MANIFEST and name not in files]
    if extra:
        raise ArtifactError(f"{directory / extra[0]}: not listed in {MANIFEST} (added after export)")
    return manifest


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
    """Verify a loss artifact against its manifest and return its spec; with ``onnx``, an
    artifact exported without ``model.onnx`` is an `ArtifactError` too. The one way every command
    opens an artifact."""
    directory = Path(directory)
    verify(directory)
    spec = read_spec(directory)
    if onnx and not (directory / ONNX).is_file():
        raise ArtifactError(f"{directory / ONNX}: missing; this artifact was exported without ONNX")
    return spec


def check_destination(out, force: bool) -> Path:
    """``out`` as an absolute Path, or a `UsageError`: ``out`` must not exist (or, with ``force``,
    be an artifact or an empty directory, which is replaced), must not be this process's working
    directory or one of its parents, and must be creatable (its nearest existing parent a
    writable directory)."""
    out = Path(os.path.abspath(out))
    if out == Path.cwd() or out in Path.cwd().parents:
        raise UsageError(f"--out: {out} is the working directory or one of its parents; name a new directory")
    if out.exists() or out.is_symlink():
        if not force:
            raise UsageError(f"--out: {out} already exists; pass --force to replace it")
        if out.is_symlink() or not out.is_dir():
            raise UsageError(f"--out: {out} exists and is not a directory")
        if not (out / MANIFEST).is_file() and any(out.iterdir()):
            raise UsageError(f"--out: {out} is not a focalgraph artifact and not empty; --force replaces only those")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out: cannot create {out}: {parent} is not a writable directory")
    return out


@contextlib.contextmanager
def staged(out, force: bool) -> Iterator[Path]:
    """A temporary directory beside ``out`` that becomes ``out`` only if the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary directory, and any parent
    directories created for it, are removed and ``out`` is as it was. An existing ``out`` is
    replaced only when ``force`` is set, and only after the new one is complete.
    """
    out = check_destination(out, force)
    created = [p for p in reversed(out.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as error:
        _remove_created(created)
        raise UsageError(f"--out: cannot create {out} ({error.strerror})") from None
    stage.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; an artifact is an ordinary directory
    old = None
    try:
        yield stage
        if out.exists():
            if not force:  # appeared while we worked
                raise UsageError(f"--out: {out} already exists; pass --force to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if old is not None:
            if not out.exists() and (old / out.name).exists():
                os.replace(old / out.name, out)  # interrupted between the two renames: put it back
            shutil.rmtree(old, ignore_errors=True)
        _remove_created(created)
        raise


def _remove_created(directories) -> None:
    for directory in reversed(directories):
        with contextlib.suppress(OSError):
            directory.rmdir()


def staged_file(path, data: bytes = b"") -> str:
    """A temporary file beside ``path`` holding ``data``, with the permissions an ordinary file
    gets (mkstemp's 0600 is for the temporary only); the caller renames it to ``path``."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o666 & ~current_umask())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return temporary


def json_bytes(data: dict) -> bytes:
    """``data`` as strict JSON (a NaN or infinity is an error, not a non-standard token)."""
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()


def write_atomically(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, so no half-written file ever remains."""
    temporary = staged_file(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_json_atomically(path, data: dict) -> None:
    write_atomically(path, json_bytes(data))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
