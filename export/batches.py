"""One batch of rows: Arrow columns to arrays, the checks every batch passes, and the loss.

numpy, pyarrow and onnxruntime (through `LossSession`); never TensorFlow. `batch_losses` is the
per-batch function every engine maps: an Arrow ``RecordBatch`` (or ``Table``) of predictions and
labels in, a ``RecordBatch`` of per-sample losses (and the id column) out. `BatchEvaluator`
does the same and also returns the batch's `LossSummary`, the partial result a driver merges.

Column layouts: predictions of shape (N, ..., C) as a list, large list or fixed-size list column
((N, C)), or nested lists for higher ranks ((N, H, W, C) as list<list<list<float>>>); labels
likewise (class indices (N, ...) for sparse losses: a plain integer column at rank 2). Every
list at one depth must have the same length: a ragged row is a `UsageError` naming its row.
"""

from __future__ import annotations

import numpy as np

from export.cases import dimension_names
from export.errors import UsageError
from export.summary import LossSummary
from focal_graph.spec import FocalSpec

LOSS_COLUMN = "loss"


def column_array(column, name: str, *, first_row: int = 0) -> np.ndarray:
    """An Arrow array (or chunked array) of rows as an (N, ...) numpy array, zero-copy where Arrow
    allows; ``name`` is the flag or column named in errors. Nulls and ragged rows are
    `UsageError`s naming the first offending row."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    rows = len(column)
    shape = [rows]
    values = column
    per_row = 1  # elements of one row at the current depth: element i belongs to row i // per_row
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        if values.null_count:
            raise UsageError(f"{name}: a null in row {first_row + _first_null(values) // per_row}")
        # The child values of these lists, a zero-copy slice (no nulls, so no list is skipped);
        # ``.values`` alone ignores the array's own offset, and ``.flatten()`` imports
        # pyarrow.compute (0.2 s at start-up).
        if pa.types.is_fixed_size_list(values.type):
            width = values.type.list_size
            start, count = values.offset * width, len(values) * width
        else:
            offsets = values.offsets.to_numpy()
            lengths = np.diff(offsets)
            width = int(lengths[0]) if len(lengths) else 0
            ragged = np.flatnonzero(lengths != width)
            if ragged.size:
                raise UsageError(f"{name}: row {first_row + int(ragged[0]) // per_row} has a list of "
                                 f"{int(lengths[ragged[0]])} values where row {first_row} has {width} (ragged rows)")
            start, count = int(offsets[0]), int(offsets[-1] - offsets[0])
        shape.append(width)
        per_row *= width
        values = values.values.slice(start, count)
    if values.null_count:
        raise UsageError(f"{name}: a null in row {first_row + _first_null(values) // max(per_row, 1)}")
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_boolean(values.type)):
        raise UsageError(f"{name}: values of type {values.type}; expected numbers (or lists of numbers)")
    return _numpy_values(values).reshape(shape)


def _numpy_values(values) -> np.ndarray:
    """A flat Arrow array of numbers without nulls as numpy: a view of its data buffer (Arrow's
    ``to_numpy`` imports pandas, 0.25 s at eval's start-up), a copy for bit-packed booleans."""
    import pyarrow as pa

    kind = "f" if pa.types.is_floating(values.type) else "i" if pa.types.is_signed_integer(values.type) else "u"
    if pa.types.is_boolean(values.type):
        return values.to_numpy(zero_copy_only=False)
    dtype = np.dtype(f"{kind}{values.type.bit_width // 8}")
    return np.frombuffer(values.buffers()[1], dtype, count=len(values), offset=values.offset * dtype.itemsize)


def _first_null(values) -> int:
    return int(np.argmax(~values.is_valid().to_numpy(zero_copy_only=False)))


def arrow_column(array: np.ndarray):
    """An (N, ...) numpy array as an Arrow column: fixed-size lists nested once per axis after
    the first, zero-copy (the inverse of `column_array`)."""
    import pyarrow as pa

    column = flat_column(array)
    for width in reversed(array.shape[1:]):
        column = pa.FixedSizeListArray.from_arrays(column, width)
    return column


def flat_column(array: np.ndarray):
    """A numpy array's values, flattened, as an Arrow array: zero-copy for numbers in native byte
    order (``pa.array`` of a numpy array imports pandas, 0.25 s at eval's start-up)."""
    import pyarrow as pa

    array = np.ascontiguousarray(array).reshape(-1)
    if array.dtype.kind not in "iuf" or not array.dtype.isnative:
        return pa.array(array)
    return pa.Array.from_buffers(pa.from_numpy_dtype(array.dtype), len(array), [None, pa.py_buffer(array)])


# ---------------------------------------------------------------------------------------------
# Checks (the flags named are the CLI's; `batch_losses` names its columns instead)


def check_rows(spec: FocalSpec, prediction_shape, truth_shape, *, predictions: str = "--predictions",
               labels: str = "--labels") -> None:
    """Row shapes (without N) of predictions and labels against the loss: rank, C, and labels
    that match the predictions."""
    prediction_shape, truth_shape = tuple(prediction_shape), tuple(truth_shape)
    rank = len(prediction_shape) + 1
    if rank != spec.rank:
        raise UsageError(f"{predictions}: rows of shape {prediction_shape} (rank {rank}); the loss takes "
                         f"predictions ({', '.join(dimension_names(spec))}) with rank {spec.rank}")
    class_axis = spec.class_axis - 1  # in a row, which has no N
    classes = prediction_shape[class_axis]
    if spec.num_classes is not None and classes != spec.num_classes:
        raise UsageError(f"{predictions}: {classes} classes per row; the loss fixes C={spec.num_classes}")
    if classes == 0:
        raise UsageError(f"{predictions}: rows have no class (C=0)")
    without_classes = prediction_shape[:class_axis] + prediction_shape[class_axis + 1:]
    expected = without_classes if spec.sparse else prediction_shape
    if truth_shape != tuple(expected):
        what = "class indices" if spec.sparse else "targets"
        raise UsageError(f"{labels}: rows of shape {truth_shape}; expected {what} of shape {tuple(expected)} per row")


def check_loss_weights(spec: FocalSpec, prediction_shape, weight_shape, *, predictions: str = "--predictions",
                       weights: str = "--weights") -> None:
    """Row shapes of a weighted loss's weights: the unreduced loss's, (...) or (..., C)."""
    class_axis = spec.class_axis - 1
    prediction_shape = tuple(prediction_shape)
    expected = prediction_shape if spec.loss_shape == "classes" else prediction_shape[:class_axis] + prediction_shape[class_axis + 1:]
    if tuple(weight_shape) != expected:
        raise UsageError(f"{weights}: rows of shape {tuple(weight_shape)}; expected the loss's {expected} per row "
                         f"(for {predictions} rows of shape {prediction_shape})")


def check_dtypes(spec: FocalSpec, prediction_dtype, truth_dtype, *, predictions: str = "--predictions",
                 labels: str = "--labels") -> None:
    prediction_dtype, truth_dtype = np.dtype(prediction_dtype), np.dtype(truth_dtype)
    if prediction_dtype.kind != "f":
        raise UsageError(f"{predictions}: dtype {prediction_dtype}; expected floating-point predictions")
    if spec.sparse and truth_dtype.kind not in "iu":
        raise UsageError(f"{labels}: dtype {truth_dtype}; expected integer class indices")
    if not spec.sparse and truth_dtype.kind not in "fiub":
        raise UsageError(f"{labels}: dtype {truth_dtype}; expected numeric targets in [0, 1]")


def checked_predictions(spec: FocalSpec, batch: np.ndarray, first_row: int, name: str = "--predictions", *,
                        sound: bool = False) -> np.ndarray:
    """``batch`` in the loss's dtype, or a `UsageError` naming the first row holding NaN, an
    infinity or (from probabilities) a value outside [0, 1]. ``sound``: `sound_predictions`
    already said the batch is (eval's reader thread asks it, overlapping the loss of the batch
    before)."""
    with np.errstate(over="ignore"):  # a float64 value beyond float32's range becomes inf: caught below
        converted = np.ascontiguousarray(batch, dtype=spec.dtype)
    if (sound and converted is batch) or (_finite(converted) if spec.from_logits else _within(converted, 0.0, 1.0)):
        return converted
    batch = converted
    flat = batch.reshape(len(batch), -1)  # something is wrong: find the first row at fault
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        what = "NaN" if np.isnan(flat[row]).any() else f"an infinite value (or one beyond {spec.dtype})"
        raise UsageError(f"{name}: row {first_row + row} contains {what}")
    if not spec.from_logits:
        bad = ~((flat >= 0) & (flat <= 1)).all(axis=1)
        if bad.any():
            raise UsageError(f"{name}: row {first_row + int(np.argmax(bad))} has a probability outside [0, 1] "
                             "(this loss takes probabilities, not logits)")
    return batch


# The checks below only say whether a batch is sound, reading it once or twice; the slower checks
# after them find the row at fault when it is not (and let a false alarm through). Per 4 MiB batch
# of float32 (1048 x 1000, out of cache; minima of 5 rounds of 60 batches): a sum 0.49 ms, min
# and max 0.72 ms, a finite mask and its rows' all() 0.79 ms. A product with a zero vector read
# it in 0.26 ms, but in OpenBLAS's threads, whose spinning slowed ONNX Runtime: eval of a 1 GiB
# .npy took 4.74 s against 1.81 s with OPENBLAS_NUM_THREADS=1 (minima of 3 interleaved cold
# runs, load 2 to 3).


def _finite(batch: np.ndarray) -> bool:
    """Whether every value of ``batch`` is finite: its sum, NaN or infinite when a value is
    (or, rarely, when finite values overflow: a false alarm, which the full check clears)."""
    if batch.dtype not in (np.float32, np.float64):  # float16 sums overflow at 65504
        return bool(np.isfinite(batch).all())
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(batch.sum()))


