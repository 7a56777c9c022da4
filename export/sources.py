"""Where eval's rows come from: one column of a ``.npy``, ``.npz``, Parquet file or Parquet
dataset, streamed as Arrow arrays of a fixed number of rows.

numpy and pyarrow; never TensorFlow. Resident memory stays near one batch whatever the input's
size: a ``.npy`` is read through one memory-mapped window per batch (unmapped before the next);
an ``.npz`` member is decompressed as a stream (zip members can be read incrementally, never
whole); Parquet is read a batch of rows at a time, one file after another, through a 1 MiB read
buffer and without pre-buffering (both would otherwise hold whole column chunks in memory).

A source is named ``PATH`` or ``PATH:NAME``: the array of an ``.npz``, the column of a Parquet
file or dataset (by default the one named after the loss's input, or the only one). A Parquet
dataset is a directory (searched recursively; hive-partitioned directories included, files
whose names start with ``_`` or ``.`` left out) or a glob of files; its files are read in sorted
order and must agree on the column's type.
"""

from __future__ import annotations

import abc
import glob
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from export.errors import UsageError

PARQUET_SUFFIXES = (".parquet", ".pq")
# Rows per batch are capped so that a batch of predictions stays within this many bytes: memory
# then stays bounded for wide rows too (10,000 classes in 4096-row batches peaked at 726 MB).
# Within a batch ONNX Runtime runs over cache-sized pieces (`export.runtime.rows_per_run`), so a
# batch can be larger than the cache. Softmax losses take 16 MiB: it cut eval's per-batch work by
# four (eval of a 1 GiB .npy, sparse: 1.04 s against 1.24 s with 4 MiB, minima of 5 interleaved
# cold runs), and tests/test_eval_memory.py's peaks went from 155-219 MiB to 111-224 MiB (the
# 10,000-class rows 186 to 224 MiB; the others fell, as numpy-to-Arrow no longer imports pandas).
# Element-wise (sigmoid) losses keep 4 MiB: their batch also holds targets, the (N, C) loss and
# the per-class keys, and at 16 MiB eval of 32768 x 1000 sigmoid rows peaked at 431 MB.
BATCH_BYTES = {"softmax": 16 << 20, "element-wise": 4 << 20}


