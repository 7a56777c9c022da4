"""No signature covers a file no witness checked (issue 21, item 3): an artifact whose
saved_model/ computes gamma 0.5 while spec.json, model.onnx and reference.npz say gamma 2 is not
signed; without TensorFlow an artifact with a SavedModel is signed only with
--unchecked-saved-model, which the signed manifest records and inspect and validate print."""

import json
import shutil

import pytest

from exporting import BLOCK_TENSORFLOW, exported, load_json, one_line_error, run_cli, snapshot
from export import artifact, signing
from focal_graph.spec import FocalSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    pytest.importorskip("model_signing")
    return signing.keygen(tmp_path_factory.mktemp("sign-keys") / "key")


@pytest.fixture(scope="module")
def tampered_pristine(tmp_path_factory):
    """gamma 2 everywhere but saved_model/, which is a gamma 0.5 export's, behind a recomputed
    manifest (what someone who can write the files would do)."""
    root = tmp_path_factory.mktemp("tampered")
    exported(root / "gamma2", FocalSpec(variant="sparse_softmax", gamma=2.0), validate=False, xla=False)
    exported(root / "gamma05", FocalSpec(variant="sparse_softmax", gamma=0.5), format="savedmodel", validate=False,
             xla=False)
    shutil.rmtree(root / "gamma2" / artifact.SAVED_MODEL)
    shutil.copytree(root / "gamma05" / artifact.SAVED_MODEL, root / "gamma2" / artifact.SAVED_MODEL)
    manifest = load_json(root / "gamma2" / artifact.MANIFEST)
    artifact.write_manifest(root / "gamma2", manifest["spec"], {"saved_model_xla": manifest["saved_model_xla"]})
    artifact.verify(root / "gamma2")
    return root / "gamma2"


@pytest.fixture
def tampered(tampered_pristine, tmp_path):
    shutil.copytree(tampered_pristine, tmp_path / "artifact")
    return tmp_path / "artifact"


def test_sign_runs_the_savedmodel_witness_and_refuses_a_savedmodel_computing_another_loss(tampered, keys):
    before = snapshot(tampered)
    line = one_line_error(run_cli("sign", tampered, "--key", keys[0]), "sign")
    assert f"{tampered / artifact.SAVED_MODEL}:" in line
    assert snapshot(tampered) == before  # no signature.sig, the manifest untouched


def test_without_tensorflow_sign_refuses_an_artifact_with_a_savedmodel(tampered, keys):
    before = snapshot(tampered)
    line = one_line_error(run_cli("sign", tampered, "--key", keys[0], python_prelude=BLOCK_TENSORFLOW), "sign")
    assert f"{tampered / artifact.SAVED_MODEL} cannot be checked without TensorFlow" in line
    assert "--unchecked-saved-model" in line
    assert snapshot(tampered) == before


def test_unchecked_saved_model_is_recorded_in_what_is_signed_and_printed(tampered, keys):
    private, public = keys
    result = run_cli("sign", tampered, "--key", private, "--unchecked-saved-model", python_prelude=BLOCK_TENSORFLOW)
    assert result.returncode == 0, result.stderr
    record = load_json(tampered / artifact.MANIFEST)[artifact.UNCHECKED]
    assert list(record) == [artifact.SAVED_MODEL] and "no witness ran it" in record[artifact.SAVED_MODEL]
    artifact.verify(tampered)  # the rewritten manifest still describes every file

    inspected = run_cli("inspect", tampered, "--public-key", public, python_prelude=BLOCK_TENSORFLOW)
    assert inspected.returncode == 0, inspected.stderr
    assert "signature: signature.sig verified with" in inspected.stdout
    assert "unchecked: saved_model: signed without TensorFlow" in inspected.stdout
    validated = run_cli("validate", tampered, "--reference-only", "--provider", "cpu", "--public-key", public,
                        python_prelude=BLOCK_TENSORFLOW)
    assert "unchecked at signing: saved_model: signed without TensorFlow" in validated.stdout, validated.stderr

    # the record is covered: taking it out of the manifest breaks the signature, naming the manifest
    manifest = load_json(tampered / artifact.MANIFEST)
    del manifest[artifact.UNCHECKED]
    (tampered / artifact.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    line = one_line_error(run_cli("inspect", tampered, "--public-key", public, python_prelude=BLOCK_TENSORFLOW),
                          "inspect")
    assert f"{tampered / artifact.MANIFEST}: altered since it was signed" in line
