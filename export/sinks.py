"""Where eval's per-sample losses go: a ``.npy`` file, or a Parquet dataset directory.

Both are written beside their destination under a temporary name and renamed into place by
``commit()``; ``discard()`` removes what was written. Memory stays one batch: the ``.npy`` is
written with plain appends (a memory map would turn a full disk into SIGBUS), the dataset one
row group at a time.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from export import writing
from export.errors import OutputError, UsageError

ROWS_PER_FILE = 1 << 20  # a part file per million rows: many files for engines to split, few for people to list


def is_dataset_path(out) -> bool:
    """A destination without a file suffix is a Parquet dataset directory; one with, a .npy."""
    return Path(out).suffix == ""


def check_destination(out) -> None:
    """``out`` must be creatable, and a dataset directory must not exist (nothing proves eval
    wrote one: it could hold anything); an existing ``.npy`` is `export.writing.check_outputs`'s
    to refuse (without ``--force``)."""
    path = Path(os.path.abspath(out))
    if is_dataset_path(out):
        if path.exists() or path.is_symlink():
            raise UsageError(f"--out: {path} already exists; name a new directory for the Parquet dataset "
                             "(or a FILE.npy): eval never replaces a directory, even with --force")
    else:
        if path.suffix.lower() != ".npy":
            raise UsageError(f"--out: {path}: expected FILE.npy, or a directory name without a suffix for a Parquet dataset")
        if path.is_dir():
            raise UsageError(f"--out: {path} is a directory; name a file")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out: {path.parent} is not a writable directory")


def _disk_error(out, error: OSError) -> OutputError:
    return OutputError(f"--out: cannot write {out} ({error.strerror or error}); nothing was written")


class NpySink:
    """Losses appended to a temporary ``.npy`` of ``rows`` rows of ``dtype``, renamed to ``out``
    (an existing ``out`` only with ``force``)."""

    def __init__(self, out, rows: int, dtype, *, force: bool = False):
        self.out, self.rows, self.dtype = Path(out), rows, np.dtype(dtype)
        self.written = 0
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (rows,)})
        self.files = writing.StagedFiles(force=force)
        try:
            # the whole size reserved now: a full disk fails here, in one line
            self.file = self.files.open("--out", self.out, size=len(header.getvalue()) + rows * self.dtype.itemsize)
            with self.files.reporting("--out", self.out):
                self.file.write(header.getvalue())
        except BaseException:
            self.discard()
            raise

    def write(self, batch) -> None:
        from export.batches import column_array

        losses = column_array(batch.column(batch.schema.names.index("loss")), "--out")
        with self.files.reporting("--out", self.out):
            self.file.write(np.ascontiguousarray(losses, dtype=self.dtype).tobytes())
        self.written += len(losses)

    def commit(self) -> None:
        if self.written != self.rows:  # the sources promised rows they did not deliver
            raise UsageError(f"--out: {self.written} losses written; the inputs have {self.rows} rows")
        self.files.commit()

    def discard(self) -> None:
        self.files.discard()


class ParquetDatasetSink:
    """Batches written as ``part-00000.parquet``, ... in a temporary directory beside ``out``,
    which becomes ``out`` on commit."""

    def __init__(self, out, rows_per_file: int = ROWS_PER_FILE):
        self.out, self.rows_per_file = Path(os.path.abspath(out)), rows_per_file
        try:
            self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
            self.stage.chmod(writing.DIRECTORY_MODE)  # mkdtemp's 0700 is for the temporary only
        except OSError as error:
            raise _disk_error(out, error) from None
        self.writer, self.parts, self.in_part = None, 0, 0

    def write(self, batch) -> None:
        import pyarrow.parquet as pq

        try:
            if self.writer is not None and self.in_part + batch.num_rows > self.rows_per_file and self.in_part:
                self.writer.close()
                self.writer = None
            if self.writer is None:
                path = self.stage / f"part-{self.parts:05d}.parquet"
                self.writer = pq.ParquetWriter(path, batch.schema)
                self.parts, self.in_part = self.parts + 1, 0
            self.writer.write_batch(batch)
            self.in_part += batch.num_rows
        except OSError as error:
            raise _disk_error(self.out, error) from None

    def commit(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
            if self.out.exists():  # appeared while we worked: never replace what we did not write
                raise UsageError(f"--out: {self.out} appeared while eval ran; the losses were not written")
            os.replace(self.stage, self.out)
        except OSError as error:
            raise _disk_error(self.out, error) from None

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            if self.writer is not None:
                self.writer.close()
        shutil.rmtree(self.stage, ignore_errors=True)


def open_sink(out, rows: int, dtype, *, force: bool = False):
    return ParquetDatasetSink(out) if is_dataset_path(out) else NpySink(out, rows, dtype, force=force)