def rows_per_batch(batch_size: int, source, *, element_wise: bool = False, alongside=()) -> int:
    """``batch_size``, or fewer rows where those would exceed `BATCH_BYTES` of predictions.

    An element-wise loss read from Parquet counts its other Parquet columns (``alongside``: the
    targets, a weighted loss's weights) too: each column's reader holds pages of its own, and
    62,500 x 1000 sigmoid rows with targets and weights as columns of one row group peaked at
    306-316 MB with 4 MiB of predictions per batch, 243-249 MB with 4 MiB of the three columns
    together (the same rows as .npy files: 236 MB; .npy keeps its batches, as smaller ones were
    slower: 3.2-3.5 s against 3.3-4.3 s for half of them, unweighted)."""
    limit = BATCH_BYTES["element-wise" if element_wise else "softmax"]
    per_row = source.bytes_per_row()
    if element_wise and isinstance(source, ParquetSource):
        per_row += sum(other.bytes_per_row() for other in alongside if isinstance(other, ParquetSource))
    return max(1, min(batch_size, limit // per_row))


# pyarrow reads a whole column chunk (a row group's column: 400 MB in a file written with the
# defaults) unless it is given a read buffer; with 1 MiB, eval of such a file peaked at 100 MB
# instead of 504 MB (reading alone, /usr/bin/time -v), and ran faster.
_READ_BUFFER = 1 << 20
_READ_BYTES = 1 << 20  # of one column's values per ParquetFile read (see ParquetSource._read_rows)


class Source(abc.ABC):
    """Rows of one array: ``rows``; ``row_shape`` (None for a dimension that only the data
    tells, e.g. the length of a list column); ``dtype`` (of the values); ``arrays(size)``."""

    flag: str
    path: Path
    rows: int
    row_shape: tuple
    dtype: np.dtype

    @abc.abstractmethod
    def arrays(self, size: int):
        """The rows in order, as Arrow arrays of at most ``size`` rows each."""

    def bytes_per_row(self) -> int:
        """Bytes one row takes in memory (an estimate from the file's metadata where list lengths
        vary)."""
        known = [d for d in self.row_shape if d is not None]
        return max(1, math.prod(known) * self.dtype.itemsize) if self.dtype is not None else 1

    def batches(self, size: int):
        """The rows in order as numpy arrays of exactly ``size`` rows (the last excepted)."""
        from export.batches import column_array

        start = 0
        for array in rebatched(self.arrays(size), size):
            yield column_array(array, self.flag, first_row=start)
            start += len(array)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        pass


def rebatched(arrays, size: int):
    """Arrow arrays regrouped into arrays of exactly ``size`` rows (the last excepted), zero-copy
    where one input array covers the output, so that sources with different natural chunks
    (Parquet row groups, files) stay aligned row for row."""
    import pyarrow as pa

    pending, count = [], 0
    for array in arrays:
        if not len(array):
            continue
        pending.append(array)
        count += len(array)
        while count >= size:
            joined = pending[0] if len(pending) == 1 else pa.concat_arrays(pending)
            yield joined.slice(0, size)
            rest = joined.slice(size)
            pending, count = ([rest] if len(rest) else []), len(rest)
    if count:
        yield pending[0] if len(pending) == 1 else pa.concat_arrays(pending)


def _numpy_arrays(batches):
    from export.batches import arrow_column

    for batch in batches:
        yield arrow_column(batch)


def _read_npy_header(file, what: str):
    """(shape, dtype, header length) of the .npy stream ``file``, or a `UsageError`."""
    try:
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(file, max_header_size=1 << 16)
    except (OSError, ValueError, EOFError, SyntaxError, TypeError, zlib.error, zipfile.BadZipFile) as error:
        raise UsageError(f"{what} is not a readable .npy array ({error})") from None
    if fortran and len(shape) > 1:
        raise UsageError(f"{what} is stored in Fortran order; save it in C order (np.ascontiguousarray)")
    if dtype.hasobject or not shape:
        raise UsageError(f"{what} holds {dtype} of shape {shape}; expected numbers, one row per sample")
    return tuple(shape), dtype


def _data_bytes(shape, dtype) -> int:
    """Bytes of an array of ``shape``: Python integers, so a header whose dimensions overflow
    int64 gives a huge number (refused against the file's size), not a wrapped one."""
    return math.prod(shape) * dtype.itemsize


class NpySource(Source):
    def __init__(self, flag: str, path: Path):
        self.flag, self.path = flag, path
        try:
            with open(path, "rb") as file:
                shape, self.dtype = _read_npy_header(file, f"{flag}: {path}")
                self.offset = file.tell()
        except OSError as error:
            raise UsageError(f"{flag}: {path} cannot be read ({error.strerror})") from None
        self.rows, self.row_shape = shape[0], shape[1:]
        expected = self.offset + _data_bytes(shape, self.dtype)
        if path.stat().st_size < expected:
            raise UsageError(f"{flag}: {path} is truncated ({path.stat().st_size} bytes; its header needs {expected})")
        self.row_bytes = _data_bytes(self.row_shape, self.dtype)

    def arrays(self, size: int):
        return _numpy_arrays(self._windows(size))

    def _windows(self, size: int):
        # read(), not a memmap: a file truncated while it is read is a short read here, where a
        # memmap raises numpy's "mmap length is greater than file size", or SIGBUS mid-copy
        if self.row_bytes == 0:
            for start in range(0, self.rows, size):
                yield np.zeros((min(size, self.rows - start),) + self.row_shape, self.dtype)
            return
        try:
            with open(self.path, "rb", buffering=0) as file:  # unbuffered: each batch is read when it is used
                file.seek(self.offset)
                for start in range(0, self.rows, size):
                    count = min(size, self.rows - start)
                    batch = np.empty((count,) + self.row_shape, self.dtype)
                    if _read_into(file, batch.reshape(-1).view(np.uint8)) != batch.nbytes:
                        raise UsageError(f"{self.flag}: {self.path} was truncated while being read (it ends within "
                                         f"rows {start} to {start + count - 1} of the {self.rows} its header declares)")
                    yield batch
        except OSError as error:
            raise UsageError(f"{self.flag}: {self.path} could not be read ({error.strerror or error})") from None


def _read_into(file, buffer) -> int:
    """Fill ``buffer`` from the raw ``file``; the bytes read, fewer only at the end of the file."""
    done = 0
    while done < len(buffer):
        count = file.readinto(buffer[done:])
        if not count:
            break
        done += count
    return done


class NpzSource(Source):
    """One member of an .npz, decompressed as a stream: memory stays one batch however large
    the member (a 1 MB .npz can hold a member of gigabytes of zeros)."""

    def __init__(self, flag: str, path: Path, key, defaults):
        self.flag, self.path = flag, path
        try:
            self.archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile, ValueError) as error:
            if path.is_file() and path.read_bytes()[:6] == b"\x93NUMPY":
                raise UsageError(f"{flag}: {path} is not an .npz archive (it holds one array: name it .npy)") from None
            raise UsageError(f"{flag}: {path} is not a readable .npz file ({error})") from None
        names = [n[:-4] for n in self.archive.namelist() if n.endswith(".npy")]
        self.name = pick(flag, path, key, defaults, names, "array")
        self.info = self.archive.getinfo(self.name + ".npy")
        what = f"{flag}: {path}:{self.name}"
        self.what = what
        try:
            with self.archive.open(self.info) as member:
                shape, self.dtype = _read_npy_header(member, what)
                header = member.tell() if member.seekable() else None
        except UsageError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as error:
            raise UsageError(f"{what} cannot be read ({type(error).__name__}: {error})") from None
        self.rows, self.row_shape = shape[0], shape[1:]
        self.row_bytes = _data_bytes(self.row_shape, self.dtype)
        need = _data_bytes(shape, self.dtype)
        if header is not None and self.info.file_size - header < need:
            raise UsageError(f"{what} is truncated ({self.info.file_size - header} bytes of data; its header needs {need})")

    def arrays(self, size: int):
        return _numpy_arrays(self._chunks(size))

    def _chunks(self, size: int):
        try:
            with self.archive.open(self.info) as member:
                _read_npy_header(member, self.what)
                for start in range(0, self.rows, size):
                    count = min(size, self.rows - start)
                    data = member.read(count * self.row_bytes)
                    if len(data) != count * self.row_bytes:
                        raise UsageError(f"{self.what} is truncated at row {start + len(data) // max(self.row_bytes, 1)}")
                    yield np.frombuffer(data, self.dtype).reshape((count,) + self.row_shape)
        except UsageError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise UsageError(f"{self.what} cannot be read ({type(error).__name__}: {error})") from None

    def close(self) -> None:
        self.archive.close()


class ParquetSource(Source):
    """One column of Parquet files, read in order, each through ``ParquetFile.iter_batches``
    without pre-buffering. Every file's footer is read up front (the row count, and the
    column's type, which every file must share); files are then opened one at a time, so a
    dataset of thousands of files holds one open file and one footer."""

    def __init__(self, flag: str, files: list[Path], key, defaults, *, display: str, numeric: bool = True):
        self.flag, self.files, self.path = flag, files, Path(display)
        self.rows, types, first_type = 0, set(), None
        for path in files:
            with self._opened(path) as handle:
                schema = handle.schema_arrow
                if first_type is None:
                    self.column = pick(flag, self.path, key, defaults, schema.names, "column")
                    first_type = schema.field(self.column).type
                elif self.column not in schema.names:
                    raise UsageError(f"{flag}: {path} has no column {self.column!r} (it has: {', '.join(schema.names)}); "
                                     f"{files[0]} has")
                elif _layout(schema.field(self.column).type) != _layout(first_type):
                    raise UsageError(f"{flag}: {path}:{self.column} is {schema.field(self.column).type}; {files[0]} has "
                                     f"{first_type} (mismatched schemas)")
                types.add(schema.field(self.column).type)
                self.rows += handle.metadata.num_rows
        # files that store the same rows as list and as fixed-size list: read all as lists, so
        # that batches spanning files join (each row's length is still checked)
        self.type = first_type if len(types) == 1 else _variable_lists(first_type)
        if numeric:
            self.row_shape, self.dtype = _arrow_row_layout(flag, f"{self.path}:{self.column}", first_type)
        else:  # an id column: carried along as it is, whatever its type
            self.row_shape, self.dtype = (), None

    def bytes_per_row(self) -> int:
        if None not in self.row_shape:
            return super().bytes_per_row()
        with self._opened(self.files[0]) as handle:  # list lengths unknown: the uncompressed bytes per row
            metadata = handle.metadata
            sizes = [metadata.row_group(g).column(c).total_uncompressed_size
                     for g in range(metadata.num_row_groups) for c in range(metadata.num_columns)
                     if metadata.row_group(g).column(c).path_in_schema.split(".")[0] == self.column]
            return max(1, sum(sizes) // max(1, metadata.num_rows))

    def _read_rows(self, size: int) -> int:
        """Rows per read from the file: at most `_READ_BYTES` of values, joined into batches of
        ``size`` by `rebatched`. pyarrow's reader holds about five times a read's bytes (pages,
        levels, values) and its allocator keeps more: a 4 MiB read of a list column raised the
        peak RSS by 71 MB, a 256 KiB one by 18 MB."""
        return max(1, min(size, _READ_BYTES // self.bytes_per_row()))

    def _opened(self, path):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER, page_checksum_verification=True)
        except Exception as error:  # pyarrow.ArrowInvalid, OSError and friends
            raise UsageError(f"{self.flag}: {path} is not a readable Parquet file ({_reason(error)})") from None

    def arrays(self, size: int):
        start = 0
        for path in self.files:
            with self._opened(path) as handle:
                try:
                    for record_batch in handle.iter_batches(batch_size=self._read_rows(size), columns=[self.column]):
                        start += record_batch.num_rows
                        column = record_batch.column(0)
                        yield column if column.type == self.type else column.cast(self.type)
                except Exception as error:  # a corrupt page or a truncated file surfaces here
                    raise UsageError(f"{self.flag}: {path} could not be read at row {start} ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _variable_lists(kind):
    """``kind`` with every list level a plain list."""
    import pyarrow as pa

    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return pa.list_(_variable_lists(kind.value_type))
    return kind


def _layout(kind) -> tuple:
    """What files of one dataset must agree on: the list depth and the value type (list, large
    list and fixed-size list are all a Parquet LIST; their lengths are checked row by row)."""
    import pyarrow as pa

    depth = 0
    while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        depth, kind = depth + 1, kind.value_type
    return depth, kind


def _arrow_row_layout(flag: str, what: str, kind):
    """(row shape with None for list lengths, numpy dtype of the values) of an Arrow type."""
    import pyarrow as pa

    shape = []
    while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        shape.append(kind.list_size if pa.types.is_fixed_size_list(kind) else None)
        kind = kind.value_type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise UsageError(f"{flag}: {what} has type {kind}; expected numbers or lists of numbers")
    return tuple(shape), np.dtype(kind.to_pandas_dtype())


def parquet_files(flag: str, path_text: str) -> list[Path]:
    """The files of a Parquet file, directory (recursive, hive partitions included) or glob, in
    sorted order; a `UsageError` when there are none."""
    path = Path(path_text)
    if path.is_file():
        return [path]
    if path.is_dir():
        import pyarrow.dataset as ds

        try:
            files = ds.dataset(str(path), format="parquet", partitioning="hive").files
        except Exception as error:
            raise UsageError(f"{flag}: {path} is not a readable Parquet dataset ({_reason(error)})") from None
        files = sorted(Path(f) for f in files)
        if not files:
            raise UsageError(f"{flag}: {path} is a directory without Parquet files")
        return files
    if glob.has_magic(path_text):
        files = sorted(Path(f) for f in glob.glob(path_text, recursive=True) if Path(f).is_file())
        if not files:
            raise UsageError(f"{flag}: {path_text} matches no file")
        return files
    raise UsageError(f"{flag}: {path} is not a file, directory or glob")


def split_name(text) -> tuple[str, str]:
    """``PATH:NAME`` as (PATH, NAME); a PATH that exists, or has no colon in its last part, is
    taken whole (NAME empty)."""
    text = str(text)
    if os.path.exists(text) or ":" not in Path(text).name:
        return text, ""
    path, _, name = text.rpartition(":")
    return path, name


def input_paths(text) -> list[str]:
    """The files and directories ``PATH[:NAME]`` reads (for checking outputs against inputs)."""
    path, _ = split_name(text)
    if glob.has_magic(path) and not os.path.exists(path):
        return sorted(glob.glob(path, recursive=True))
    return [path]


def open_source(text, flag: str, defaults, *, numeric: bool = True) -> Source:
    """``PATH`` or ``PATH:NAME`` as a source of rows (see the module docstring); with
    ``numeric`` False, a Parquet column of any type (ids)."""
    path_text, key = split_name(text)
    path = Path(path_text)
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".npy":
        if key:
            raise UsageError(f"{flag}: a .npy file holds one array; drop ':{key}'")
        return NpySource(flag, path)
    if path.is_file() and suffix == ".npz":
        return NpzSource(flag, path, key or None, defaults)
    if path.is_dir() or glob.has_magic(path_text) or (path.is_file() and suffix in PARQUET_SUFFIXES):
        return ParquetSource(flag, parquet_files(flag, path_text), key or None, defaults, display=path_text,
                             numeric=numeric)
    if not path.exists():
        raise UsageError(f"{flag}: {path} is not a file")
    raise UsageError(f"{flag}: {path}: expected a .npy, .npz or .parquet file, or a directory or glob of Parquet files")


def pick(flag, path, key, defaults, names, what) -> str:
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
