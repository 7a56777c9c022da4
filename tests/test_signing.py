"""`focalgraph sign` and `--public-key`: an unsigned, re-signed or altered artifact is refused,
naming the file (issue 10.3). The manifest guards against damage; the signature against edits."""

import json
import shutil

import numpy as np
import pytest

from exporting import BLOCK_TENSORFLOW, ROOT, exported, load_json, run_cli
from readme_blocks import readme_lines, run_lines
from export import artifact, signing
from export.errors import ArtifactError, UsageError
from export.exporter import export
from export.inspection import inspect
from export.validation import validate
from focal_graph.spec import FocalSpec

pytestmark = pytest.mark.slow
SPEC = FocalSpec(variant="sparse_softmax", ignore_index=-1)
C = 5


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    private, public = signing.keygen(root / "key")
    other_private, other_public = signing.keygen(root / "other")
    return {"private": private, "public": public, "other_private": other_private, "other_public": other_public}


@pytest.fixture(scope="module")
def signed_pristine(tmp_path_factory, keys):
    out = tmp_path_factory.mktemp("signing") / "artifact"
    exported(out, SPEC)
    signing.sign(out, keys["private"])
    return out


@pytest.fixture
def signed(signed_pristine, tmp_path):
    out = tmp_path / "artifact"
    shutil.copytree(signed_pristine, out)
    return out


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(20, C)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, C, 20))
    return tmp_path / "x.npy", tmp_path / "y.npy"


def flip_one_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def signature_byte(path):
    """An offset inside the signature value itself (base64), away from its last characters."""
    text = path.read_text()
    start = text.index('"sig":"') + len('"sig":"') if '"sig":"' in text else text.index('"sig": "') + len('"sig": "')
    return start + 10


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(keys):
    assert keys["private"].stat().st_mode & 0o777 == 0o600
    assert keys["public"].read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = keys["private"].read_bytes()
    result = run_cli("keygen", "--out", keys["private"])
    assert result.returncode == 2 and "already exists" in result.stderr
    assert keys["private"].read_bytes() == before


