"""Signatures: who made an artifact, where the manifest says only that it is intact.

``manifest.json`` protects against damage (a truncated copy, a flipped bit, a stray file), not
against someone who can write the files: they can edit ``spec.json`` and recompute the manifest.
A signature made with a private key they do not have can: ``sign`` signs every file of the
artifact (``manifest.json`` included) into ``signature.sig`` inside it, and a ``public_key``
given to validate, inspect, eval, attach or embed refuses an artifact that is unsigned, signed
with another key, or altered since, naming the file.

Signing is OpenSSF's ``model-signing`` (key-based: offline, no transparency log), an optional
extra: ``pip install 'focalgraph[signing]'``. Keys are elliptic-curve (P-256, P-384, P-521) PEM
files, as ``keygen`` or ``openssl ecparam -name prime256v1 -genkey`` makes them. The signature
is a Sigstore bundle whose payload lists every file's sha256; ``signature.sig`` itself is left out
of what it signs (it cannot sign itself) and out of the manifest, which accepts it unlisted.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import tempfile
from pathlib import Path

from export import artifact, writing
from export.errors import ArtifactError, OutputError, UsageError

SIGNATURE = artifact.SIGNATURE
INSTALL = "pip install 'focalgraph[signing]'"


def keygen(out) -> tuple[Path, Path]:
    """Write a new P-256 key pair: the private key to ``out`` (PEM, unencrypted, mode 0600) and
    the public key to ``out.pub``; returns both paths. Existing files are never replaced."""
    _model_signing("keygen")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private_path = Path(out)
    public_path = Path(f"{out}.pub")
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise UsageError(f"--out: {path} already exists; a key is never overwritten")
    for path in (private_path, public_path):  # the one output-path check, each file on its own
        writing.check_outputs({"--out": path})
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    created = False
    try:
        # O_EXCL and mode 0600 from the start: never another's file, never readable by others
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        created = True
        with os.fdopen(descriptor, "wb") as file:
            file.write(private)
        writing.write_atomically("--out", public_path, public)
    except (OSError, OutputError) as error:
        if created:
            private_path.unlink(missing_ok=True)
        if isinstance(error, OutputError):
            raise
        if error.errno == errno.EEXIST:
            raise UsageError(f"--out: {private_path} already exists; a key is never overwritten") from None
        raise OutputError(f"--out: cannot write {private_path} ({error.strerror or error}); nothing was written") from None
    return private_path, public_path


def sign(artifact_dir, key, *, force: bool = False, unchecked_saved_model: bool = False) -> Path:
    """Sign the artifact at ``artifact_dir`` with the private key file ``key``; returns the path
    of ``signature.sig``. One that exists (the artifact was signed before, or someone put a file
    of that name there) is replaced only with ``force``, otherwise `UsageError` (docs/outputs.md).

    Only an artifact that passes its own checks is signed: its manifest, and for a loss artifact
    the agreement of its files (`export.consistency`), so a signature never vouches for an edited
    ``spec.json``. No signature covers a file no witness checked: a ``saved_model/`` is run by
    TensorFlow on the stored inputs (`export.consistency.saved_model_witness`). Without
    TensorFlow, an artifact holding one is refused (`UsageError`) unless ``unchecked_saved_model``,
    which the manifest then records under ``unchecked`` (`_record_unchecked`), inside what is
    signed; inspect and validate print it. Raises `ArtifactError` for an artifact that fails its
    checks, `UsageError` for a key that cannot sign.
    """
    model_signing = _model_signing("sign")
    from model_signing import hashing

    directory = Path(artifact_dir)
    if os.path.lexists(directory / SIGNATURE) and not force:
        raise writing.existing_output("ARTIFACT", directory / SIGNATURE)
    artifact.verify(directory)
    unchecked = None
    if (directory / artifact.SPEC).is_file():
        from export.consistency import confirm_artifact

        spec = artifact.read_spec(directory)
        saved_model = None
        if (directory / artifact.SAVED_MODEL).is_dir():
            saved_model, unchecked = _saved_model_witness(directory, unchecked_saved_model)
        confirm_artifact(directory, spec, saved_model=saved_model)
    key = _key_file("--key", key)
    try:
        config = model_signing.signing.Config().use_elliptic_key_signer(private_key=key)
    except Exception as error:  # cryptography's ValueError/TypeError/UnsupportedAlgorithm, model_signing's ValueError
        raise UsageError(f"--key: {key} is not an unencrypted elliptic-curve private key in PEM "
                         f"(P-256, P-384 or P-521; {_first_line(error)})") from None
    config.set_hashing_config(hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False))
    _record_unchecked(directory, unchecked)  # before signing: the record is part of what is signed
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / SIGNATURE
        try:
            config.sign(directory, bundle)
        except Exception as error:  # model_signing's own errors while hashing or signing
            raise ArtifactError(f"{directory}: could not be signed ({_first_line(error)})") from None
        # inside the artifact on purpose, so not through `writing.check_outputs` (which refuses that)
        writing.write_atomically("ARTIFACT", directory / SIGNATURE, bundle.read_bytes(), force=force)
    return directory / SIGNATURE


UNCHECKED_SAVED_MODEL = ("signed without TensorFlow (sign --unchecked-saved-model): no witness ran it, so nothing "
                         "says it computes the loss spec.json, model.onnx and reference.npz describe")


def _saved_model_witness(directory: Path, unchecked_saved_model: bool):
    """``(witness, None)``: the SavedModel run by TensorFlow on the stored inputs; or, without
    TensorFlow and with ``unchecked_saved_model``, ``(None, the note to record)``."""
    from export.errors import MissingExtra
    from export.quiet import import_tensorflow

    path = directory / artifact.SAVED_MODEL
    try:
        import_tensorflow()
    except MissingExtra:
        if not unchecked_saved_model:
            raise UsageError(f"ARTIFACT: {path} cannot be checked without TensorFlow, and a signature may not cover a "
                             "file no witness checked: install focalgraph[tensorflow], or pass --unchecked-saved-model "
                             "(the artifact then records it unchecked)") from None
        return None, UNCHECKED_SAVED_MODEL
    from export import consistency, tensorflow_reference

    cases, _ = consistency.stored_cases(directory)
    try:
        forms = tensorflow_reference.saved_model_forms(path)
    except Exception as error:  # TensorFlow's OpError, OSError, KeyError for a missing signature
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ArtifactError(f"{path}: TensorFlow cannot load it or it lacks a signature of the forms ({reason})") from None
    return consistency.saved_model_witness(forms, cases), None


def _record_unchecked(directory: Path, note: str | None) -> None:
    """The manifest's ``unchecked`` record, set to ``{"saved_model": note}``, or removed when a
    witness checked the SavedModel this time (``note`` None); the manifest is focalgraph's own
    file of an artifact that has just passed `artifact.verify`, so it is rewritten in place."""
    path = directory / artifact.MANIFEST
    manifest = artifact.read_manifest(path)
    if note is None and artifact.UNCHECKED not in manifest:
        return
    if note is None:
        del manifest[artifact.UNCHECKED]
    else:
        manifest[artifact.UNCHECKED] = {artifact.SAVED_MODEL: note}
    writing.write_atomically("ARTIFACT", path, (json.dumps(manifest, indent=2) + "\n").encode(), force=True)


def _key_file(flag: str, path) -> Path:
    """``path`` if it is a regular file; a `UsageError` saying which of missing or not a file."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{flag}: {path}: no such file")
    if not path.is_file():  # /dev/zero would be read for ever, a FIFO would wait for a writer
        raise UsageError(f"{flag}: {path} is not a regular file (a directory, device or pipe); give the PEM key file")
    return path


