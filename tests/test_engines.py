"""`eval --engine ray|spark` in local mode: the losses of `--engine local` bit for bit, the same
summary, and bad input refused in one line with nothing written. One Ray and one Spark session
serve the whole module (each takes seconds to start)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporting import exported, run_cli
from export.errors import UsageError
from export.evaluation import evaluate
from focal_graph.spec import FocalSpec

pytestmark = pytest.mark.slow
C = 5
N = 3000
SUMMARY_FIELDS = ("count", "sum", "mean", "mean_per_position", "per_class", "per_class_by", "ignored_positions")


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "sparse"
    exported(out, FocalSpec(variant="sparse_softmax", ignore_index=-1, alpha=0.5), validate=False)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six files of uneven sizes, fixed-size and variable lists mixed, string ids."""
    root = tmp_path_factory.mktemp("engine-data") / "rows"
    root.mkdir()
    rng = np.random.default_rng(21)
    logits = (rng.normal(size=(N, C)) * 4).astype(np.float32)
    labels = rng.integers(0, C, N)
    labels[::11] = -1
    bounds = [0, 7, 500, 1100, 1101, 2400, N]
    for part, (a, b) in enumerate(zip(bounds, bounds[1:])):
        values = pa.array(logits[a:b].ravel())
        column = (pa.FixedSizeListArray.from_arrays(values, C) if part % 2 else
                  pa.ListArray.from_arrays(pa.array(np.arange(0, (b - a) * C + 1, C, dtype=np.int32)), values))
        ids = pa.array([f"sample-{i:05d}" for i in range(a, b)])
        pq.write_table(pa.table({"key": ids, "logits": column, "labels": labels[a:b]}), root / f"part-{part}.parquet",
                       row_group_size=300)
    return root


@pytest.fixture(scope="module")
def local_run(sparse, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("local-run")
    summary = evaluate(sparse, predictions=f"{dataset}:logits", labels=f"{dataset}:labels", id_column="key",
                       out=out / "losses", provider="cpu", top_k=7, batch_size=256)
    return summary, pq.read_table(out / "losses")


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def spark_session():
    import os
    import sys

    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(params=["ray", "spark"])
def engine(request):
    request.getfixturevalue(f"{request.param}_session")
    return request.param


def test_an_engine_gives_the_local_losses_bit_for_bit_and_the_local_summary(sparse, dataset, local_run, engine,
                                                                           tmp_path):
    local_summary, local_losses = local_run
    summary = evaluate(sparse, predictions=f"{dataset}:logits", labels=f"{dataset}:labels", id_column="key",
                       out=tmp_path / "losses", summary=tmp_path / "summary.json", provider="cpu", top_k=7,
                       batch_size=256, engine=engine)
    written = pq.read_table(tmp_path / "losses").sort_by("key")
    assert written.num_rows == N
    assert written.column("key").to_pylist() == local_losses.column("key").to_pylist()
    np.testing.assert_array_equal(written.column("loss").to_numpy(), local_losses.column("loss").to_numpy())
    assert written.schema.field("loss").type == pa.float32()
    for field in SUMMARY_FIELDS:  # exact sums: any split into batches and workers gives the same numbers
        assert summary[field] == local_summary[field], field
    assert summary["sum"] == pytest.approx(float(np.sum(local_losses.column("loss").to_numpy(), dtype=np.float64)),
                                           rel=1e-9)
    assert [(h["id"], h["loss"]) for h in summary["hardest"]] == [(h["id"], h["loss"]) for h in local_summary["hardest"]]
    assert summary["engine"] == engine
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_an_engine_without_out_still_summarises(sparse, dataset, local_run, engine):
    summary = evaluate(sparse, predictions=f"{dataset}:logits", labels=f"{dataset}:labels", provider="cpu", top_k=0,
                       engine=engine)
    assert summary["sum"] == local_run[0]["sum"] and summary["count"] == N


def test_ragged_rows_fail_in_the_worker_and_come_back_as_one_line(sparse, engine, tmp_path):
    rows = [[0.5] * C for _ in range(40)]
    rows[23] = [0.5] * (C - 1)
    data = tmp_path / "ragged"
    data.mkdir()
    pq.write_table(pa.table({"logits": pa.array(rows, pa.list_(pa.float32())), "labels": np.zeros(40, np.int64)}),
                   data / "a.parquet")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UsageError) as error:
        evaluate(sparse, predictions=f"{data}:logits", labels=f"{data}:labels", out=out / "losses",
                 summary=out / "summary.json", provider="cpu", top_k=0, engine=engine)
    assert "\n" not in str(error.value)
    assert "has a list of 4 values where row" in str(error.value) and "(ragged rows)" in str(error.value)
    assert list(out.iterdir()) == []


def test_the_map_functions_work_on_a_users_own_dataset_and_dataframe(sparse, dataset, local_run, ray_session,
                                                                     spark_session):
    import ray.data

    from export.engines.ray_data import RayLossMapper
    from export.engines.spark import loss_function, loss_schema

    want = dict(zip(local_run[1].column("key").to_pylist(), local_run[1].column("loss").to_pylist()))
    ds = ray.data.read_parquet(str(dataset))
    mapped = ds.map_batches(RayLossMapper, fn_constructor_kwargs={"artifact": sparse, "id_column": "key",
                                                                  "provider": "cpu"},
                            batch_format="pyarrow", concurrency=1, num_cpus=1)
    assert {row["key"]: row["loss"] for row in mapped.take_all()} == want
    df = spark_session.read.parquet(str(dataset))
    losses = df.mapInArrow(loss_function(sparse, id_column="key", provider="cpu"), loss_schema(df, id_column="key"))
    assert {row["key"]: row["loss"] for row in losses.collect()} == want