def test_a_signed_artifact_verifies_and_passes_every_command(signed, keys, data, tmp_path):
    assert (signed / artifact.SIGNATURE).is_file()
    artifact.verify(signed)  # signature.sig sits outside the manifest, which accepts it unlisted
    public = keys["public"]
    assert validate(signed, provider="cpu", reference_only=True, public_key=public)["passed"]
    assert inspect(signed, public_key=public)["signature"] == {"file": "signature.sig", "verified_with": str(public)}
    result = run_cli("eval", signed, "--predictions", data[0], "--labels", data[1], "--provider", "cpu", "--public-key", public)
    assert result.returncode == 0, result.stderr
    result = run_cli("validate", signed, "--reference-only", "--provider", "cpu", "--public-key", public)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", [
    "spec.json", "model.onnx", "reference.npz", "validation.json", "manifest.json", "saved_model/saved_model.pb",
    "signature.sig",
])
def test_one_flipped_byte_in_any_file_is_refused_naming_it(signed, keys, name):
    path = signed / name
    flip_one_byte(path, signature_byte(path) if name == artifact.SIGNATURE else None)
    with pytest.raises(ArtifactError) as raised:
        signing.verify(signed, keys["public"])
    assert str(raised.value).startswith(f"{path}: "), str(raised.value)
    result = run_cli("validate", signed, "--reference-only", "--provider", "cpu", "--public-key", keys["public"])
    assert result.returncode == 2
    assert result.stderr.startswith(f"focalgraph validate: error: {path}: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_an_edit_behind_a_recomputed_manifest_is_refused_naming_the_edited_file(signed, keys):
    """What the manifest cannot catch: gamma edited and the manifest recomputed."""
    spec = load_json(signed / "spec.json")
    spec["gamma"] = 0.5
    (signed / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    manifest = load_json(signed / artifact.MANIFEST)
    artifact.write_manifest(signed, manifest["spec"], {"saved_model_xla": manifest["saved_model_xla"]})
    artifact.verify(signed)
    with pytest.raises(ArtifactError, match=f"^{signed / 'spec.json'}: altered since it was signed"):
        signing.verify(signed, keys["public"])


@pytest.mark.parametrize("change, named, what", [
    (lambda d: (d / "notes.txt").write_text("added"), "notes.txt", "added after signing"),
    (lambda d: (d / "validation.json").unlink(), "validation.json", "missing"),
], ids=["added", "removed"])
def test_a_file_added_or_removed_after_signing_is_named(signed, keys, change, named, what):
    change(signed)
    with pytest.raises(ArtifactError, match=f"^{signed / named}: {what}"):
        signing.verify(signed, keys["public"])


def test_an_unsigned_artifact_is_refused_when_a_public_key_is_given(signed, keys, data, tmp_path):
    (signed / artifact.SIGNATURE).unlink()
    for command in (["validate", signed, "--reference-only"], ["inspect", signed],
                    ["eval", signed, "--predictions", data[0], "--labels", data[1]]):
        result = run_cli(*command, "--public-key", keys["public"])
        assert result.returncode == 2, command
        assert f"{signed / 'signature.sig'}: missing; the artifact is not signed" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_signature_made_with_another_key_is_refused(signed, keys):
    with pytest.raises(ArtifactError, match="signature.sig: not made with the key of .*signed with another key"):
        signing.verify(signed, keys["other_public"])
    signing.sign(signed, keys["other_private"], force=True)  # re-signing replaces the signature
    signing.verify(signed, keys["other_public"])
    with pytest.raises(ArtifactError, match="another key"):
        signing.verify(signed, keys["public"])


def test_attach_and_embed_take_the_public_key_too(signed, keys, tmp_path):
    (signed / artifact.SIGNATURE).unlink()
    result = run_cli("attach", "--model", "unused.onnx", "--output", "logits", "--loss", signed, "--out",
                     tmp_path / "c.onnx", "--public-key", keys["public"])
    assert result.returncode == 2 and "signature.sig: missing" in result.stderr
    (tmp_path / "model").mkdir()
    result = run_cli("embed", "--savedmodel", tmp_path / "model", "--output", "output_0", "--loss", signed, "--out",
                     tmp_path / "both", "--public-key", keys["public"])
    assert result.returncode == 2 and "signature.sig: missing" in result.stderr
    result = run_cli("attach", "--model", "unused.onnx", "--output", "logits", "--loss", signed / "model.onnx",
                     "--out", tmp_path / "c.onnx", "--public-key", keys["public"])
    assert result.returncode == 2 and "not an artifact directory; a signature covers a whole artifact" in result.stderr


def test_sign_refuses_an_artifact_whose_files_disagree(signed, keys):
    spec = load_json(signed / "spec.json")
    spec["gamma"] = 0.5
    (signed / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    result = run_cli("sign", signed, "--key", keys["private"], "--force")
    assert result.returncode == 2 and "spec.json" in result.stderr  # the manifest refuses it first
    manifest = load_json(signed / artifact.MANIFEST)
    artifact.write_manifest(signed, manifest["spec"], {"saved_model_xla": manifest["saved_model_xla"]})
    with pytest.raises(ArtifactError, match="spec.json does not describe the loss"):
        signing.sign(signed, keys["private"], force=True)


def test_a_key_that_cannot_sign_is_a_usage_error(signed, keys, tmp_path):
    (tmp_path / "garbage.pem").write_text("not a key")
    with pytest.raises(UsageError, match="--key: .* is not an unencrypted elliptic-curve private key"):
        signing.sign(signed, tmp_path / "garbage.pem", force=True)
    with pytest.raises(UsageError, match="--public-key: .* is not an elliptic-curve public key"):
        signing.verify(signed, tmp_path / "garbage.pem")


def test_force_replaces_a_signed_artifact(signed):
    export(signed, variant="softmax", provider="cpu", force=True, validate=False)
    assert not (signed / artifact.SIGNATURE).exists()


def test_without_the_extra_sign_and_public_key_say_what_to_install(signed, keys):
    blocked = "import sys\nsys.modules['model_signing'] = None"
    for command in (["sign", signed, "--key", keys["private"]],
                    ["validate", signed, "--reference-only", "--public-key", keys["public"]],
                    ["keygen", "--out", signed.parent / "new-key"]):
        result = run_cli(*command, python_prelude=blocked)
        assert result.returncode == 2, command
        assert result.stderr.strip().endswith("signing needs the optional signing extra: pip install 'focalgraph[signing]'")
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (signed.parent / "new-key").exists()


def test_the_readmes_signing_lines_run_as_written(signed_pristine, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(signed_pristine, repository / "artifacts" / "variant-sparse-softmax")
    (repository / "artifacts" / "variant-sparse-softmax" / artifact.SIGNATURE).unlink()
    (repository / ".venv").symlink_to(ROOT / ".venv")
    lines = readme_lines("### Signing", "mkdir -p /tmp/focalgraph-keys")
    assert [line.split()[1] for line in lines[1:]] == ["keygen", "sign", "validate", "inspect"]
    results = run_lines(lines, repository, {"/tmp/focalgraph-keys": tmp_path / "keys"})
    assert [result.returncode for result in results] == [0] * len(lines), [r.stderr for r in results]
    assert results[3].stdout.rstrip().endswith("PASS")
    assert "signature: signature.sig verified with" in results[4].stdout


def test_reference_only_validation_of_a_signed_artifact_needs_no_tensorflow(signed, keys):
    result = run_cli("validate", signed, "--reference-only", "--provider", "cpu", "--public-key", keys["public"],
                     python_prelude=BLOCK_TENSORFLOW)
    assert result.returncode == 0, result.stderr