def verify(artifact_dir, public_key, flag: str = "--public-key") -> None:
    """Refuse the artifact at ``artifact_dir`` unless ``signature.sig`` is a signature of every
    file in it by the private key of ``public_key`` (a PEM file).

    Raises `ArtifactError` naming the file: ``signature.sig`` when it is missing, damaged or made
    with another key; otherwise the first file altered, added or removed since signing. The
    manifest check comes after (`export.artifact.verify`); ``flag`` names the option in errors.
    """
    model_signing = _model_signing(flag)
    directory = Path(artifact_dir)
    public_key = _key_file(flag, public_key)
    if not directory.is_dir():
        raise UsageError(f"{flag}: {directory} is not an artifact directory; a signature covers a whole artifact "
                         "(pass the directory, not a file in it)")
    signature = directory / SIGNATURE
    if not signature.is_file() or signature.is_symlink():
        raise ArtifactError(f"{signature}: missing; the artifact is not signed ({flag} refuses unsigned artifacts; "
                            f"focalgraph sign {directory} --key KEY signs one)")
    try:
        config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    except Exception as error:  # cryptography's ValueError for a file that is not a PEM public key
        raise UsageError(f"{flag}: {public_key} is not an elliptic-curve public key in PEM ({_first_line(error)})") from None
    try:
        config.verify(directory, signature)
    except Exception as error:  # pydantic's ValidationError, cryptography's InvalidSignature, ValueError, ...
        raise ArtifactError(_refusal(directory, signature, public_key, error)) from None


def _refusal(directory: Path, signature: Path, public_key: Path, error: Exception) -> str:
    """The one line that names what failed: a file that changed since signing, or the signature."""
    text = str(error)
    if text.startswith("Signature mismatch:"):
        # model_signing checked the signature itself and then found files that differ from what it
        # signs; which ones is read from the signed payload, not from the error's wording
        changed = _changed_since_signing(directory, signature)
        if changed:
            return changed
        return f"{directory}: does not match {SIGNATURE} ({text[:200]})"
    unusable = re.match(r"Cannot use '([^']+)'", text)
    if unusable:  # model_signing refuses links and special files, as the manifest check does
        return f"{unusable.group(1)}: not a regular file (a link or special file has no place in an artifact)"
    if text.startswith("Key mismatch"):
        return f"{signature}: not made with the key of {public_key} (signed with another key)"
    return f"{signature}: does not verify with {public_key} (damaged or forged: {type(error).__name__}: {_first_line(error)[:160]})"


def _changed_since_signing(directory: Path, signature: Path) -> str:
    """The first file altered, removed or added since signing, from the sha256 list the signature
    carries (an in-toto statement in the bundle's DSSE envelope: model_signing's v1.0 predicate);
    "" when that list cannot be read."""
    try:
        envelope = json.loads(signature.read_text())["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"]))
        signed = {resource["name"]: resource["digest"] for resource in statement["predicate"]["resources"]}
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    present = {path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file()}
    present.discard(SIGNATURE)
    # manifest.json last: whoever edits a file and recomputes the manifest changed both
    for name in sorted(signed, key=lambda name: (name == artifact.MANIFEST, name)):
        if name not in present:
            return f"{directory / name}: missing; it was signed and is gone"
        if artifact.sha256(directory / name) != signed[name]:
            return f"{directory / name}: altered since it was signed (its sha256 is not the one {SIGNATURE} signs)"
    for name in sorted(present - set(signed)):
        return f"{directory / name}: added after signing"
    return ""


def _model_signing(flag: str):
    try:
        import model_signing  # noqa: F401  (its submodules are imported by the package)
    except ImportError:  # model_signing itself, or a dependency of it (pyOpenSSL is imported, not declared)
        raise UsageError(f"{flag}: signing needs the optional signing extra: {INSTALL}") from None
    return model_signing


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
