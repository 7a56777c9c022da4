"""``make gpu-check`` (scripts/gpu_check.py) on the CPU provider, so the CUDA check cannot rot
before a GPU machine runs it (issue 24): a fresh process with TensorFlow (and click, tqdm and
pyarrow, absent on the GPU machine) unimportable, on a small shape, against the default artifacts
exported here; a tampered reference output fails and is named; a CPU run changes no tracked file.
Also the wheel's journey: split here, joined and checked there (scripts/gpu_prepare.sh,
scripts/gpu_remote.sh --dry-run)."""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export import artifact
from export.exporter import default_specs
from exporting import ROOT, exported, load_json

SCRIPT = ROOT / "scripts" / "gpu_check.py"
# what the GPU machine lacks: any import of these raises ImportError in the check's process
ABSENT = ("tensorflow", "tf2onnx", "keras", "click", "tqdm", "pyarrow")
QUICK = ["--rows", "64", "--repeats", "2", "--warmup", "1"]
CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def defaults(tmp_path_factory):
    """Every default artifact, ONNX only and not validated (quick: the check validates them)."""
    root = tmp_path_factory.mktemp("gpu-check") / "artifacts"
    for name, spec in default_specs().items():
        exported(root / name, spec, format="onnx", validate=False)
    return root


@pytest.fixture(scope="module")
def blocker(tmp_path_factory):
    """A folder whose sitecustomize.py makes `ABSENT` unimportable in any Python started with it
    on PYTHONPATH, through make as well."""
    folder = tmp_path_factory.mktemp("blocker")
    (folder / "sitecustomize.py").write_text(f"import sys\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n")
    return folder


def tracked_files() -> dict:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return {name: hashlib.sha256((ROOT / name.decode()).read_bytes()).hexdigest() if (ROOT / name.decode()).is_file()
            else None for name in names if name}


def run_check(*args, blocker=None):
    """scripts/gpu_check.py ARGS in a fresh interpreter (with `ABSENT` unimportable, given ``blocker``)."""
    path = os.pathsep.join(str(folder) for folder in (blocker, ROOT) if folder is not None)
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={**os.environ, "PYTHONPATH": path})


