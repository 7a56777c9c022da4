"""`focalgraph eval` on Parquet datasets: many files, globs, hive partitions, ids, dataset output;
and the inputs it must refuse in one line without writing anything."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import reference
from exporting import exported, load_json, run_cli
from export.errors import UsageError
from export.evaluation import evaluate
from focal_graph.spec import FocalSpec

C = 6
N = 900
# what differs between two runs of the same rows: where they came from, and when
RUN_FIELDS = ("predictions", "labels", "created")


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    out = tmp_path_factory.mktemp("datasets") / "sparse"
    exported(out, FocalSpec(variant="sparse_softmax", ignore_index=-1, alpha=0.5), validate=False)
    return out


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(11)
    logits = (rng.normal(size=(N, C)) * 3).astype(np.float32)
    labels = rng.integers(0, C, N)
    labels[::13] = -1
    return logits, labels, reference.sparse_softmax_focal(labels, logits, alpha=0.5, ignore_index=-1)


def table(logits, labels, ids, fixed=True):
    values = pa.array(logits.ravel())
    column = (pa.FixedSizeListArray.from_arrays(values, C) if fixed else
              pa.ListArray.from_arrays(pa.array(np.arange(0, logits.size + 1, C, dtype=np.int32)), values))
    return pa.table({"id": pa.array(ids), "logits": column, "labels": pa.array(labels)})


def write_dataset(root, logits, labels, layout):
    """The rows in several files (uneven sizes, small row groups); returns the --predictions root."""
    bounds = [0, 100, 101, 450, 700, N]
    for part, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if layout == "hive":
            directory = root / f"day=2026-11-{part + 1:02d}" / f"shard={part % 2}"
        else:
            directory = root
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table(logits[a:b], labels[a:b], np.arange(a, b), fixed=part % 2 == 0),
                       directory / f"part-{part:03d}.parquet", row_group_size=64)
    (root / "_SUCCESS").write_text("")  # what Spark leaves beside its files: not data
    return root


@pytest.mark.parametrize("layout", ["directory", "glob", "hive"])
def test_a_dataset_gives_the_losses_and_summary_of_one_array(sparse, rows, tmp_path, layout):
    logits, labels, want = rows
    root = write_dataset(tmp_path / "data", logits, labels, layout)
    source = str(root) if layout != "glob" else str(root / "part-*.parquet")
    summary = evaluate(sparse, predictions=f"{source}:logits", labels=f"{source}:labels", id_column="id",
                       out=tmp_path / "losses", summary=tmp_path / "summary.json", batch_size=128, provider="cpu", top_k=5)
    written = pq.read_table(tmp_path / "losses")
    assert written.schema.names == ["id", "loss"]
    assert written.column("id").to_pylist() == list(range(N))
    np.testing.assert_allclose(written.column("loss").to_numpy(), want, rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "x.npy", logits)
    np.save(tmp_path / "y.npy", labels)
    from_arrays = evaluate(sparse, predictions=tmp_path / "x.npy", labels=tmp_path / "y.npy", out=tmp_path / "l.npy",
                           batch_size=97, provider="cpu", top_k=5)
    np.testing.assert_array_equal(written.column("loss").to_numpy(), np.load(tmp_path / "l.npy"))
    for field in ("count", "sum", "mean", "mean_per_position", "per_class", "ignored_positions"):
        assert summary[field] == from_arrays[field], field  # exact sums: batch sizes and files do not matter
    assert [(h["row"], h["id"]) for h in summary["hardest"]] == [(h["row"], h["row"]) for h in from_arrays["hardest"]]
    assert load_json(tmp_path / "summary.json") == summary


def test_output_is_npy_with_a_suffix_and_a_dataset_without(sparse, rows, tmp_path):
    logits, labels, _ = rows
    pq.write_table(table(logits, labels, np.arange(N)), tmp_path / "d.parquet")
    source = tmp_path / "d.parquet"
    evaluate(sparse, predictions=f"{source}:logits", labels=f"{source}:labels", out=tmp_path / "a.npy", provider="cpu")
    evaluate(sparse, predictions=f"{source}:logits", labels=f"{source}:labels", out=tmp_path / "b", provider="cpu")
    assert np.load(tmp_path / "a.npy").shape == (N,)
    np.testing.assert_array_equal(pq.read_table(tmp_path / "b").column("loss").to_numpy(), np.load(tmp_path / "a.npy"))
    with pytest.raises(UsageError, match="--out: .* already exists; name a new directory"):
        evaluate(sparse, predictions=f"{source}:logits", labels=f"{source}:labels", out=tmp_path / "b", provider="cpu")
    with pytest.raises(UsageError, match="expected FILE.npy, or a directory name without a suffix"):
        evaluate(sparse, predictions=f"{source}:logits", labels=f"{source}:labels", out=tmp_path / "c.csv", provider="cpu")


def test_an_output_inside_an_input_dataset_is_refused(sparse, rows, tmp_path):
    logits, labels, _ = rows
    root = write_dataset(tmp_path / "data", logits, labels, "directory")
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(UsageError, match="--out: .* is inside --predictions"):
        evaluate(sparse, predictions=f"{root}:logits", labels=f"{root}:labels", out=root / "losses", provider="cpu")
    assert sorted(p.name for p in root.iterdir()) == before


def bad_dataset(root, logits, labels, case):
    """Write one bad input; returns (predictions, labels, expected text of the one error line)."""
    root.mkdir()
    if case == "mismatched-schemas":
        pq.write_table(table(logits[:400], labels[:400], np.arange(400)), root / "a.parquet")
        other = pa.table({"id": np.arange(400, N), "logits": pa.FixedSizeListArray.from_arrays(
            pa.array(logits[400:].astype(np.float64).ravel()), C), "labels": labels[400:]})
        pq.write_table(other, root / "b.parquet")
        return f"{root}:logits", f"{root}:labels", "(mismatched schemas)"
    if case == "missing-column":
        pq.write_table(table(logits[:400], labels[:400], np.arange(400)), root / "a.parquet")
        pq.write_table(table(logits[400:], labels[400:], np.arange(400, N)).drop(["labels"]), root / "b.parquet")
        return f"{root}:logits", f"{root}:labels", "has no column 'labels'"
    if case == "ragged":
        rows = [list(map(float, row)) for row in logits]
        rows[517] = rows[517][:-2]
        pq.write_table(pa.table({"logits": pa.array(rows, pa.list_(pa.float32())), "labels": labels}), root / "a.parquet",
                       row_group_size=100)
        return f"{root}:logits", f"{root}:labels", "--predictions: row 517 has a list of 4 values where row 512 has 6"
    if case == "ragged-across-batches":
        rows = [list(map(float, row)) for row in logits[:512]] + [list(map(float, row)) + [0.0] for row in logits[512:]]
        pq.write_table(pa.table({"logits": pa.array(rows, pa.list_(pa.float32())), "labels": labels}), root / "a.parquet")
        return f"{root}:logits", f"{root}:labels", "--predictions: rows from row 512 have shape (7,); earlier rows have (6,)"
    if case == "empty-directory":
        return f"{root}:logits", f"{root}:labels", "is a directory without Parquet files"
    if case == "glob-matches-nothing":
        return f"{root}/*.parquet:logits", f"{root}/*.parquet:labels", "matches no file"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["mismatched-schemas", "missing-column", "ragged", "ragged-across-batches",
                                  "empty-directory", "glob-matches-nothing"])
def test_bad_datasets_are_one_line_exit_2_and_nothing_written(sparse, rows, tmp_path, case):
    logits, labels, _ = rows
    predictions, label_source, message = bad_dataset(tmp_path / "data", logits, labels, case)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("eval", sparse, "--predictions", predictions, "--labels", label_source, "--out", out / "losses",
                     "--summary", out / "summary.json", "--batch-size", "256", "--provider", "cpu")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert list(out.iterdir()) == []


def test_npy_header_whose_dimensions_overflow_int64_is_refused(sparse, rows, tmp_path):
    logits, labels, _ = rows
    np.save(tmp_path / "x.npy", logits[:2])
    data = (tmp_path / "x.npy").read_bytes()
    huge = b"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4611686018427387904), }"
    header = b"\x93NUMPY\x01\x00" + (len(huge.ljust(118)) + 1).to_bytes(2, "little") + huge.ljust(118) + b"\n"
    (tmp_path / "huge.npy").write_bytes(header + data[128:])
    np.save(tmp_path / "y.npy", labels[:2])
    with pytest.raises(UsageError, match="--predictions: .*huge.npy is truncated"):
        evaluate(sparse, predictions=tmp_path / "huge.npy", labels=tmp_path / "y.npy", provider="cpu")


def test_a_flipped_byte_in_a_parquet_file_is_an_error_or_a_checked_result_never_a_traceback(sparse, rows, tmp_path):
    """Corruption anywhere (footer, page headers, data) gives a one-line UsageError, or numbers
    that passed every batch check: pyarrow raises many kinds of error, none may escape."""
    logits, labels, _ = rows
    pq.write_table(table(logits[:200], labels[:200], np.arange(200), fixed=False), tmp_path / "d.parquet",
                   row_group_size=50, write_page_checksum=True)
    data = bytearray((tmp_path / "d.parquet").read_bytes())
    outcomes = set()
    for position in list(range(0, len(data), max(1, len(data) // 60))) + list(range(len(data) - 40, len(data))):
        broken = bytearray(data)
        broken[position] ^= 0xFF
        (tmp_path / "b.parquet").write_bytes(bytes(broken))
        try:
            evaluate(sparse, predictions=f"{tmp_path / 'b.parquet'}:logits", labels=f"{tmp_path / 'b.parquet'}:labels",
                     provider="cpu")
            outcomes.add("ok")
        except UsageError as error:
            assert "\n" not in str(error)
            outcomes.add("refused")
    assert "refused" in outcomes


def test_a_weight_column_multiplies_each_loss_and_the_summary_follows(sparse, rows, tmp_path):
    logits, labels, want = rows
    weights = np.linspace(0, 2, N)
    data = table(logits, labels, np.arange(N)).append_column("weight", pa.array(weights))
    pq.write_table(data, tmp_path / "d.parquet")
    source = tmp_path / "d.parquet"
    result = run_cli("eval", sparse, "--predictions", f"{source}:logits", "--labels", f"{source}:labels",
                     "--weight-column", "weight", "--out", tmp_path / "weighted.npy", "--summary", tmp_path / "s.json",
                     "--provider", "cpu")
    assert result.returncode == 0, result.stderr
    weighted = np.load(tmp_path / "weighted.npy")
    assert weighted.dtype == np.float64
    np.testing.assert_allclose(weighted, want * weights, rtol=1e-5, atol=1e-6)
    summary = load_json(tmp_path / "s.json")
    assert summary["sum"] == pytest.approx((want * weights).sum(), rel=1e-5)
    for entry in summary["per_class"]:  # the per-class figures are of the weighted losses too
        members = labels == entry["class"]
        assert entry["count"] == members.sum()
        assert entry["mean_loss"] == pytest.approx((want * weights)[members].mean(), rel=1e-5)
    negative = data.set_column(data.schema.get_field_index("weight"), "weight", pa.array(weights - 1))
    pq.write_table(negative, tmp_path / "n.parquet")
    with pytest.raises(UsageError, match="--weight-column: row 0 has weight -1.0; expected a finite number >= 0"):
        evaluate(sparse, predictions=f"{tmp_path / 'n.parquet'}:logits", labels=f"{tmp_path / 'n.parquet'}:labels",
                 weight_column="weight", provider="cpu")