# What the driver refuses before any engine starts: no Ray or Spark session needed.


def write_bad(root, case):
    root.mkdir()
    good = pa.table({"logits": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(20 * C, np.float32)), C),
                     "labels": np.zeros(20, np.int64), "key": np.arange(20)})
    pq.write_table(good, root / "a.parquet")
    if case == "mismatched-schemas":
        pq.write_table(good.set_column(1, "labels", pa.array([str(i) for i in range(20)])), root / "b.parquet")
        return "(mismatched schemas)"
    if case == "missing-column":
        pq.write_table(good.drop(["labels"]), root / "b.parquet")
        return "has no column 'labels'"
    raise AssertionError(case)


@pytest.mark.parametrize("engine_name", ["ray", "spark"])
@pytest.mark.parametrize("case", ["mismatched-schemas", "missing-column"])
def test_bad_datasets_are_refused_before_the_engine_starts(sparse, tmp_path, engine_name, case):
    message = write_bad(tmp_path / "data", case)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("eval", sparse, "--predictions", f"{tmp_path / 'data'}:logits", "--labels",
                     f"{tmp_path / 'data'}:labels", "--out", out / "losses", "--engine", engine_name, "--provider", "cpu",
                     "--top-k", "0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("flag, engine_name, address", [("--address", "ray", "127.0.0.1:1"),
                                                        ("--master", "spark", "spark://127.0.0.1:1")])
def test_an_unreachable_cluster_is_one_line_and_nothing_written(sparse, tmp_path, flag, engine_name, address):
    write_bad(tmp_path / "data", "missing-column")
    (tmp_path / "data" / "b.parquet").unlink()
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("eval", sparse, "--predictions", f"{tmp_path / 'data'}:logits", "--labels",
                     f"{tmp_path / 'data'}:labels", "--out", out / "losses", "--engine", engine_name, flag, address,
                     "--provider", "cpu", "--top-k", "0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{flag}: cannot reach {address}" in lines[0], result.stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("options, message", [
    ({"engine": "ray"}, "--top-k: --engine ray names the hardest rows by --id-column"),
    ({"engine": "spark", "top_k": 0, "out": "l.npy"}, "--out: --engine spark writes a Parquet dataset"),
    ({"engine": "dask"}, "--engine: expected one of local, ray, spark, got 'dask'"),
    ({"address": "x:1"}, "--address: joins a Ray cluster; it needs --engine ray, not local"),
])
def test_engine_options_are_checked(sparse, tmp_path, options, message):
    write_bad(tmp_path / "data", "missing-column")
    (tmp_path / "data" / "b.parquet").unlink()
    if "out" in options:
        options["out"] = tmp_path / options["out"]
    with pytest.raises(UsageError, match=message.replace("(", "\\(")):
        evaluate(sparse, predictions=f"{tmp_path / 'data'}:logits", labels=f"{tmp_path / 'data'}:labels",
                 provider="cpu", **options)
    assert not (tmp_path / "l.npy").exists()


def test_a_dataset_of_zero_rows_is_zero_samples_as_locally(sparse, engine, tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    pq.write_table(pa.table({"logits": pa.array([], pa.list_(pa.float32(), C)), "labels": pa.array([], pa.int64())}),
                   data / "a.parquet")
    options = dict(predictions=f"{data}:logits", labels=f"{data}:labels", provider="cpu", top_k=0)
    local = evaluate(sparse, **options)
    summary = evaluate(sparse, **options, out=tmp_path / "losses", engine=engine)
    assert summary["count"] == local["count"] == 0 and summary["sum"] == local["sum"] == 0
    assert summary["per_class"] == local["per_class"]
    assert sum(pq.read_metadata(part).num_rows for part in (tmp_path / "losses").glob("*.parquet")) == 0


def test_a_ragged_row_is_named_as_the_local_engine_names_it(sparse, engine, tmp_path):
    """Row 303 of 400, in the third batch of 128 and the fourth row group of 100: a worker sees
    it as row 47 of its batch; the line must give its row in the dataset and the flag."""
    rows = [[0.5] * C for _ in range(400)]
    rows[303] = [0.5] * (C - 1)
    data = tmp_path / "ragged"
    data.mkdir()
    pq.write_table(pa.table({"logits": pa.array(rows, pa.list_(pa.float32())), "labels": np.zeros(400, np.int64)}),
                   data / "a.parquet", row_group_size=100)
    options = dict(predictions=f"{data}:logits", labels=f"{data}:labels", provider="cpu", top_k=0, batch_size=128)
    with pytest.raises(UsageError) as local:
        evaluate(sparse, **options)
    with pytest.raises(UsageError) as distributed:
        evaluate(sparse, **options, engine=engine)
    assert str(local.value).startswith("--predictions: row 303 has a list of 4 values")
    assert str(distributed.value) == str(local.value)