@pytest.fixture(scope="module")
def cpu_run(defaults, blocker, tmp_path_factory):
    """``PROVIDER=cpu make gpu-check`` as the docs give it (quick shape), its temporary folder
    under a TMPDIR of its own; the tracked files' hashes before and after."""
    scratch = tmp_path_factory.mktemp("gpu-check-tmp")
    before = tracked_files()
    env = {**os.environ, "PROVIDER": "cpu", "TMPDIR": str(scratch), "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}
    env.pop("GPU_CHECK_OUT", None)
    result = subprocess.run(
        ["make", "--no-print-directory", "gpu-check", f"GPU_PYTHON={sys.executable}",
         f"GPU_CHECK_ARGS=--artifacts {defaults} {' '.join(QUICK)}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    return result, scratch, before, tracked_files()


def test_cpu_run_passes_and_writes_both_reports_to_a_new_temporary_folder(cpu_run):
    result, scratch, _, _ = cpu_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "gpu_check: PASS" in result.stdout
    folders = list(scratch.glob("focalgraph-gpu-check-*"))  # the tool-chain may leave files of its own in TMPDIR
    assert len(folders) == 1 and f"wrote {folders[0] / 'gpu.json'}" in result.stdout
    assert sorted(path.name for path in folders[0].iterdir()) == ["gpu.json", "gpu.md"]


def written(cpu_run) -> Path:
    return next(cpu_run[1].glob("focalgraph-gpu-check-*"))


def report(cpu_run) -> dict:
    return load_json(written(cpu_run) / "gpu.json")


def test_cpu_run_changes_no_tracked_file(cpu_run):
    _, _, before, after = cpu_run
    assert after == before


def test_cpu_run_passes_with_tensorflow_click_tqdm_and_pyarrow_unimportable(cpu_run, blocker):
    result = cpu_run[0]
    assert result.returncode == 0 and "ImportError" not in result.stderr, result.stderr
    # the blocker really is in force in that process: an import of a blocked module fails
    probe = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(blocker)})
    assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr


def test_report_covers_every_default_artifact_on_the_cpu_provider(cpu_run):
    data = report(cpu_run)
    assert data["provider"] == "cpu" and data["execution_provider"] == CPU and data["passed"] is True
    assert [entry["name"] for entry in data["artifacts"]] == list(default_specs())
    assert data["onnxruntime"]["version"] and data["device"]["name"]
    for entry in data["artifacts"]:
        assert entry["passed"] and entry["failed"] == [], entry["name"]
        assert entry["spec"] == default_specs()[entry["name"]].name


def test_every_node_is_recorded_with_the_provider_that_ran_it(cpu_run, defaults):
    import onnx

    for entry in report(cpu_run)["artifacts"]:
        nodes = entry["nodes"]["list"]
        assert nodes and all(node["provider"] == CPU for node in nodes), entry["name"]
        assert entry["nodes"]["per_provider"] == {CPU: len(nodes)}
        # the session's graph is the file's, give or take what ONNX Runtime folded away
        in_file = {node.name for node in onnx.load(str(defaults / entry["name"] / artifact.ONNX)).graph.node}
        assert {node["name"] for node in nodes} <= in_file
        loss = {node["name"] for node in nodes if node["loss_node"]}
        assert entry["nodes"]["loss_nodes"] == len(loss) > 0 and entry["nodes"]["loss_nodes_elsewhere"] == []
        assert not any(node["op_type"] in ("Shape", "Size") for node in nodes if node["loss_node"])
    sparse = next(entry for entry in report(cpu_run)["artifacts"] if entry["name"] == "variant-sparse-softmax")
    by_op = {node["op_type"]: node for node in sparse["nodes"]["list"]}
    assert by_op["LogSoftmax"]["loss_node"] and by_op["GatherND"]["loss_node"] and not by_op["Shape"]["loss_node"]


def test_errors_are_within_the_issues_targets(cpu_run):
    for entry in report(cpu_run)["artifacts"]:
        validation = entry["validation"]
        assert validation["tolerance"] == {"atol": 1e-5, "rtol": 1e-5}  # float32: issue 24's target
        assert validation["passed"] and validation["consistency"] and validation["errors"] == []
        for verdict in validation["outputs"]:
            assert verdict["failures"] == 0 and verdict["elements"] > 0, (entry["name"], verdict)
            assert verdict["required_rtol"] <= 1e-5 and verdict["required_atol"] <= 1e-5, (entry["name"], verdict)
        assert {"loss", "per_sample", "sum", "mean"} <= {verdict["output"] for verdict in validation["outputs"]}


def test_the_realistic_case_is_regenerated_at_full_size(cpu_run):
    shapes = {entry["name"]: entry["validation"]["realistic_case"] for entry in report(cpu_run)["artifacts"]}
    assert shapes["variant-sparse-softmax"] == [16384, 1000]
    assert shapes["variant-sparse-softmax-nhwc"] == [16, 32, 32, 1000]
    assert shapes["preset-sparse-softmax"] == [16384, 4]


def test_nan_positions_are_counted_from_the_reference(cpu_run, defaults):
    for entry in report(cpu_run)["artifacts"]:
        with np.load(defaults / entry["name"] / artifact.REFERENCE) as stored:
            names = [str(name) for name in stored["case_names"]]
            expected = sum(int(np.isnan(stored[key]).sum()) for key in stored.files
                           if key.split("/")[-1] in artifact.KNOWN_FORMS and not names[int(key[:3])].startswith("realistic"))
        assert entry["nan"] == {**entry["nan"], "expected": expected, "actual": expected, "mismatched": 0}, entry["name"]
        assert entry["nan"]["errors"] == []
    assert any(entry["nan"]["expected"] > 0 for entry in report(cpu_run)["artifacts"])


def test_per_sample_is_timed_against_both_floors_at_the_small_shape(cpu_run):
    shapes = {}
    for entry in report(cpu_run)["artifacts"]:
        timing = entry["timing"]
        assert set(timing["seconds"]) == {"per_sample", "floor:ReduceMax", "floor:Mul"}
        assert timing["floor"] == ("floor:Mul" if default_specs()[entry["name"]].multi_label else "floor:ReduceMax")
        assert timing["ratio"] == pytest.approx(timing["seconds"]["per_sample"] / timing["seconds"][timing["floor"]])
        assert timing["per_sample_finite"] and timing["per_sample_shape"] == timing["shape"][:1]
        assert "speed" not in entry["checks"]  # judged on CUDA at 16384 rows only
        shapes[entry["name"]] = timing["shape"]
    assert shapes["variant-sparse-softmax"] == [64, 1000] and shapes["variant-sigmoid"] == [64, 1000]
    assert shapes["variant-sparse-softmax-nhwc"] == [1, 32, 32, 1000] and shapes["preset-sparse-softmax"] == [64, 4]


def test_markdown_report_has_a_row_per_artifact(cpu_run):
    text = (written(cpu_run) / "gpu.md").read_text()
    assert "# GPU check: CPUExecutionProvider" in text and "verdict: **PASS**" in text
    for name in default_specs():
        assert f"| {name} |" in text


def retouched(source: Path, destination: Path, edit, manifest: bool = True) -> Path:
    """A copy of the artifact ``source`` whose reference.npz ``edit(arrays)`` changed, its
    manifest recomputed (what anyone who can write the files can do) unless ``manifest`` is False."""
    shutil.copytree(source, destination)
    with np.load(destination / artifact.REFERENCE) as stored:
        arrays = {key: stored[key] for key in stored.files}
    edit(arrays)
    with open(destination / artifact.REFERENCE, "wb") as file:
        np.savez_compressed(file, **arrays)
    if manifest:
        recorded = load_json(destination / artifact.MANIFEST)
        artifact.write_manifest(destination, recorded["spec"],
                                {key: recorded[key] for key in ("saved_model_xla",) if key in recorded})
    return destination


def scale_first_loss(arrays):
    arrays["000/per_sample"] = arrays["000/per_sample"] * np.float32(1.001)


def drop_a_nan(arrays):
    key = next(key for key in sorted(arrays) if key.endswith("/per_sample") and np.isnan(arrays[key]).any())
    values = arrays[key].copy()
    values[np.flatnonzero(np.isnan(values))[0]] = 0.0
    arrays[key] = values


@pytest.mark.parametrize("edit, manifest, failed_check", [
    (scale_first_loss, True, "values"), (drop_a_nan, True, "nan_positions"), (scale_first_loss, False, "ran"),
], ids=["value-off-by-1e-3", "nan-replaced", "manifest-not-updated"])
def test_a_tampered_reference_output_fails_and_is_named(defaults, tmp_path, edit, manifest, failed_check):
    name = "variant-sparse-softmax"
    retouched(defaults / name, tmp_path / "artifacts" / name, edit, manifest)
    # TensorFlow importable here: the report's own record of sys.modules is the witness
    result = run_check("--provider", "cpu", "--artifacts", tmp_path / "artifacts", "--only", name, "--out", tmp_path / "out",
                       *QUICK)
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gpu_check: FAIL: ") and name in last and failed_check in last and "Traceback" not in result.stderr
    data = load_json(tmp_path / "out" / "gpu.json")
    assert data["passed"] is False and failed_check in data["artifacts"][0]["failed"]
    assert data["tensorflow_imported"] is False
    if failed_check == "ran":  # the manifest check refused the artifact before ONNX Runtime ran
        assert "reference.npz" in data["artifacts"][0]["error"] and "reference.npz" in (tmp_path / "out" / "gpu.md").read_text()
        return
    per_sample = next(v for v in data["artifacts"][0]["validation"]["outputs"] if v["output"] == "per_sample")
    assert per_sample["failures"] >= 1
    if failed_check == "nan_positions":
        assert data["artifacts"][0]["nan"]["mismatched"] == 1


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, flag", [
    (["--rows", "0"], "--rows: expected an integer >= 1"),
    (["--provider", "tpu"], "--provider"),
    (["--only", "variant-nothing"], "--only: expected default artifact names"),
    (["--provider", "cpu", "--out", str(ROOT / "docs")], "--out: "),
], ids=["rows", "provider", "only", "cpu-over-docs"])
def test_bad_options_fail_in_one_line_writing_nothing(args, flag, defaults, capsys):
    before = tracked_files()
    with pytest.raises(SystemExit) as exit_:
        sys.exit(load_script().main(["--artifacts", str(defaults), *args]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("gpu_check: error: ") and flag in lines[0]
    assert tracked_files() == before


def test_missing_artifacts_are_named_before_anything_runs(tmp_path, capsys):
    code = load_script().main(["--provider", "cpu", "--artifacts", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    line = capsys.readouterr().err.strip()
    assert code == 2 and "--artifacts: " in line and "make artifacts" in line and not (tmp_path / "out").exists()


def test_a_folder_holding_someone_elses_gpu_json_is_refused(tmp_path, defaults, capsys):
    (tmp_path / "gpu.json").write_text("{}\n")
    code = load_script().main(["--provider", "cpu", "--artifacts", str(defaults), "--out", str(tmp_path)])
    assert code == 2 and "not a gpu-check report" in capsys.readouterr().err
    assert (tmp_path / "gpu.json").read_text() == "{}\n"


def cuda_usable() -> bool:
    from export.runtime import CUDA, open_session

    try:
        return open_session(str(ROOT / "tests" / "data" / "identity.onnx"), "auto").provider == CUDA
    except Exception:
        return False


@pytest.mark.skipif(cuda_usable(), reason="the CUDA provider works here: the CUDA run is the real check")
def test_cuda_without_a_gpu_fails_in_one_line_and_writes_nothing(defaults, blocker, tmp_path):
    result = run_check("--provider", "cuda", "--artifacts", defaults, "--out", tmp_path / "out", *QUICK, blocker=blocker)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("gpu_check: error: --provider cuda: ") and not (tmp_path / "out").exists()


# --- the wheel's journey: split here, joined and installed there -------------------------------


PREPARE, REMOTE = ROOT / "scripts" / "gpu_prepare.sh", ROOT / "scripts" / "gpu_remote.sh"


@pytest.fixture
def split_wheel(tmp_path):
    """A stand-in wheel (random bytes; the name is what pip would download) split as for the
    GPU machine, in parts of 64 KiB."""
    wheel = tmp_path / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
    wheel.write_bytes(np.random.default_rng(0).bytes(200_000))
    result = subprocess.run(["bash", str(PREPARE), "--wheel", str(wheel), "--part-size", "64k", "--dest",
                             str(tmp_path / "gpu-wheel")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return wheel, tmp_path / "gpu-wheel"


def remote(*args, state, cwd):
    return subprocess.run(["bash", str(REMOTE), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "GPU_STATE_DIR": str(state)})


def test_parts_are_at_most_the_part_size_and_listed_with_their_hashes(split_wheel):
    wheel, folder = split_wheel
    parts = sorted((folder / "parts").iterdir())
    assert len(parts) == 4 and all(part.stat().st_size <= 65536 for part in parts)
    sums = dict(reversed(line.split("  ")) for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert sums[wheel.name] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    for part in parts:
        assert sums[f"parts/{part.name}"] == hashlib.sha256(part.read_bytes()).hexdigest()


def test_parts_received_one_call_at_a_time_join_into_the_same_wheel(split_wheel, tmp_path):
    wheel, folder = split_wheel
    state = tmp_path / "state"
    for part in sorted((folder / "parts").iterdir()):  # each call brings one part, as the device's carry does
        call = tmp_path / f"call-{part.name}"
        (call / "gpu-wheel" / "parts").mkdir(parents=True)
        shutil.copy(folder / "SHA256SUMS", call / "gpu-wheel")
        shutil.copy(part, call / "gpu-wheel" / "parts")
        received = remote("receive", "--from", call / "gpu-wheel", state=state, cwd=call)
        assert received.returncode == 0, received.stderr
        assert part.name in received.stdout
    installed = remote("install", "--dry-run", state=state, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    assert (state / wheel.name).read_bytes() == wheel.read_bytes()
    assert f"pip install --no-deps --target {state / 'site'}" in installed.stdout and "sha256 OK" in installed.stdout


def test_a_damaged_or_missing_part_is_named_and_nothing_is_installed(split_wheel, tmp_path):
    wheel, folder = split_wheel
    state = tmp_path / "state"
    parts = sorted((folder / "parts").iterdir())
    damaged = bytearray(parts[1].read_bytes())
    damaged[100] ^= 1
    parts[1].write_bytes(bytes(damaged))
    received = remote("receive", "--from", folder, state=state, cwd=tmp_path)
    assert received.returncode == 1 and parts[1].name in received.stderr and "sha256" in received.stderr
    (state / "parts" / parts[2].name).unlink()
    installed = remote("install", "--dry-run", state=state, cwd=tmp_path)
    assert installed.returncode == 1 and "missing" in installed.stderr and not (state / wheel.name).exists()


def test_the_run_step_dry_run_prints_the_cuda_command(split_wheel, tmp_path):
    _, folder = split_wheel
    state = tmp_path / "state"
    assert remote("receive", "--from", folder, state=state, cwd=tmp_path).returncode == 0
    ran = remote("run", "--dry-run", "--out", tmp_path / "out", state=state, cwd=ROOT)
    assert ran.returncode == 0, ran.stderr
    assert "preload_dlls" in ran.stdout and f"PYTHONPATH={state / 'site'}:" in ran.stdout
    assert "scripts/gpu_check.py --provider cuda --out " + str(tmp_path / "out") in ran.stdout
    assert not (tmp_path / "out").exists()


def test_an_earlier_report_is_replaced_only_with_force(tmp_path, defaults, capsys):
    """docs/outputs.md: an existing output is replaced only with --force, the check's own too."""
    run = ["--provider", "cpu", "--artifacts", str(defaults), "--only", "variant-sigmoid", "--out", str(tmp_path), *map(str, QUICK)]
    script = load_script()
    assert script.main(run) == 0
    first = (tmp_path / "gpu.json").read_bytes()
    capsys.readouterr()
    assert script.main(run) == 2
    line = capsys.readouterr().err.strip()
    assert "--force" in line and "gpu.json" in line and len(line.splitlines()) == 1
    assert (tmp_path / "gpu.json").read_bytes() == first
    assert script.main([*run, "--force"]) == 0
    assert (tmp_path / "gpu.json").read_bytes() != first  # a new report: its own timings and date
