"""`focalgraph bench`: the numbers it reports are consistent with each other. No time is asserted."""

import json

import pytest

from exporting import exported
from export.bench import bench, startup_times
from focal_graph.spec import FocalSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    specs = {"sparse": FocalSpec(variant="sparse_softmax"), "sigmoid": FocalSpec(variant="sigmoid", alpha=0.25)}
    for name, spec in specs.items():
        exported(root / name, spec, validate=False)
    return [root / name for name in specs]


def test_bench_reports_every_runner_and_ratios_from_the_same_minima(artifacts, tmp_path):
    (tmp_path / "bench.md").write_text("an older table\n")  # replaced with force (docs/outputs.md)
    results = bench(artifacts, sizes="8x10,16x10", repeats=2, warmup=1, json_path=tmp_path / "bench.json", startup=False,
                    export_time=False, force=True)
    assert json.loads((tmp_path / "bench.json").read_text()) == results
    assert (tmp_path / "bench.md").read_text().startswith("# focalgraph bench")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    floors, keras_notes = [], []
    forms = {"loss", "per_sample", "sum", "mean"}
    for entry in results["artifacts"]:
        assert entry["onnx"]["nodes"] == sum(entry["onnx"]["ops"].values()) > 0
        for row in entry["sizes"]:
            s, m = row["seconds"], row["median_seconds"]
            ours = {f"{backend}:{form}" for backend in ("tensorflow", "onnxruntime") for form in forms}
            assert ours | {"keras:tensorflow", "floor:tensorflow", "floor:onnxruntime"} <= set(s) == set(m)
            assert all(s[name] <= m[name] for name in s)  # a minimum and a median of the same rounds
            assert row["ratios"]["onnxruntime:per_sample / floor"] == s["onnxruntime:per_sample"] / s["floor:onnxruntime"]
            assert row["median_ratios"]["onnxruntime:loss / floor"] == m["onnxruntime:loss"] / m["floor:onnxruntime"]
            assert row["ratios"]["keras:tensorflow / tensorflow:per_sample"] == s["keras:tensorflow"] / s["tensorflow:per_sample"]
            assert row["elements_per_second"]["onnxruntime:per_sample"] == row["elements"] / s["onnxruntime:per_sample"]
            floors.append(row["floor"])
            keras_notes.append(("keras:onnxruntime" in s, entry["keras_onnxruntime"]))
    assert set(floors) == {"reduce-max over classes", "element-wise multiply"}
    # CategoricalFocalCrossentropy converts and runs; BinaryFocalCrossentropy from logits emits Log1p
    assert keras_notes[0][0] and keras_notes[0][1].startswith("converted by tf2onnx")
    assert not keras_notes[-1][0] and "Log1p" in keras_notes[-1][1]


def test_bench_times_float16_losses_of_higher_rank(tmp_path):
    exported(tmp_path / "half", FocalSpec(variant="softmax", dtype="float16", rank=3), validate=False)
    results = bench([tmp_path / "half"], sizes="8x10,2x3x10", repeats=1, warmup=0, startup=False, export_time=False)
    (entry,) = results["artifacts"]
    assert (entry["dtype"], [row["shape"] for row in entry["sizes"]]) == ("float16", [[2, 3, 10]])
    assert {"onnxruntime:per_sample", "keras:tensorflow", "floor:onnxruntime"} <= set(entry["sizes"][0]["seconds"])
    assert entry["export_seconds"] is None


def test_bench_refuses_what_it_cannot_compare(artifacts, tmp_path):
    from export.errors import UsageError

    with pytest.raises(UsageError, match="--sizes: no shape of rank 2"):
        bench(artifacts, sizes="8x10x3", repeats=1, startup=False)
    with pytest.raises(UsageError, match="--repeats: expected an integer >= 1, got 0"):
        bench(artifacts, sizes="8x10", repeats=0, startup=False)
    with pytest.raises(UsageError, match="--eval-rows: expected an integer >= 0, got -1"):
        bench(artifacts, sizes="8x10", repeats=1, startup=False, eval_rows=-1)


def test_startup_times_are_measured_in_fresh_processes():
    times = startup_times(repeats=1)
    assert times["focalgraph --help"] > 0


def test_eval_against_one_read_runs_both_in_fresh_processes_and_reports_the_ratio_of_minima(artifacts, tmp_path):
    from export.bench import eval_times, markdown

    timed = eval_times(300, classes=10, repeats=2, artifact_path=artifacts[0])
    assert timed["shape"] == [300, 10] and timed["bytes"] == 300 * 10 * 4
    assert set(timed["seconds"]) == {"read once", "focalgraph eval"}
    assert timed["ratio"] == timed["seconds"]["focalgraph eval"] / timed["seconds"]["read once"]
    assert timed["median_ratio"] == timed["median_seconds"]["focalgraph eval"] / timed["median_seconds"]["read once"]
    assert all(timed["seconds"][name] <= timed["median_seconds"][name] for name in timed["seconds"])
    table = markdown({"machine": {"cpus": 2, "tensorflow": "-", "onnxruntime": "-"}, "repeats": 2, "warmup": 0,
                      "artifacts": [], "eval": timed})
    assert "- eval / read once: " in table and "300x10 float32 .npy" in table
