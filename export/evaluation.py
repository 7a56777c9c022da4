"""``eval``: per-sample losses of files of predictions and labels, with ONNX Runtime alone.

Imports numpy, onnxruntime, tqdm and (for Parquet) pyarrow; never TensorFlow. Inputs stream in
batches: a ``.npy`` is read through a memory map one batch-sized window at a time (each window
unmapped before the next, so resident memory stays near one batch however large the file);
Parquet is read a batch of rows at a time; an ``.npz`` member is read whole (zip members cannot
be mapped). A file is ``PATH`` or ``PATH:NAME`` (the array of an ``.npz``, the column of a
Parquet file; by default the one named after the loss's input, or the only one).

Every batch is checked before it is evaluated: NaN predictions, labels that are not classes of
the loss (``ignore_index`` aside), targets outside [0, 1] are `UsageError` naming the first
offending row. The losses and the summary go to temporary files beside ``out`` and ``summary``
(`export.writing.StagedFiles`), renamed at the end: a failed run leaves no output.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import io
import zipfile
import zlib
from pathlib import Path

import numpy as np

from export import artifact, writing
from export.errors import UsageError
from export.runtime import LossSession
from focal_graph.spec import FocalSpec

DEFAULT_BATCH_SIZE = 4096
DEFAULT_TOP_K = 10


def evaluate(artifact_path, *, predictions, labels, out=None, summary=None, batch_size: int = DEFAULT_BATCH_SIZE,
             provider: str = "auto", top_k: int = DEFAULT_TOP_K, progress: bool = False) -> dict:
    """Evaluate the loss at ``artifact_path`` on ``predictions`` and ``labels`` (files, see the
    module docstring); write the per-sample losses to ``out`` (``.npy``) and the summary to
    ``summary`` (JSON) when given. Returns the summary: ``count``, ``sum``, ``mean`` (over
    samples), ``per_class`` (mean loss and count per class, for (N, C) losses), ``hardest`` (the
    ``top_k`` largest per-sample losses and their row indices) and the provider that ran."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch-size: expected an integer >= 1, got {batch_size!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise UsageError(f"--top-k: expected an integer >= 0, got {top_k!r}")
    outputs = writing.check_outputs({"--out": out, "--summary": summary}, {
        "ARTIFACT": artifact_path, "--predictions": _file_part(predictions), "--labels": _file_part(labels)})
    session = LossSession(artifact_path, provider)
    spec = session.spec
    if spec is None:
        raise UsageError(f"{artifact_path}: an ONNX file without focalgraph's spec in its metadata")
    true_name, prediction_name = spec.input_names
    with contextlib.ExitStack() as stack:
        predicted = stack.enter_context(open_source(predictions, "--predictions", (prediction_name, "predictions")))
        truth = stack.enter_context(open_source(labels, "--labels", (true_name, "labels", "targets")))
        _check_shapes(spec, predicted, truth)
        rows = predicted.rows
        accumulator = _Accumulator(spec, predicted.row_shape, top_k)
        with writing.StagedFiles() as files:  # both complete before either is renamed into place
            losses = None if out is None else _output_file(files, outputs["--out"], rows, spec)
            bar = _progress_bar(rows, progress)
            start = 0
            for prediction_batch, label_batch in zip(predicted.batches(batch_size), truth.batches(batch_size)):
                prediction_batch = _checked_predictions(spec, prediction_batch, start)
                label_batch = _checked_labels(spec, label_batch, start, predicted.row_shape[-1])
                per_sample = session(label_batch, prediction_batch)
                not_finite = ~np.isfinite(per_sample)
                if not_finite.any():  # checked inputs should never get here; never write such a number
                    raise UsageError(f"the loss is not finite at row {start + int(np.argmax(not_finite))}")
                accumulator.add(start, per_sample, label_batch)
                if losses is not None:
                    with files.reporting("--out", out):
                        losses.write(np.ascontiguousarray(per_sample, dtype=spec.dtype).tobytes())
                start += len(per_sample)
                bar.update(len(per_sample))
            bar.close()
            result = {
                "artifact": str(artifact_path),
                "spec": spec.name,
                "predictions": str(predictions),
                "labels": str(labels),
                "onnxruntime": session.describe(),
                **accumulator.summary(),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            if summary is not None:
                files.write("--summary", outputs["--summary"], artifact.json_bytes(result))
    return result


def _file_part(text) -> str:
    """The file of ``PATH`` or ``PATH:NAME``."""
    text = str(text)
    if Path(text).is_file() or ":" not in Path(text).name:
        return text
    return text.rpartition(":")[0]


# ---------------------------------------------------------------------------------------------
# Sources: .npy (memory-mapped windows), .npz (whole arrays), Parquet (row batches)


class _Source(abc.ABC):
    """Rows of one array: ``rows``, ``row_shape``, ``dtype``, and ``batches(size)``."""

    flag: str
    path: Path
    rows: int
    row_shape: tuple
    dtype: np.dtype

    @abc.abstractmethod
    def batches(self, size: int):
        """The rows in order, as arrays of at most ``size`` rows."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        pass


class _Npy(_Source):
    def __init__(self, flag: str, path: Path):
        self.flag, self.path = flag, path
        try:
            with open(path, "rb") as file:
                version = np.lib.format.read_magic(file)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(file)
                self.offset = file.tell()
        except (OSError, ValueError, EOFError) as error:
            raise UsageError(f"{flag}: {path} is not a readable .npy file ({error})") from None
        if fortran and len(shape) > 1:
            raise UsageError(f"{flag}: {path} is stored in Fortran order; save it in C order (np.ascontiguousarray)")
        if dtype.hasobject or not shape:
            raise UsageError(f"{flag}: {path} holds {dtype} of shape {shape}; expected numbers, one row per sample")
        self.rows, self.row_shape, self.dtype = shape[0], tuple(shape[1:]), dtype
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * dtype.itemsize
        expected = self.offset + self.rows * self.row_bytes
        if path.stat().st_size < expected:
            raise UsageError(f"{flag}: {path} is truncated ({path.stat().st_size} bytes; its header needs {expected})")

    def batches(self, size: int):
        for start in range(0, self.rows, size):
            count = min(size, self.rows - start)
            if self.row_bytes == 0:
                yield np.zeros((count,) + self.row_shape, self.dtype)
                continue
            window = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset + start * self.row_bytes,
                               shape=(count,) + self.row_shape)
            batch = np.array(window)  # copy out, then unmap: resident memory stays one batch
            del window
            yield batch


class _Npz(_Source):
    def __init__(self, flag: str, path: Path, key, defaults):
        self.flag, self.path = flag, path
        try:
            self.archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise UsageError(f"{flag}: {path} is not a readable .npz file ({error})") from None
        if not isinstance(self.archive, np.lib.npyio.NpzFile):
            raise UsageError(f"{flag}: {path} is not an .npz archive (it holds one array: name it .npy)")
        names = list(self.archive.files)
        name = _pick(flag, path, key, defaults, names, "array")
        try:
            self.array = self.archive[name]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise UsageError(f"{flag}: {path}:{name} cannot be read ({type(error).__name__}: {error})") from None
        if self.array.dtype.hasobject or self.array.ndim == 0:
            raise UsageError(f"{flag}: {path}:{name} holds {self.array.dtype} of shape {self.array.shape}")
        self.rows, self.row_shape, self.dtype = self.array.shape[0], self.array.shape[1:], self.array.dtype

    def batches(self, size: int):
        for start in range(0, self.rows, size):
            yield self.array[start:start + size]

    def close(self) -> None:
        self.archive.close()


class _Parquet(_Source):
    def __init__(self, flag: str, path: Path, key, defaults):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError(f"{flag}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        self.flag, self.path, self.pa = flag, path, pa
        try:
            self.file = pq.ParquetFile(path, page_checksum_verification=True)
        except Exception as error:  # pyarrow.ArrowInvalid and friends
            raise UsageError(f"{flag}: {path} is not a readable Parquet file ({error})") from None
        schema = self.file.schema_arrow
        self.column = _pick(flag, path, key, defaults, schema.names, "column")
        kind = schema.field(self.column).type
        self.rows = self.file.metadata.num_rows
        if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
            value_type = kind.value_type
            if pa.types.is_fixed_size_list(kind):
                width = kind.list_size
            else:  # a list column: every row must have the same length, read from the first row
                first = next(self.file.iter_batches(batch_size=1, columns=[self.column]), None)
                if first is None:
                    raise UsageError(f"{flag}: {path}:{self.column} has no rows, so no class count to read")
                if not first.column(0)[0].is_valid:
                    raise UsageError(f"{flag}: {path}:{self.column} has a null in row 0")
                width = len(first.column(0)[0])
            self.row_shape = (width,)
        else:
            value_type, self.row_shape = kind, ()
        try:
            self.dtype = np.dtype(value_type.to_pandas_dtype())
        except (NotImplementedError, TypeError):
            raise UsageError(f"{flag}: {path}:{self.column} has type {kind}; expected numbers or lists of numbers") from None

    def batches(self, size: int):
        pa = self.pa
        start = 0
        try:
            for record_batch in self.file.iter_batches(batch_size=size, columns=[self.column]):
                column = record_batch.column(0)
                if column.null_count:
                    raise UsageError(f"{self.flag}: {self.path}:{self.column} has a null in rows {start}..{start + len(column) - 1}")
                if self.row_shape:
                    if pa.types.is_fixed_size_list(column.type):
                        values = column.flatten().to_numpy(zero_copy_only=False)
                    else:
                        lengths = np.diff(column.offsets.to_numpy())
                        bad = np.flatnonzero(lengths != self.row_shape[0])
                        if bad.size:
                            raise UsageError(f"{self.flag}: row {start + int(bad[0])} of {self.path}:{self.column} has "
                                             f"{int(lengths[bad[0]])} values; row 0 has {self.row_shape[0]}")
                        values = column.flatten().to_numpy(zero_copy_only=False)
                    batch = values.reshape((len(column),) + self.row_shape)
                else:
                    batch = column.to_numpy(zero_copy_only=False)
                start += len(batch)
                yield batch
        except UsageError:
            raise
        except Exception as error:  # a corrupt page or a truncated file surfaces here
            raise UsageError(f"{self.flag}: {self.path} could not be read at row {start} ({type(error).__name__}: {error})") from None


def open_source(text, flag: str, defaults) -> _Source:
    """``PATH`` or ``PATH:NAME`` as a source of rows (see the module docstring)."""
    text = str(text)
    path, _, key = text.rpartition(":") if ":" in Path(text).name and not Path(text).is_file() else (text, "", "")
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag}: {path} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if key:
            raise UsageError(f"{flag}: a .npy file holds one array; drop ':{key}'")
        return _Rebatched(_Npy(flag, path))
    if suffix == ".npz":
        return _Rebatched(_Npz(flag, path, key or None, defaults))
    if suffix in (".parquet", ".pq"):
        return _Rebatched(_Parquet(flag, path, key or None, defaults))
    raise UsageError(f"{flag}: {path}: expected a .npy, .npz or .parquet file")


class _Rebatched(_Source):
    """A source whose batches are exactly ``size`` rows (the last excepted), so two sources with
    different natural chunks (Parquet row groups) stay aligned row for row."""

    def __init__(self, inner: _Source):
        self.inner = inner
        self.flag, self.path, self.rows, self.row_shape, self.dtype = (
            inner.flag, inner.path, inner.rows, tuple(inner.row_shape), inner.dtype)

    def batches(self, size: int):
        pending, count = [], 0
        for batch in self.inner.batches(size):
            pending.append(batch)
            count += len(batch)
            while count >= size:
                joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield joined[:size]
                rest = joined[size:]
                pending, count = ([rest] if len(rest) else []), len(rest)
        if count:
            yield np.concatenate(pending) if len(pending) > 1 else pending[0]

    def close(self) -> None:
        self.inner.close()


def _pick(flag, path, key, defaults, names, what) -> str:
    if key is not None:
        if key not in names:
            raise UsageError(f"{flag}: {path} has no {what} {key!r} (it has: {', '.join(names)})")
        return key
    for name in defaults:
        if name in names:
            return name
    if len(names) == 1:
        return names[0]
    raise UsageError(f"{flag}: {path} has {len(names)} {what}s ({', '.join(names)}); name one as {path}:NAME")


# ---------------------------------------------------------------------------------------------
# Checks


def _check_shapes(spec: FocalSpec, predicted: _Source, truth: _Source) -> None:
    rank = len(predicted.row_shape) + 1
    layout = "predictions (N, ..., C) with rank " + str(spec.rank)
    if rank != spec.rank:
        raise UsageError(f"--predictions: rows of shape {predicted.row_shape} (rank {rank}); the loss takes {layout}")
    classes = predicted.row_shape[-1]
    if spec.num_classes is not None and classes != spec.num_classes:
        raise UsageError(f"--predictions: {classes} classes per row; the loss fixes C={spec.num_classes}")
    if classes == 0:
        raise UsageError("--predictions: rows have no class (C=0)")
    expected = predicted.row_shape[:-1] if spec.sparse else predicted.row_shape
    if truth.row_shape != tuple(expected):
        what = "class indices" if spec.sparse else "targets"
        raise UsageError(f"--labels: rows of shape {truth.row_shape}; expected {what} of shape {tuple(expected)} per row")
    if truth.rows != predicted.rows:
        raise UsageError(f"--labels: {truth.rows} rows; --predictions has {predicted.rows}")
    if predicted.dtype.kind != "f":
        raise UsageError(f"--predictions: dtype {predicted.dtype}; expected floating-point predictions")
    if spec.sparse and truth.dtype.kind not in "iu":
        raise UsageError(f"--labels: dtype {truth.dtype}; expected integer class indices")
    if not spec.sparse and truth.dtype.kind not in "fiub":
        raise UsageError(f"--labels: dtype {truth.dtype}; expected numeric targets in [0, 1]")


def _checked_predictions(spec: FocalSpec, batch: np.ndarray, start: int) -> np.ndarray:
    with np.errstate(over="ignore"):  # a float64 value beyond float32's range becomes inf: caught below
        batch = np.ascontiguousarray(batch, dtype=spec.dtype)
    flat = batch.reshape(len(batch), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        what = "NaN" if np.isnan(flat[row]).any() else f"an infinite value (or one beyond {spec.dtype})"
        raise UsageError(f"--predictions: row {start + row} contains {what}")
    if not spec.from_logits:
        bad = ~((flat >= 0) & (flat <= 1)).all(axis=1)
        if bad.any():
            raise UsageError(f"--predictions: row {start + int(np.argmax(bad))} has a probability outside [0, 1] "
                             "(this loss takes probabilities, not logits)")
    return batch


def _checked_labels(spec: FocalSpec, batch: np.ndarray, start: int, classes: int) -> np.ndarray:
    if spec.sparse:
        valid = (batch >= 0) & (batch < classes)
        if spec.ignore_index is not None:
            valid |= batch == spec.ignore_index
        bad = ~valid.reshape(len(batch), -1).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            value = batch[row].flat[int(np.argmin(valid[row].ravel()))] if batch.ndim > 1 else batch[row]
            allowed = f"[0, {classes})" + (f" or ignore_index={spec.ignore_index}" if spec.ignore_index is not None else "")
            raise UsageError(f"--labels: row {start + row} has label {int(value)}; expected a class in {allowed}")
        return np.ascontiguousarray(batch, dtype=np.int64)
    batch = np.ascontiguousarray(batch, dtype=spec.dtype)
    bad = ~((batch >= 0) & (batch <= 1)).reshape(len(batch), -1).all(axis=1)  # NaN fails too
    if bad.any():
        raise UsageError(f"--labels: row {start + int(np.argmax(bad))} has a target outside [0, 1]")
    return batch


def _output_file(files: writing.StagedFiles, out: Path, rows: int, spec: FocalSpec):
    """The losses' ``.npy``, open for writing batch after batch, its whole size reserved first: a
    memory map here would turn a full disk into SIGBUS."""
    dtype = np.dtype(spec.dtype)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows,)})
    file = files.open("--out", out, size=len(header.getvalue()) + rows * dtype.itemsize)
    with files.reporting("--out", out):
        file.write(header.getvalue())
    return file


def _progress_bar(rows: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=rows, unit="rows", unit_scale=True, disable=not enabled, leave=False)


# ---------------------------------------------------------------------------------------------
# The summary


class _Accumulator:
    """Running count, sum, per-class sums and the k largest per-sample losses."""

    def __init__(self, spec: FocalSpec, row_shape, top_k: int):
        self.spec, self.top_k = spec, top_k
        self.classes = row_shape[-1]
        self.per_class = len(row_shape) == 1  # (N, C): one class (or class set) per sample
        # positions of the unreduced loss per sample: (..., C) for sigmoid, (...) for the others
        loss_shape = row_shape if spec.kind == ("variant", "sigmoid") else row_shape[:-1]
        self.positions_per_row = int(np.prod(loss_shape, dtype=np.int64))
        self.count, self.total, self.ignored = 0, 0.0, 0
        self.class_sum = np.zeros(self.classes, np.float64)
        self.class_count = np.zeros(self.classes, np.int64)
        self.hard_losses = np.zeros(0, np.float64)
        self.hard_rows = np.zeros(0, np.int64)

    def add(self, start: int, losses: np.ndarray, labels: np.ndarray) -> None:
        losses = losses.astype(np.float64)
        self.count += len(losses)
        self.total += float(losses.sum())
        ignored = None
        if self.spec.sparse and self.spec.ignore_index is not None:
            ignored = labels == self.spec.ignore_index
            self.ignored += int(ignored.sum())
        if self.per_class:
            if self.spec.sparse:
                counted = ~ignored if ignored is not None else np.ones(len(labels), bool)
                self.class_sum += np.bincount(labels[counted], weights=losses[counted], minlength=self.classes)
                self.class_count += np.bincount(labels[counted], minlength=self.classes)
            elif self.spec.multi_label:  # every class the sample is positive for (target >= 0.5)
                positive = labels >= 0.5
                self.class_sum += positive.T.astype(np.float64) @ losses
                self.class_count += positive.sum(axis=0)
            else:  # soft or one-hot targets: the most likely class (rows of all-zero targets have none)
                has_class = labels.max(axis=1) > 0
                label = np.argmax(labels, axis=1)[has_class]
                self.class_sum += np.bincount(label, weights=losses[has_class], minlength=self.classes)
                self.class_count += np.bincount(label, minlength=self.classes)
        if self.top_k:
            candidates = np.concatenate([self.hard_losses, losses])
            rows = np.concatenate([self.hard_rows, np.arange(start, start + len(losses))])
            keep = np.argsort(-candidates, kind="stable")[: self.top_k]
            self.hard_losses, self.hard_rows = candidates[keep], rows[keep]

    def summary(self) -> dict:
        per_class = None
        if self.per_class:
            per_class = [
                {"class": c, "count": int(n), "mean_loss": float(s / n) if n else None}
                for c, (s, n) in enumerate(zip(self.class_sum, self.class_count))
            ]
        positions = self.count * self.positions_per_row - self.ignored
        result = {
            "count": self.count,
            "sum": self.total,
            "mean": self.total / self.count if self.count else None,
            # the artifact's own `mean`: over the loss's positions, ignore_index ones left out
            "mean_per_position": self.total / positions if positions else None,
            "per_class": per_class,
            "per_class_by": None if per_class is None else (
                "label" if self.spec.sparse else "positive targets" if self.spec.multi_label else "argmax of the targets"),
            "hardest": [{"row": int(r), "loss": float(v)} for r, v in zip(self.hard_rows, self.hard_losses)],
        }
        if self.spec.sparse and self.spec.ignore_index is not None:
            result["ignored_positions"] = self.ignored
        return result


def format_summary(summary: dict) -> str:
    lines = [
        f"{summary['artifact']}  {summary['spec']}  ({summary['onnxruntime']['provider']})",
        f"  samples {summary['count']}, sum {summary['sum']:.6g}, mean per sample {_number(summary['mean'])}, "
        f"mean per position {_number(summary['mean_per_position'])}",
    ]
    if summary["per_class"]:
        shown = [c for c in summary["per_class"] if c["count"]][:20]
        lines.append("  per class (" + summary["per_class_by"] + "): " + ", ".join(
            f"{c['class']}: {c['mean_loss']:.4g} (n={c['count']})" for c in shown)
            + (" ..." if len([c for c in summary["per_class"] if c["count"]]) > 20 else ""))
    if summary["hardest"]:
        lines.append("  hardest rows: " + ", ".join(f"{h['row']} ({h['loss']:.4g})" for h in summary["hardest"]))
    return "\n".join(lines)


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.6g}"