def sound_predictions(spec: FocalSpec, column) -> bool:
    """Whether an Arrow column of predictions passes `checked_predictions` as it is (in the loss's
    dtype, finite, in [0, 1] from probabilities): False when it may not, or cannot be read (the
    checks then say why, naming the row)."""
    try:
        batch = column_array(column, "predictions")
    except Exception:  # noqa: BLE001  (the main thread reads it again and reports what is wrong)
        return False
    if batch.dtype != np.dtype(spec.dtype):
        return False
    return _finite(batch) if spec.from_logits else _within(batch, 0.0, 1.0)


def _within(batch: np.ndarray, low: float, high: float) -> bool:
    """Whether every value of ``batch`` is finite and in [low, high]: its minimum and maximum,
    two reads (numpy's min and max are NaN when any value is NaN)."""
    if not batch.size:
        return True
    smallest, largest = batch.min(), batch.max()
    return bool(np.isfinite(smallest) and np.isfinite(largest) and smallest >= low and largest <= high)


def checked_labels(spec: FocalSpec, batch: np.ndarray, first_row: int, classes: int, name: str = "--labels") -> np.ndarray:
    if spec.sparse:
        valid = (batch >= 0) & (batch < classes)
        if spec.ignore_index is not None:
            valid |= batch == spec.ignore_index
        bad = ~valid.reshape(len(batch), -1).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            value = batch[row].flat[int(np.argmin(valid[row].ravel()))] if batch.ndim > 1 else batch[row]
            allowed = f"[0, {classes})" + (f" or ignore_index={spec.ignore_index}" if spec.ignore_index is not None else "")
            raise UsageError(f"{name}: row {first_row + row} has label {int(value)}; expected a class in {allowed}")
        return np.ascontiguousarray(batch, dtype=np.int64)
    batch = np.ascontiguousarray(batch, dtype=spec.dtype)
    if _within(batch, 0.0, 1.0):  # ignore_index is outside [0, 1]: none here
        return batch
    valid = (batch >= 0) & (batch <= 1)  # NaN fails too
    if spec.ignore_index is not None:  # sigmoid: RetinaNet's -1 for anchors between the IoU thresholds
        valid |= batch == spec.ignore_index
    bad = ~valid.reshape(len(batch), -1).all(axis=1)
    if bad.any():
        allowed = "[0, 1]" + (f" and not ignore_index={spec.ignore_index}" if spec.ignore_index is not None else "")
        raise UsageError(f"{name}: row {first_row + int(np.argmax(bad))} has a target outside {allowed}")
    return batch


