"""`export.batches`: the per-batch function every engine maps, on every Arrow column layout."""

import numpy as np
import pyarrow as pa
import pytest

import reference
from exporting import exported
from export.batches import BatchEvaluator, arrow_column, batch_losses, column_array
from export.errors import UsageError
from export.runtime import LossSession
from focal_graph.spec import FocalSpec

C = 5


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("batches")
    specs = {
        "sparse": FocalSpec(variant="sparse_softmax", ignore_index=-1, alpha=0.5),
        "sparse-nhwc": FocalSpec(variant="sparse_softmax", rank=4),
        "softmax": FocalSpec(variant="softmax"),
        "sigmoid": FocalSpec(variant="sigmoid", alpha=0.25),
    }
    for name, spec in specs.items():
        exported(root / name, spec, validate=False)
    return {name: LossSession(root / name, "cpu") for name in specs}


def list_column(array: np.ndarray, kind: str):
    """(N, ...) as a column of the given list kind, nested once per axis after the first."""
    column = pa.array(array.reshape(-1))
    for width in reversed(array.shape[1:]):
        count = len(column) // width
        offsets = np.arange(0, count * width + 1, width)
        if kind == "fixed":
            column = pa.FixedSizeListArray.from_arrays(column, width)
        elif kind == "list":
            column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), column)
        else:
            column = pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64)), column)
    return column


@pytest.mark.parametrize("kind", ["fixed", "list", "large"])
@pytest.mark.parametrize("label_type", [np.int64, np.int32, np.uint8])
def test_sparse_rank_2_matches_the_session_on_every_layout(sessions, rng, kind, label_type):
    logits = (rng.normal(size=(64, C)) * 4).astype(np.float32)
    labels = rng.integers(0, C, 64).astype(label_type)
    batch = pa.RecordBatch.from_arrays([list_column(logits, kind), pa.array(labels)], ["logits", "labels"])
    result = batch_losses(sessions["sparse"], batch)
    assert result.schema.names == ["loss"]
    np.testing.assert_array_equal(result.column("loss").to_numpy(), sessions["sparse"](labels.astype(np.int64), logits))
    np.testing.assert_allclose(result.column("loss").to_numpy(), reference.sparse_softmax_focal(labels, logits, alpha=0.5),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["fixed", "list", "large"])
