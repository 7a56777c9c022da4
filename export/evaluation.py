"""``eval``: per-sample losses of files of predictions and labels, with ONNX Runtime alone.

Orchestration only: sources (`export.sources`) -> Arrow batches -> the per-batch function
(`export.batches.BatchEvaluator`, on `LossSession`) -> a sink (`export.sinks`) and the merged
partial summaries (`export.summary`). The engines (``engine="ray"`` or ``"spark"``,
`export.engines`) map the same per-batch function over a Parquet dataset on a cluster and merge
the same partial summaries, so their losses and summary are those of the local run.

Imports numpy, pyarrow, onnxruntime and tqdm; never TensorFlow. Every batch is checked before it
is evaluated: NaN predictions, labels that are not classes of the loss (``ignore_index`` aside),
targets outside [0, 1] are `UsageError` naming the first offending row. Outputs are written
under temporary names and renamed at the end: a failed run leaves no output.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path

import numpy as np

from export import artifact, sinks, sources, writing
from export.batches import BatchEvaluator, check_dtypes, check_rows, sound_predictions
from export.errors import UsageError
from export.runtime import LossSession
from export.summary import LossSummary, format_summary  # noqa: F401  (format_summary: the CLI's formatter)
from export.summary import check_plot_path, plot_per_class, require_matplotlib

DEFAULT_BATCH_SIZE = 4096
DEFAULT_TOP_K = 10
# The hardest rows are kept as Python tuples and printed: --top-k 10**9 on 250,000 rows kept every
# row (228 MB peak, 18.9 s against 132 MB, 1.8 s at 10); at this cap they stay a few MB
MAX_TOP_K = 10_000
ENGINES = ("local", "ray", "spark")


def evaluate(artifact_path, *, predictions, labels, out=None, summary=None, batch_size: int = DEFAULT_BATCH_SIZE,
             provider: str = "auto", top_k: int = DEFAULT_TOP_K, progress: bool = False, id_column: str | None = None,
             weight_column: str | None = None, engine: str = "local", address: str | None = None,
             master: str | None = None, plot=None, weights=None, force: bool = False) -> dict:
    """Evaluate the loss at ``artifact_path`` on ``predictions`` and ``labels`` (sources, see
    `export.sources`); write the per-sample losses to ``out`` (a ``.npy`` file, or a Parquet
    dataset directory when ``out`` has no suffix) and the summary to ``summary`` (JSON) when
    given. ``id_column`` (a column of the predictions' Parquet input) is carried into the output
    and names the hardest rows; ``weight_column`` multiplies each row's loss; ``weights`` (a
    source like ``labels``) is a weighted loss's third input, the unreduced loss's shape per row,
    required by a weighted artifact and refused by any other. ``engine``:
    ``local`` (this process), ``ray`` (Ray Data; ``address`` joins a cluster) or ``spark``
    (``master``, default ``local[*]``), which read Parquet only. ``plot``: a ``.png`` of the
    mean loss per class (`export.summary.plot_per_class`; needs matplotlib, focalgraph[bench]).
    An existing ``out`` (a ``.npy``), ``summary`` or ``plot`` is replaced only with ``force``,
    otherwise `UsageError` (docs/outputs.md); an existing dataset directory never is.

    Returns the summary: ``count``, ``sum``, ``mean`` (over samples), ``mean_per_position``,
    ``per_class`` (count, sum and mean loss per class over the loss's positions, see
    `LossSummary`), ``hardest`` (the ``top_k`` largest per-sample losses and their rows or ids)
    and the provider that ran. For a weighted artifact the means over positions are its own
    ``sum(w loss) / sum(w)``, and ``weight_sum`` and ``weights_enter`` are added (`LossSummary`)."""
    _check_options(batch_size=batch_size, top_k=top_k, engine=engine, address=address, master=master)
    check_outputs(artifact_path, out, summary, predictions, labels, plot, weights, force=force)
    if plot is not None:
        require_matplotlib()  # a missing extra is refused before the run, with nothing written
    session = LossSession(artifact_path, provider, threads=compute_threads(artifact_path) if engine == "local" else None)
    if session.spec is None:
        raise UsageError(f"{artifact_path}: an ONNX file without focalgraph's spec in its metadata")
    if bool(session.spec.weighted) != (weights is not None):  # None for presets, which take no weights
        raise UsageError("--weights: " + ("the loss is weighted (exported with --weighted); give its weights, "
                                          "the loss's shape per row" if weights is None else
                                          "this loss takes no weights (export it with --weighted)"))
    if weights is not None and engine != "local":
        raise UsageError(f"--weights: read by the local engine only, not {engine}")
    if engine == "local":
        partial = _evaluate_locally(session, artifact_path, predictions, labels, out, batch_size=batch_size, top_k=top_k,
                                    progress=progress, id_column=id_column, weight_column=weight_column,
                                    summary_path=summary, weights=weights, force=force)
    else:
        from export import engines

        partial = engines.run(engine, session, predictions=predictions, labels=labels, out=out, batch_size=batch_size,
                              top_k=top_k, id_column=id_column, weight_column=weight_column, address=address,
                              master=master, summary_path=summary, force=force)
    if plot is not None:
        writing.write_atomically("--plot", plot, plot_per_class(partial), force=force)
    return partial


def compute_threads(artifact_path) -> int | None:
    """ONNX Runtime's intra-op threads for the local engine. A softmax loss costs ONNX Runtime
    about as much as reading and checking its batch, so it gets one thread per core but one, which
    the reader thread takes (it reads and checks the next batch meanwhile): on the 2-core machine
    eval of a 1 GiB .npy (sparse) took 0.96 s with one thread, 1.11 s with ONNX Runtime's default
    of two (minima of 7 interleaved cold runs, load 1.3 to 1.6). An element-wise (sigmoid) loss
    costs ONNX Runtime twenty times more per element, and keeps the default (None: every core):
    eval of 32768 x 1000 sigmoid rows took 2.02 s with two threads, 2.23 s with one (minima of
    3). A bare .onnx file, or an artifact whose spec cannot be read, keeps the default too."""
    path = Path(artifact_path)
    try:
        spec = artifact.read_spec(path) if path.is_dir() else None
    except Exception:  # noqa: BLE001  (LossSession reports what is wrong with the artifact)
        spec = None
    if spec is None or spec.multi_label:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def _check_options(*, batch_size, top_k, engine, address, master) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch-size: expected an integer >= 1, got {batch_size!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= MAX_TOP_K:
        raise UsageError(f"--top-k: expected an integer from 0 to {MAX_TOP_K}, got {top_k!r}")
    if engine not in ENGINES:
        raise UsageError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if address is not None and engine != "ray":
        raise UsageError(f"--address: joins a Ray cluster; it needs --engine ray, not {engine}")
    if master is not None and engine != "spark":
        raise UsageError(f"--master: names a Spark master; it needs --engine spark, not {engine}")


def result_dict(session, partial: LossSummary | None, *, artifact_path, predictions, labels, engine: str,
                row_shape=None) -> dict:
    """The summary JSON of a run: what ran, then `LossSummary.as_dict`. ``partial`` is None when
    there were no rows: the summary is then empty, of ``row_shape`` where the files tell it."""
    if partial is None:
        shape = row_shape if row_shape and None not in row_shape else (session.spec.num_classes or 1,) * (session.spec.rank - 1)
        partial = LossSummary(session.spec, shape, 0)
    return {
        "artifact": str(artifact_path),
        "spec": session.spec.name,
        "predictions": str(predictions),
        "labels": str(labels),
        "engine": engine,
        "onnxruntime": session.describe(),
        **partial.as_dict(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _evaluate_locally(session, artifact_path, predictions, labels, out, *, batch_size, top_k, progress, id_column, weight_column,
                      summary_path, weights=None, force: bool = False) -> dict:
    import pyarrow as pa

    spec = session.spec
    true_name, prediction_name = spec.input_names
    evaluator = BatchEvaluator(session, predictions="--predictions", labels="--labels",
                               weights=None if weight_column is None else "--weight-column",
                               id_column=None if id_column is None else id_column, top_k=top_k,
                               loss_weights=None if weights is None else "--weights")
    with contextlib.ExitStack() as stack:
        predicted = stack.enter_context(sources.open_source(predictions, "--predictions", (prediction_name, "predictions")))
        truth = stack.enter_context(sources.open_source(labels, "--labels", (true_name, "labels", "targets")))
        extra = {}
        if weights is not None:
            extra["--weights"] = stack.enter_context(sources.open_source(weights, "--weights", ("weights",)))
        for flag, name in (("--id-column", id_column), ("--weight-column", weight_column)):
            if name is not None:
                if not isinstance(predicted, sources.ParquetSource):
                    raise UsageError(f"{flag}: a column of the predictions' Parquet input; {predictions} is not Parquet")
                extra[flag] = stack.enter_context(sources.open_source(f"{sources.split_name(predictions)[0]}:{name}",
                                                                      flag, (), numeric=flag != "--id-column"))
        check_sources(spec, predicted, truth, extra)
        batch_size = sources.rows_per_batch(batch_size, predicted, element_wise=spec.multi_label,
                                            alongside=[truth, *(extra[flag] for flag in ("--weights",) if flag in extra)])
        dtype = np.float64 if weight_column is not None else np.dtype(spec.dtype)
        sink = staged_summary = None
        try:
            # inside the try: an interrupt (SIGINT, SIGTERM, SIGHUP) just after the temporary file
            # appears still discards it
            if out is not None:
                sink = sinks.open_sink(out, predicted.rows, dtype, force=force)
            bar = _progress_bar(predicted.rows, progress)
            streams = [sources.rebatched(predicted.arrays(batch_size), batch_size),
                       sources.rebatched(truth.arrays(batch_size), batch_size)]
            streams += [sources.rebatched(source.arrays(batch_size), batch_size) for source in extra.values()]
            names = ["--predictions", "--labels"] + [id_column if flag == "--id-column" else flag for flag in extra]
            merged, row_shape, start = None, None, 0
            # the reader thread also checks each batch's predictions (one read, while ONNX
            # Runtime computes the batch before); the main thread redoes only what it could not
            batches = stack.enter_context(prefetched(
                (pa.RecordBatch.from_arrays(list(columns), names), sound_predictions(spec, columns[0]))
                for columns in zip(*streams)))
            for batch, sound in batches:
                losses, partial = evaluator.evaluate(batch, start, sound=sound)
                if partial is not None:
                    if row_shape is None:
                        row_shape = partial.row_shape
                    elif partial.row_shape != row_shape:
                        raise UsageError(f"--predictions: rows from row {start} have shape {partial.row_shape}; "
                                         f"earlier rows have {row_shape} (ragged rows)")
                    merged = partial if merged is None else merged.absorb(partial)
                if sink is not None:
                    sink.write(losses)
                start += batch.num_rows
                bar.update(batch.num_rows)
            bar.close()
            if start != predicted.rows:
                raise UsageError(f"--predictions: {start} rows read; its metadata says {predicted.rows}")
            result = result_dict(session, merged, artifact_path=artifact_path, predictions=predictions, labels=labels,
                                 engine="local", row_shape=predicted.row_shape)
            if summary_path is not None:  # both files are complete before either is renamed into place
                staged_summary = writing.StagedFiles(force=force)
                staged_summary.write("--summary", summary_path, artifact.json_bytes(result))
            if sink is not None:
                sink.commit()
            if staged_summary is not None:
                staged_summary.commit()
        except BaseException:
            if sink is not None:
                sink.discard()
            if staged_summary is not None:
                staged_summary.discard()
            raise
    return result


@contextlib.contextmanager
def prefetched(items, depth: int = 2):
    """``items`` (an iterator) read ahead by a background thread, at most ``depth`` items ahead,
    so that reading the next batch overlaps the loss of this one (ONNX Runtime and numpy's
    copies release the GIL). The reader's exceptions are raised here, in order; leaving the
    block early stops the reader and waits for it, so nothing reads a source after it closes."""
    import queue
    import threading

    handoff = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            put((None, error))
            return
        put((done, None))

    def consume():
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item

    reader = threading.Thread(target=read, name="focalgraph-eval-reader", daemon=True)
    reader.start()
    try:
        yield consume()
    finally:
        stop.set()
        reader.join()


def check_sources(spec, predicted, truth, extra) -> None:
    """What the files' headers and schemas tell, before any row is read."""
    if truth.rows != predicted.rows:
        raise UsageError(f"--labels: {truth.rows} rows; --predictions has {predicted.rows}")
    for flag, source in extra.items():
        if source.rows != predicted.rows:
            raise UsageError(f"{flag}: {source.rows} rows; --predictions has {predicted.rows}")
    if None not in predicted.row_shape and None not in truth.row_shape:
        check_rows(spec, predicted.row_shape, truth.row_shape)
    check_dtypes(spec, predicted.dtype, truth.dtype)


