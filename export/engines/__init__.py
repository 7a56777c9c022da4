"""``eval --engine ray|spark``: the per-batch function mapped over a Parquet dataset by an engine
the user already runs, partial summaries merged in the driver.

The job is a shuffle-free map: each worker opens one `LossSession` (one ONNX Runtime session per
Ray actor or Spark Python worker), turns each Arrow batch into its losses with
`export.batches.BatchEvaluator`, and passes on the batch's `LossSummary` in one extra binary
column (null but on one row per batch or partition); the driver merges those exactly, so the
summary is the local run's. The losses are written as a Parquet dataset.

Before an engine starts, the driver runs the local run's checks on the dataset's footers (every
file has the columns, with one layout; rows and dtypes agree), so bad input is refused in one
line without starting a cluster. Errors raised in workers come back as the same one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from export import artifact, sinks, sources, writing
from export.errors import FocalgraphError, UsageError
from export.summary import LossSummary, merge_all

SUMMARY_COLUMN = "focalgraph_summary"


@dataclass(frozen=True)
class LossJob:
    """What every worker needs to evaluate batches: picklable, and cheap to ship. ``evaluator()``
    opens the `LossSession` once per process and keeps it."""

    artifact: str
    provider: str = "auto"
    threads: int | None = 1
    predictions: str | None = None
    labels: str | None = None
    weights: str | None = None
    id_column: str | None = None
    top_k: int = 0

    def evaluator(self):
        from export.batches import BatchEvaluator
        from export.runtime import LossSession

        if self not in _EVALUATORS:
            session = LossSession(self.artifact, self.provider, self.threads)
            _EVALUATORS[self] = BatchEvaluator(session, predictions=self.predictions, labels=self.labels,
                                               weights=self.weights, id_column=self.id_column, top_k=self.top_k)
        return _EVALUATORS[self]

    def losses(self, batch, *, with_summary: bool):
        """``batch`` (a RecordBatch or Table) as a RecordBatch of losses (and the id); with
        ``with_summary``, also the `SUMMARY_COLUMN` holding the batch's partial summary."""
        losses, partial = self.evaluator().evaluate(batch, first_row=None)
        return with_partial(losses, partial) if with_summary else losses


_EVALUATORS: dict = {}  # one per job and process: a worker reuses its session across batches and tasks


def with_partial(losses, partial: LossSummary | None):
    """``losses`` with the `SUMMARY_COLUMN`: ``partial`` in the last row, null elsewhere."""
    import pyarrow as pa

    values = [None] * losses.num_rows
    if values and partial is not None:
        values[-1] = partial.to_bytes()
    return losses.append_column(SUMMARY_COLUMN, pa.array(values, pa.binary()))


def partials_of(column) -> list[LossSummary]:
    return [LossSummary.from_bytes(value) for value in column.to_pylist() if value is not None]


def run(engine: str, session, *, predictions, labels, out, batch_size: int, top_k: int, id_column, weight_column,
        address, master, summary_path, force: bool = False) -> dict:
    """Evaluate with ``engine`` (``ray`` or ``spark``); returns the summary (see `evaluate`)."""
    from export.evaluation import result_dict

    requested_batch_size = batch_size
    files, columns, batch_size, row_shape = _checked_dataset(engine, session.spec, predictions, labels, id_column,
                                                             weight_column, batch_size)
    if top_k and id_column is None:
        raise UsageError(f"--top-k: --engine {engine} names the hardest rows by --id-column (a distributed read has "
                         "no global row number); pass --id-column, or --top-k 0")
    if out is not None and not sinks.is_dataset_path(out):
        raise UsageError(f"--out: --engine {engine} writes a Parquet dataset; name a directory without a suffix")
    job = LossJob(str(Path(session.path).resolve()), session.runtime.requested, 1, columns["--predictions"],
                  columns["--labels"], columns.get("--weight-column"), id_column, top_k)
    stage = None
    if out is not None:
        out = Path(os.path.abspath(out))
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staged_summary = None
    try:
        destination = None if stage is None else stage / "losses"
        if engine == "ray":
            from export.engines import ray_data

            partials = ray_data.run(job, files, destination, batch_size=batch_size, address=address)
        else:
            from export.engines import spark

            partials = spark.run(job, files, destination, batch_size=batch_size, master=master)
        merged = merge_all(partials)
        result = result_dict(session, merged, artifact_path=session.path, predictions=predictions, labels=labels,
                             engine=engine, row_shape=row_shape)
        if summary_path is not None:
            staged_summary = writing.StagedFiles(force=force)
            staged_summary.write("--summary", summary_path, artifact.json_bytes(result))
        if stage is not None:
            if out.exists():  # appeared while the job ran: never replace what we did not write
                raise UsageError(f"--out: {out} appeared while eval ran; the losses were not written")
            os.replace(destination, out)
        if staged_summary is not None:
            staged_summary.commit()
    except BaseException as error:
        if staged_summary is not None:
            staged_summary.discard()
        user_error = worker_error(error)
        if isinstance(user_error, UsageError) and _ROW.search(str(user_error)):
            # a worker numbers rows within its batch and names columns, not flags: the local
            # checks over the same files name the flag and the row in the whole dataset
            user_error = _located(session, predictions, labels, id_column, weight_column,
                                  requested_batch_size) or user_error
        if user_error is not None and user_error is not error:
            raise user_error from None
        raise
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    return result