def test_nested_lists_carry_rank_4_predictions_and_labels(sessions, rng, kind):
    logits = rng.normal(size=(6, 3, 2, C)).astype(np.float32)
    labels = rng.integers(0, C, (6, 3, 2))
    batch = pa.RecordBatch.from_arrays([list_column(logits, kind), list_column(labels, kind)], ["logits", "labels"])
    got = batch_losses(sessions["sparse-nhwc"], batch).column("loss").to_numpy()
    np.testing.assert_array_equal(got, sessions["sparse-nhwc"](labels, logits))
    np.testing.assert_allclose(got, reference.sparse_softmax_focal(labels, logits).sum(axis=(1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_dense_targets_as_list_columns(sessions, rng, name):
    logits = rng.normal(size=(40, C)).astype(np.float32)
    targets = (rng.uniform(size=(40, C)) < 0.3).astype(np.float32)
    batch = pa.RecordBatch.from_arrays([list_column(logits, "list"), list_column(targets, "fixed")], ["logits", "targets"])
    got = batch_losses(sessions[name], batch).column("loss").to_numpy()
    np.testing.assert_array_equal(got, sessions[name](targets, logits))


def test_id_column_is_carried_and_weights_multiply(sessions, rng):
    logits = rng.normal(size=(30, C)).astype(np.float32)
    labels = rng.integers(0, C, 30)
    weights = rng.uniform(0, 3, 30)
    ids = pa.array([f"image-{i}" for i in range(30)])
    batch = pa.RecordBatch.from_arrays([arrow_column(logits), pa.array(labels), pa.array(weights), ids],
                                       ["scores", "truth", "w", "key"])
    result = batch_losses(sessions["sparse"], batch, predictions="scores", labels="truth", weights="w", id_column="key")
    assert result.schema.names == ["key", "loss"]
    assert result.column("key").to_pylist() == ids.to_pylist()
    want = sessions["sparse"](labels, logits).astype(np.float64) * weights
    np.testing.assert_array_equal(result.column("loss").to_numpy(), want)


def test_a_table_of_several_chunks_and_a_sliced_batch_give_the_same_losses(sessions, rng):
    logits = rng.normal(size=(50, C)).astype(np.float32)
    labels = rng.integers(0, C, 50)
    whole = pa.RecordBatch.from_arrays([list_column(logits, "list"), pa.array(labels)], ["logits", "labels"])
    table = pa.Table.from_batches([whole.slice(0, 17), whole.slice(17)])
    want = sessions["sparse"](labels, logits)
    np.testing.assert_array_equal(batch_losses(sessions["sparse"], table).column("loss").to_numpy(), want)
    np.testing.assert_array_equal(batch_losses(sessions["sparse"], whole.slice(20, 10)).column("loss").to_numpy(),
                                  want[20:30])


def test_evaluator_summary_counts_its_batch(sessions, rng):
    logits = rng.normal(size=(20, C)).astype(np.float32)
    labels = rng.integers(0, C, 20)
    labels[3] = -1
    batch = pa.RecordBatch.from_arrays([arrow_column(logits), pa.array(labels)], ["logits", "labels"])
    losses, summary = BatchEvaluator(sessions["sparse"], top_k=3).evaluate(batch, first_row=100)
    want = reference.sparse_softmax_focal(labels, logits, alpha=0.5, ignore_index=-1)
    result = summary.as_dict()
    assert result["count"] == 20 and result["ignored_positions"] == 1
    assert result["sum"] == pytest.approx(want.sum(), rel=1e-5)
    assert [h["row"] for h in result["hardest"]] == [100 + int(i) for i in np.argsort(-want, kind="stable")[:3]]


def ragged(logits):
    rows = [list(row) for row in logits]
    rows[9] = rows[9][:-1]
    return pa.array(rows, type=pa.list_(pa.float32()))


@pytest.mark.parametrize("case, message", [
    ("ragged", "column 'logits': row 9 has a list of 4 values where row 0 has 5 (ragged rows)"),
    ("null-row", "column 'logits': a null in row 4"),
    ("null-value", "column 'labels': a null in row 6"),
    ("missing", "column 'labels': not in the batch (it has: logits, other)"),
    ("strings", "column 'labels': values of type string; expected numbers (or lists of numbers)"),
    ("float-labels", "column 'labels': dtype float64; expected integer class indices"),
])
def test_bad_columns_are_one_line_errors_naming_column_and_row(sessions, rng, case, message):
    logits = rng.normal(size=(12, C)).astype(np.float32)
    labels = rng.integers(0, C, 12)
    columns = {"logits": arrow_column(logits), "labels": pa.array(labels)}
    if case == "ragged":
        columns["logits"] = ragged(logits)
    elif case == "null-row":
        rows = [list(row) for row in logits]
        rows[4] = None
        columns["logits"] = pa.array(rows, type=pa.list_(pa.float32()))
    elif case == "null-value":
        columns["labels"] = pa.array([None if i == 6 else int(v) for i, v in enumerate(labels)], pa.int64())
    elif case == "missing":
        columns = {"logits": columns["logits"], "other": columns["labels"]}
    elif case == "strings":
        columns["labels"] = pa.array([str(v) for v in labels])
    elif case == "float-labels":
        columns["labels"] = pa.array(labels.astype(np.float64))
    batch = pa.RecordBatch.from_arrays(list(columns.values()), list(columns))
    with pytest.raises(UsageError) as error:
        batch_losses(sessions["sparse"], batch)
    assert str(error.value) == message


def test_column_array_is_the_inverse_of_arrow_column(rng):
    array = rng.normal(size=(4, 3, 2)).astype(np.float32)
    np.testing.assert_array_equal(column_array(arrow_column(array), "x"), array)
    assert column_array(arrow_column(np.zeros((0, 3), np.float32)), "x").shape == (0, 3)


def test_loss_session_converts_narrow_labels_and_python_lists(sessions, rng):
    session = sessions["sparse"]
    logits = rng.normal(size=(8, C)).astype(np.float32)
    labels = rng.integers(0, C, 8)
    want = session(labels, logits)
    np.testing.assert_array_equal(session(labels.astype(np.int32), logits), want)
    np.testing.assert_array_equal(session(labels.tolist(), logits.tolist()), want)
    np.testing.assert_array_equal(session(labels, logits.astype(np.float64)), want)


@pytest.mark.parametrize("labels, logits, message", [
    ([0.0, 1.0], [[1.0, 2.0], [3.0, 4.0]], "labels: dtype float64; expected integer class indices"),
    (["a", "b"], [[1.0, 2.0], [3.0, 4.0]], "labels: dtype <U1; expected integer class indices"),
    ([0, 1], [[1.0, 2.0], [3.0]], "logits: not a rectangular array"),
    ([0, 1], [["x", "y"], ["z", "w"]], "logits: dtype <U1; expected numbers"),
])
def test_loss_session_refuses_what_it_cannot_convert_naming_the_input(sessions, labels, logits, message):
    with pytest.raises(UsageError, match=message.replace("(", "\\(")):
        sessions["sparse"](labels, logits)


@pytest.mark.parametrize("name", ["sparse", "sparse-nhwc", "sigmoid"])
def test_loss_session_in_several_runs_matches_the_formula_and_one_run(sessions, rng, monkeypatch, name):
    import export.runtime as runtime

    session = sessions[name]
    shape = (150, 2, 3, C) if name == "sparse-nhwc" else (150, C)
    logits = (rng.normal(size=shape) * 4).astype(np.float32)
    if name == "sigmoid":
        y_true = rng.uniform(size=shape).astype(np.float32)
        want = reference.sigmoid_focal(y_true, logits, alpha=0.25).sum(axis=-1)
    else:
        y_true = rng.integers(0, C, shape[:-1])
        kwargs = {"alpha": 0.5} if name == "sparse" else {}
        want = reference.sparse_softmax_focal(y_true, logits, **kwargs).reshape(len(logits), -1).sum(axis=-1)
    one_run = session(y_true, logits)
    per_row = int(np.prod(shape[1:]))
    monkeypatch.setattr(runtime, "RUN_ELEMENTS", {"element-wise": 70 * per_row, "softmax": 70 * per_row})
    # 70 rows rounded down to whole multiples of 64 elements: 64 rows (5 and 30 values per row)
    assert runtime.rows_per_run(shape, element_wise=name == "sigmoid") == 64  # 150 rows: runs of 64, 64 and 22
    several = session(y_true, logits)
    np.testing.assert_allclose(several, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(several, one_run)  # runs aligned to 64 elements change no bit


def test_rows_per_run_fills_the_cache_on_the_cpu_and_takes_everything_elsewhere():
    from export.runtime import CPU, CUDA, RUN_ELEMENTS, rows_per_run

    assert rows_per_run((16384, 1000), CPU) == RUN_ELEMENTS["softmax"] // 1000 // 8 * 8  # 8 rows: 8000 = 125 x 64
    assert rows_per_run((16384, 1000), CPU, element_wise=True) == RUN_ELEMENTS["element-wise"] // 1000 // 8 * 8
    assert rows_per_run((4, 10 ** 7), CPU) == 1  # a row wider than a run is still one run
    assert rows_per_run((16384, 1000), CUDA) == 16384
    assert rows_per_run((0, 1000), CPU) >= 1


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 0), (3, 999), (6, 500)])
def test_the_one_read_check_finds_every_non_finite_prediction_and_its_row(dtype, bad, where):
    """The batch check (a zero matrix-vector product) lets no NaN or infinity through, wherever
    it sits, and the row-finding check then names its row; the largest finite values pass."""
    from export.batches import checked_predictions

    spec = FocalSpec(variant="sparse_softmax", dtype=np.dtype(dtype).name)
    batch = np.full((7, 1000), np.finfo(dtype).max, dtype)
    batch[1::2] = -np.finfo(dtype).max
    assert checked_predictions(spec, batch, 10) is batch
    batch[where] = bad
    with pytest.raises(UsageError, match=f"--predictions: row {10 + where[0]} contains "):
        checked_predictions(spec, batch, 10)


@pytest.mark.parametrize("value, row", [(-0.0, None), (1.0, None), (-1e-45, 2), (1.0000001, 4), (np.nan, 0), (-1.0, 3)])
def test_the_range_checks_of_probabilities_and_targets_let_nothing_outside_through(value, row):
    from export.batches import checked_labels, checked_predictions

    batch = np.full((5, 9), 0.5, np.float32)
    batch[row if row is not None else 1, 4] = value
    probabilities, targets = FocalSpec(variant="sparse_softmax", from_logits=False), FocalSpec(variant="sigmoid")
    if row is None:
        assert checked_predictions(probabilities, batch, 0) is batch
        assert checked_labels(targets, batch, 0, 9) is batch
        return
    with pytest.raises(UsageError, match=f"--predictions: row {row} "):
        checked_predictions(probabilities, batch, 0)
    if value == -1.0:  # the sigmoid ignore_index
        assert checked_labels(FocalSpec(variant="sigmoid", ignore_index=-1), batch, 0, 9) is not None
    with pytest.raises(UsageError, match=f"--labels: row {row} has a target outside"):
        checked_labels(targets, batch, 0, 9)


def test_sound_predictions_says_yes_only_for_columns_the_checks_would_pass_unchanged():
    """eval's reader thread asks it ahead of the main thread; a False sends the batch through
    the full checks, which name the row (tests above)."""
    from export.batches import sound_predictions

    logits, probabilities = FocalSpec(variant="sparse_softmax"), FocalSpec(variant="sparse_softmax", from_logits=False)
    clean = np.full((6, 5), 0.5, np.float32)
    assert sound_predictions(logits, arrow_column(clean)) and sound_predictions(probabilities, arrow_column(clean))
    for bad in (np.nan, np.inf, -np.inf):
        batch = clean.copy()
        batch[5, 4] = bad
        assert not sound_predictions(logits, arrow_column(batch))
    batch = clean.copy()
    batch[0, 0] = 1.5
    assert sound_predictions(logits, arrow_column(batch)) and not sound_predictions(probabilities, arrow_column(batch))
    assert not sound_predictions(logits, arrow_column(clean.astype(np.float64)))  # converted first: checked again
    ragged = pa.array([[0.1, 0.2], [0.3]], pa.list_(pa.float32()))
    assert not sound_predictions(logits, ragged)  # no exception here: the main thread names the row