def check_outputs(artifact_path, out, summary, predictions, labels, plot=None, weights=None, *,
                  force: bool = False) -> None:
    """The one output check (`export.writing.check_outputs`: realpath, never inside or equal to
    an input or an artifact, an existing file replaced only with ``force``), for ``--out`` (a .npy
    file, or a new Parquet dataset directory, never replaced: nothing proves eval wrote one),
    ``--summary`` and ``--plot`` (a .png)."""
    inputs = {"ARTIFACT": artifact_path, "--predictions": sources.input_paths(predictions),
              "--labels": sources.input_paths(labels)}
    if weights is not None:
        inputs["--weights"] = sources.input_paths(weights)
    if out is not None:
        # a name without a suffix is a dataset directory, unless it names an existing non-directory
        # (/dev/null), which the file rules refuse as not a regular file
        directory = sinks.is_dataset_path(out) and not (os.path.lexists(out) and not os.path.isdir(out))
        if directory and os.path.lexists(out):
            sinks.check_destination(out)  # eval never replaces a directory, even with --force
        writing.check_outputs({"--out": out}, inputs, directory=directory, force=force)
        sinks.check_destination(out)
    if summary is not None:
        checked = writing.check_outputs({"--summary": summary}, inputs, force=force)["--summary"]
        if out is not None and checked == Path(os.path.realpath(out)):
            raise UsageError(f"--summary: {summary} is also --out; write outputs to files of their own")
    if plot is not None:
        checked = writing.check_outputs({"--plot": plot}, inputs, force=force)["--plot"]
        for flag, other in (("--out", out), ("--summary", summary)):
            if other is not None and checked == Path(os.path.realpath(other)):
                raise UsageError(f"--plot: {plot} is also {flag}; write outputs to files of their own")
        check_plot_path(plot)


def _progress_bar(rows: int, enabled: bool):
    if not enabled:  # tqdm's import alone took 0.09 s
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=rows, unit="rows", unit_scale=True, leave=False)


class _NoProgress:
    def update(self, rows: int) -> None:
        pass

    def close(self) -> None:
        pass