_ROW = re.compile(r"\brows? \d+")


def _located(session, predictions, labels, id_column, weight_column, batch_size) -> UsageError | None:
    """The local engine's error on the same dataset (the first bad row, numbered in the whole
    dataset, and its flag), or None if the local checks pass. Only on the error path: it reads
    the files again, up to that row."""
    from export.evaluation import _evaluate_locally

    try:
        _evaluate_locally(session, session.path, predictions, labels, None, batch_size=batch_size, top_k=0,
                          progress=False, id_column=id_column, weight_column=weight_column, summary_path=None)
    except UsageError as error:
        return error
    return None


def _checked_dataset(engine, spec, predictions, labels, id_column, weight_column, batch_size):
    """The dataset's files, the column names, the rows per batch and the row shape the footers
    tell, after the local run's checks on its footers."""
    from export.evaluation import check_sources

    prediction_path, _ = sources.split_name(predictions)
    label_path, _ = sources.split_name(labels)
    if prediction_path != label_path:
        raise UsageError(f"--labels: --engine {engine} reads one Parquet dataset; name the labels as a column of "
                         f"it ({prediction_path}:COLUMN)")
    if Path(prediction_path).is_file() and Path(prediction_path).suffix.lower() not in sources.PARQUET_SUFFIXES:
        raise UsageError(f"--predictions: --engine {engine} reads Parquet (a file, directory or glob); "
                         f"{prediction_path} is not")
    files = sources.parquet_files("--predictions", prediction_path)
    true_name, prediction_name = spec.input_names
    with contextlib.ExitStack() as stack:
        predicted = stack.enter_context(sources.open_source(predictions, "--predictions", (prediction_name, "predictions")))
        truth = stack.enter_context(sources.open_source(labels, "--labels", (true_name, "labels", "targets")))
        extra = {flag: stack.enter_context(sources.open_source(f"{prediction_path}:{name}", flag, (),
                                                               numeric=flag != "--id-column"))
                 for flag, name in (("--id-column", id_column), ("--weight-column", weight_column)) if name is not None}
        check_sources(spec, predicted, truth, extra)
        columns = {"--predictions": predicted.column, "--labels": truth.column}
        columns.update({flag: source.column for flag, source in extra.items()})
        batch_size = sources.rows_per_batch(batch_size, predicted, element_wise=spec.multi_label)
        row_shape = predicted.row_shape
    return [str(f) for f in files], columns, batch_size, row_shape


def check_reachable(flag: str, address: str) -> None:
    """A ``host:port`` address (``ray://``, ``spark://`` or bare) must accept a TCP connection:
    engines otherwise retry for minutes before they give up."""
    match = re.fullmatch(r"(?:[a-z]+://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    if match is None:
        return  # "auto", "local[*]", "yarn", ...: the engine resolves these itself
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as error:
        raise UsageError(f"{flag}: cannot reach {address} ({error.strerror or error})") from None


_WORKER_ERROR = re.compile(r"export\.errors\.(UsageError|ArtifactError|ProviderError|MissingExtra): (.+)")


def worker_error(error: BaseException) -> FocalgraphError | None:
    """The focalgraph error a worker raised, from an engine's wrapping of it (Ray chains the
    exception; Spark hands back its traceback as text); None if there is none."""
    seen, pending = set(), [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, FocalgraphError) and type(current).__module__ == "export.errors":
            return current
        if isinstance(current, FocalgraphError):  # Ray's RayTaskError(UsageError): the message holds a traceback
            pending.append(getattr(current, "cause", None))
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    text = str(error)
    found = _WORKER_ERROR.findall(text)
    if found:
        kind, message = found[-1]
        from export import errors

        return getattr(errors, kind)(message.strip())
    return None
