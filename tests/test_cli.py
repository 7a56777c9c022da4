"""The `focalgraph` command line: one-line errors with exit 2, quiet TensorFlow, TF-free validation."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exporting import BLOCK_TENSORFLOW, ROOT, exported, load_json, reference, run_cli
from export import artifact
from export.cases import generate
from export.exporter import default_specs
from focal_graph.spec import FocalSpec


@pytest.fixture(scope="module")
def sparse_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sparse"
    exported(out, FocalSpec(variant="sparse_softmax", ignore_index=-1))
    return out


@pytest.mark.parametrize(
    "args, named",
    [
        (["--preset", "focal-lovasz"], "--preset: expected one of multilabel-lsr, multi-category, sparse-softmax"),
        (["--variant", "softmax", "--classes", "3", "--alpha", "0.1,0.2"], "--alpha: expected 3 values"),
        (["--variant", "softmax", "--opset", "19"], "--opset: expected an integer from 13 to 18, got 19"),
        (["--variant", "softmax", "--rank", "1"], "--rank"),
        (["--spec", "no/such/spec.json"], "--spec: cannot read no/such/spec.json"),
        (["--variant", "softmax", "--gamma", "two"], "--gamma: expected a number"),
        (["--variant", "softmax", "--beta", "x"], "'--beta'"),
        (["--variant", "softmax", "--dtype", "bfloat16"], "--dtype: bfloat16 cannot be exported"),
        (["--variant", "softmax", "--format", "tflite"], "--format"),
        (["--variant", "softmax", "--ignore-index", "3"], "--ignore-index: does not apply"),  # sigmoid takes it (issue 12)
        (["--preset", "sparse-softmax", "--variant", "softmax"], "--preset/--variant/--spec/--keras: give exactly one"),
        (["--variant", "softmax", "--provider", "tpu"], "--provider: expected one of auto, cpu, cuda"),
    ],
    ids=["unknown-preset", "alpha-length", "opset-19", "rank-1", "unreadable-spec", "gamma-text", "beta-text",
         "bfloat16", "format", "inapplicable-field", "two-sources", "provider"],
)
def test_bad_export_option_is_one_line_exit_2_and_writes_nothing(tmp_path, args, named):
    out = tmp_path / "out"
    result = run_cli("export", *args, "--out", out)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("focalgraph export: error: ") and named in lines[0], result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_spec_file_that_is_not_json_is_a_usage_error(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("{variant: softmax")
    result = run_cli("export", "--spec", path, "--out", tmp_path / "out")
    assert result.returncode == 2 and "not valid JSON" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]


@pytest.mark.parametrize(
    "text, named",
    [('{"variant": "softmax", "gamma": 1, "gamma": 2}', "gamma: given twice"),
     ('{"variant": "softmax", "num_classes": 3, "num-classes": 4}', "given twice"),
     ("[" * 100000, "nested too deeply"),
     ('{"variant": "sparse_softmax", "ignore_index": 99999999999999999999}', "64-bit integer")],
    ids=["repeated-key", "key-with-dash-and-underscore", "deep", "huge-integer"],
)
def test_spec_file_that_is_not_one_spec_is_a_usage_error(tmp_path, text, named):
    path = tmp_path / "spec.json"
    path.write_text(text)
    result = run_cli("export", "--spec", path, "--out", tmp_path / "out")
    assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr


def test_overriding_a_spec_file_drops_what_the_file_derived(tmp_path):
    from export.options import spec_from_options

    probabilities = tmp_path / "p.json"
    probabilities.write_text(FocalSpec(variant="softmax", from_logits=False).to_json())  # epsilon 1e-7 written out
    assert spec_from_options(spec=str(probabilities), from_logits=True).epsilon is None
    counted = tmp_path / "c.json"
    counted.write_text(FocalSpec(variant="softmax", class_counts=[10, 20, 30], weighting="effective_number").to_json())
    spec = spec_from_options(spec=str(counted), class_counts="1,2,3,4")
    assert (spec.num_classes, spec.weighting, spec.beta) == (4, "inverse_frequency", None)
    spec = spec_from_options(spec=str(counted), class_weight="1,2,3")
    assert spec.class_counts is None and spec.class_weight == (1.0, 2.0, 3.0)


def test_existing_out_without_force_is_a_usage_error(sparse_artifact):
    result = run_cli("export", "--variant", "softmax", "--out", sparse_artifact)
    assert result.returncode == 2 and "pass --force" in result.stderr
    artifact.verify(sparse_artifact)


@pytest.mark.slow
def test_export_prints_one_line_and_no_tensorflow_noise(tmp_path):
    args = ["export", "--variant", "sigmoid", "--alpha", "0.25", "--rank", "3", "--out", tmp_path / "a", "--provider", "cpu"]
    result = run_cli(*args, env={"TF_CPP_MIN_LOG_LEVEL": "0"})  # even with TensorFlow's INFO level on
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    cases = len(generate(FocalSpec(variant="sigmoid", alpha=0.25, rank=3)))
    relative = re.search(r"; (\d+) loss elements above 1e-30 relatively, within the spec's bound\)\n$", result.stdout)
    assert relative and int(relative.group(1)) > 0, result.stdout
    assert result.stdout == (f"wrote {tmp_path / 'a'} (variant:sigmoid; savedmodel, onnx); ONNX Runtime (CPUExecutionProvider)"
                             f" matches TensorFlow on {cases} cases (every element within atol 1e-05 or rtol 1e-05"
                             f"; {relative.group(1)} loss elements above 1e-30 relatively, within the spec's bound)\n")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_lets_tensorflow_speak(tmp_path, where):
    args = ["export", "--variant", "softmax", "--out", tmp_path / "a", "--no-validate"]
    argv = ["--verbose", *args] if where == "before" else [*args, "--verbose"]
    result = run_cli(*argv, env={"TF_CPP_MIN_LOG_LEVEL": "0"})  # conftest quiets TF for the suite
    assert result.returncode == 0, result.stderr
    assert "oneDNN" in result.stderr or "absl" in result.stderr  # TensorFlow's own start-up lines


@pytest.mark.slow
def test_reference_only_validation_runs_with_tensorflow_unimportable(sparse_artifact):
    prelude = BLOCK_TENSORFLOW + "\nimport atexit\natexit.register(lambda: print('tensorflow loaded:', any(m.startswith('tensorflow') for m in sys.modules if sys.modules[m] is not None)))"
    result = run_cli("validate", sparse_artifact, "--reference-only", "--provider", "cpu", python_prelude=prelude)
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout and "reference: reference.npz" in result.stdout
    assert "tensorflow loaded: False" in result.stdout


def test_tensorflow_is_really_blocked_by_the_prelude():
    code = BLOCK_TENSORFLOW + "\nimport tensorflow"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode != 0


@pytest.mark.slow
def test_inspect_shows_signatures_dims_opset_and_ops(sparse_artifact):
    result = run_cli("inspect", sparse_artifact)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "manifest: verified" in text
    assert "serving_default(labels: int64[?], logits: float32[?, ?]) -> loss: float32[?]" in text
    assert "input  logits: float32[N, C]" in text and "output per_sample: float32[N]" in text
    assert "opset ai.onnx 17" in text and "GatherND" in text
    info = json.loads(run_cli("inspect", sparse_artifact, "--json").stdout)
    assert set(info["saved_model"]) == {"serving_default", "per_sample", "sum", "mean"}
    assert info["onnx"]["nodes"] == sum(info["onnx"]["ops"].values())


def test_inspect_without_tensorflow_still_shows_the_onnx_side(sparse_artifact):
    result = run_cli("inspect", sparse_artifact, python_prelude=BLOCK_TENSORFLOW)
    assert result.returncode == 0, result.stderr
    assert "TensorFlow is not installed here" in result.stdout and "input  labels: int64[N]" in result.stdout


def test_cuda_without_a_gpu_fails_clearly(sparse_artifact):
    import onnxruntime

    from export.runtime import CUDA, open_session

    try:
        usable = open_session(str(sparse_artifact / artifact.ONNX), "auto").provider == CUDA
    except Exception:
        usable = False
    if usable:
        pytest.skip("this machine has a usable CUDA provider")
    result = run_cli("validate", sparse_artifact, "--reference-only", "--provider", "cuda")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--provider cuda:" in result.stderr and "Traceback" not in result.stderr
    assert onnxruntime.__version__


@pytest.mark.slow
def test_bare_inference_session_without_focalgraph_runs_the_model(sparse_artifact):
    """Only onnxruntime and numpy: focal_graph, export and TensorFlow are made unimportable."""
    code = f"""
{BLOCK_TENSORFLOW}
for name in ('focal_graph', 'export'):
    sys.modules[name] = None