def checked_loss_weights(spec: FocalSpec, weights: np.ndarray, first_row: int, name: str = "--weights") -> np.ndarray:
    """A weighted loss's weights, finite and >= 0 (the graph would give NaN), as its dtype."""
    if weights.dtype.kind not in "fiu":
        raise UsageError(f"{name}: dtype {weights.dtype}; expected numbers >= 0")
    with np.errstate(over="ignore"):
        batch = np.ascontiguousarray(weights, dtype=spec.dtype)
    if _within(batch, 0.0, np.inf):
        return batch
    bad = ~(np.isfinite(batch) & (batch >= 0)).reshape(len(batch), -1).all(axis=1)
    if bad.any():
        raise UsageError(f"{name}: row {first_row + int(np.argmax(bad))} has a weight that is not a finite number >= 0")
    return batch


def checked_weights(weights: np.ndarray, first_row: int, name: str) -> np.ndarray:
    if weights.ndim != 1 or weights.dtype.kind not in "fiu":
        raise UsageError(f"{name}: expected one number per row, got {weights.dtype} of row shape {weights.shape[1:]}")
    weights = weights.astype(np.float64)
    bad = ~(np.isfinite(weights) & (weights >= 0))
    if bad.any():
        raise UsageError(f"{name}: row {first_row + int(np.argmax(bad))} has weight {float(weights[np.argmax(bad)])!r}; "
                         "expected a finite number >= 0")
    return weights


