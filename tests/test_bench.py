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


def test_bench_reports_every_runner_and_ratios_from_the_same_medians(artifacts, tmp_path):
    results = bench(artifacts, sizes="8x10,16x10", repeats=2, warmup=1, json_path=tmp_path / "bench.json", startup=False)
    assert json.loads((tmp_path / "bench.json").read_text()) == results
    assert (tmp_path / "bench.md").read_text().startswith("# focalgraph bench")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    floors = []
    for entry in results["artifacts"]:
        assert entry["onnx"]["nodes"] == sum(entry["onnx"]["ops"].values()) > 0 and entry["export_seconds"] > 0
        for row in entry["sizes"]:
            s = row["seconds"]
            assert set(s) == {"tensorflow", "onnxruntime", "keras", "floor_tensorflow", "floor_onnxruntime"}
            assert row["ratios"]["onnxruntime / floor"] == s["onnxruntime"] / s["floor_onnxruntime"]
            assert row["ratios"]["keras / tensorflow"] == s["keras"] / s["tensorflow"]
            assert row["elements_per_second"]["onnxruntime"] == row["elements"] / s["onnxruntime"]
            floors.append(row["floor"])
    assert set(floors) == {"reduce-max over classes", "element-wise multiply"}


def test_bench_refuses_what_it_cannot_compare(artifacts, tmp_path):
    from export.errors import UsageError

    exported(tmp_path / "half", FocalSpec(variant="softmax", dtype="float16"), validate=False)
    with pytest.raises(UsageError, match="float32"):
        bench([tmp_path / "half"], sizes="8x10", repeats=1, startup=False)
    with pytest.raises(UsageError, match="--sizes: 8x10x3 has rank 3"):
        bench(artifacts, sizes="8x10x3", repeats=1, startup=False)


def test_startup_times_are_measured_in_fresh_processes():
    times = startup_times(repeats=1)
    assert times["focalgraph --help"] > 0