import numpy as np, onnxruntime
data = np.load({str(sparse_artifact / 'reference.npz')!r})
session = onnxruntime.InferenceSession({str(sparse_artifact / 'model.onnx')!r}, providers=['CPUExecutionProvider'])
stored = 0
for i in range(len(data['case_names'])):
    if f'{{i:03d}}/labels' not in data.files:  # the realistic case: a seed, regenerated by focalgraph
        assert str(data['case_names'][i]).startswith('realistic '), data['case_names'][i]
        continue
    stored += 1
    loss, per_sample, total, mean = session.run(None, {{'labels': data[f'{{i:03d}}/labels'], 'logits': data[f'{{i:03d}}/logits']}})
    np.testing.assert_allclose(loss, data[f'{{i:03d}}/loss'], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, data[f'{{i:03d}}/mean'], rtol=1e-5, atol=1e-5)
print('cases', stored)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("cases ") and int(result.stdout.split()[1]) >= 10


@pytest.mark.slow
def test_saved_model_cli_show_and_run(sparse_artifact, tmp_path):
    saved_model_cli = Path(sys.executable).parent / "saved_model_cli"
    directory = str(sparse_artifact / artifact.SAVED_MODEL)
    show = subprocess.run([saved_model_cli, "show", "--dir", directory, "--all"], capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    assert "signature_def['serving_default']" in show.stdout and "signature_def['mean']" in show.stdout
    cases, outputs = reference(sparse_artifact)
    case = cases[0]
    np.save(tmp_path / "labels.npy", case.inputs["labels"])
    np.save(tmp_path / "logits.npy", case.inputs["logits"])
    for signature, form in (("serving_default", "loss"), ("mean", "mean")):
        run = subprocess.run(
            [saved_model_cli, "run", "--dir", directory, "--tag_set", "serve", "--signature_def", signature,
             "--inputs", f"labels={tmp_path / 'labels.npy'};logits={tmp_path / 'logits.npy'}",
             "--outdir", tmp_path / signature],
            capture_output=True, text=True,
        )
        assert run.returncode == 0, run.stderr
        got = np.load(tmp_path / signature / f"{form}.npy")
        np.testing.assert_allclose(got, outputs[case.name][form], rtol=1e-6)


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("export", "export-defaults", "validate", "inspect"):
        assert command in result.stdout


def test_every_spec_field_has_an_export_option():
    from export.options import SPEC_OPTIONS

    fields = {f for f in FocalSpec.__dataclass_fields__} - {"variant", "preset"}
    assert set(SPEC_OPTIONS.values()) == fields
    help_text = run_cli("export", "--help").stdout
    for option in SPEC_OPTIONS:
        assert "--" + option.replace("_", "-") in help_text


@pytest.mark.slow
def test_export_defaults_exports_and_validates_every_default(tmp_path):
    result = run_cli("export-defaults", "--out", tmp_path / "artifacts", "--provider", "cpu")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "artifacts").iterdir())
    assert names == sorted(default_specs())
    for name in names:
        directory = tmp_path / "artifacts" / name
        artifact.verify(directory)
        assert load_json(directory / "validation.json")["passed"]
        assert FocalSpec.from_json((directory / "spec.json").read_text()) == default_specs()[name]
    again = run_cli("validate", tmp_path / "artifacts" / "variant-sparse-softmax-nhwc", "--reference-only")
    assert again.returncode == 0 and "PASS" in again.stdout


def cuda_usable() -> bool:
    from export.runtime import CUDA, open_session

    model = ROOT / "tests" / "data" / "identity.onnx"
    try:
        return open_session(str(model), "auto").provider == CUDA
    except Exception:
        return False


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_usable(), reason="ONNX Runtime's CUDA provider cannot be created here (no GPU)")
def test_reference_only_validation_on_cuda(sparse_artifact):
    result = run_cli("validate", sparse_artifact, "--reference-only", "--provider", "cuda", python_prelude=BLOCK_TENSORFLOW)
    assert result.returncode == 0, result.stderr
    assert "CUDAExecutionProvider ran the graph" in result.stdout and "PASS" in result.stdout