# ---------------------------------------------------------------------------------------------
# The per-batch function


class BatchEvaluator:
    """Per-sample losses of Arrow batches with one `LossSession`.

    ``predictions`` and ``labels`` name the columns (default: the loss's input names, e.g.
    ``logits`` and ``labels``); ``loss_weights`` the column of a weighted loss's ``weights``
    input (the unreduced loss's shape per row, default ``weights``); ``weights`` an optional
    column of per-row weights >= 0 that multiply the loss (the output is then float64); ``id_column`` an optional column copied to
    the output beside the loss. ``evaluate(batch)`` returns ``(losses, summary)``: a
    ``RecordBatch`` with ``id_column`` (if any) and ``loss`` (N,), and the batch's `LossSummary`
    (``top_k`` hardest rows). ``first_row`` numbers the rows in error messages and in the
    summary; None where the batch's place in the whole is unknown (a distributed engine).
    """

    def __init__(self, session, *, predictions: str | None = None, labels: str | None = None,
                 weights: str | None = None, id_column: str | None = None, top_k: int = 0,
                 loss_weights: str | None = None):
        spec = session.spec
        if spec is None:
            raise UsageError(f"{session.path}: an ONNX file without focalgraph's spec in its metadata")
        if id_column == LOSS_COLUMN:
            raise UsageError(f"--id-column: {LOSS_COLUMN!r} is the output's own column; name the id column otherwise")
        true_name, prediction_name = spec.input_names
        self.session, self.spec = session, spec
        self.predictions, self.labels = predictions or prediction_name, labels or true_name
        self.weights, self.id_column, self.top_k = weights, id_column, top_k
        self.loss_weights = (loss_weights or "weights") if spec.weighted else None
        if loss_weights is not None and not spec.weighted:
            raise UsageError(f"{_label(loss_weights)}: this loss takes no weights (export it with --weighted)")

    def columns(self) -> list[str]:
        """The input columns this evaluator reads."""
        names = [self.predictions, self.labels, self.loss_weights, self.weights, self.id_column]
        return list(dict.fromkeys(name for name in names if name is not None))

    def __call__(self, batch, first_row: int | None = 0):
        return self.evaluate(batch, first_row)[0]

    def evaluate(self, batch, first_row: int | None = 0, *, sound: bool = False):
        """``(losses, summary)`` of one batch (see the class); ``sound``: `sound_predictions` of
        its predictions column was True."""
        import pyarrow as pa

        spec = self.spec
        names = batch.schema.names
        for name in self.columns():
            if name not in names:
                raise UsageError(f"column {name!r}: not in the batch (it has: {', '.join(names)})")
        row = 0 if first_row is None else first_row
        prediction_name, label_name = _label(self.predictions), _label(self.labels)
        predictions = column_array(batch.column(self.predictions), prediction_name, first_row=row)
        labels = column_array(batch.column(self.labels), label_name, first_row=row)
        check_dtypes(spec, predictions.dtype, labels.dtype, predictions=prediction_name, labels=label_name)
        if len(predictions):
            check_rows(spec, predictions.shape[1:], labels.shape[1:], predictions=prediction_name, labels=label_name)
        predictions = checked_predictions(spec, predictions, row, prediction_name, sound=sound)
        classes = predictions.shape[spec.class_axis] if predictions.ndim > 1 else 0
        labels = checked_labels(spec, labels, row, classes, label_name)
        loss_weights = None
        if self.loss_weights is not None:
            weights_name = _label(self.loss_weights)
            loss_weights = column_array(batch.column(self.loss_weights), weights_name, first_row=row)
            if len(predictions):
                check_loss_weights(spec, predictions.shape[1:], loss_weights.shape[1:], predictions=prediction_name,
                                   weights=weights_name)
            loss_weights = checked_loss_weights(spec, loss_weights, row, weights_name)
        elements = None
        if len(predictions):
            # the unreduced loss too: the summary's per-class figures are over positions (pixels)
            outputs = self.session.row_forms(labels, predictions, loss_weights)
            losses, elements = outputs["per_sample"], outputs["loss"]
        else:
            losses = np.zeros(0, np.dtype(spec.dtype))
        not_finite = ~np.isfinite(losses)
        if not_finite.any():  # checked inputs should never get here; never write such a number
            raise UsageError(f"the loss is not finite at row {row + int(np.argmax(not_finite))}")
        if self.weights is not None:
            weight = checked_weights(column_array(batch.column(self.weights), _label(self.weights), first_row=row),
                                     row, _label(self.weights))
            losses = losses.astype(np.float64) * weight
            if elements is not None:
                elements = elements.astype(np.float64) * weight.reshape((-1,) + (1,) * (elements.ndim - 1))
        ids = batch.column(self.id_column) if self.id_column is not None else None
        if isinstance(ids, pa.ChunkedArray):  # a Table's column (Ray hands over Tables)
            ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
        summary = None
        if len(predictions):  # an empty batch has no row shape to summarise by, and adds nothing
            summary = LossSummary(spec, predictions.shape[1:], self.top_k)
            summary.add(losses, labels, elements=elements, first_row=first_row, ids=ids, weights=loss_weights)
        arrays, fields = [flat_column(losses)], [LOSS_COLUMN]
        if ids is not None:
            arrays.insert(0, ids)
            fields.insert(0, self.id_column)
        return pa.RecordBatch.from_arrays(arrays, fields), summary


def _label(column: str) -> str:
    """How errors name a column: `evaluate` names its batch's columns after the CLI's flags
    (``--predictions``), so that its errors name the flag; other columns by name."""
    return column if column.startswith("--") else f"column {column!r}"


def batch_losses(session, batch, *, predictions: str | None = None, labels: str | None = None,
                 weights: str | None = None, id_column: str | None = None, first_row: int = 0):
    """Per-sample losses of one Arrow ``RecordBatch`` (or ``Table``): a ``RecordBatch`` with the
    ``id_column`` (if given) and ``loss`` (N,). ``session`` is a `LossSession`; see
    `BatchEvaluator` for the columns and the checks."""
    evaluator = BatchEvaluator(session, predictions=predictions, labels=labels, weights=weights, id_column=id_column)
    return evaluator(batch, first_row)
