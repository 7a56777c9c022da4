"""``eval --engine spark``: ``spark.read.parquet`` -> ``mapInArrow`` (`loss_function`, one ONNX
Runtime session per Python worker) -> Parquet; the partial summaries, one per partition, merged
in the driver.

`loss_function` and `loss_schema` are the entry points for a DataFrame of your own::

    from export.engines.spark import loss_function, loss_schema

    df = spark.read.parquet("hdfs:///predictions/")
    losses = df.mapInArrow(loss_function("/models/loss", id_column="image_id"), loss_schema(df, id_column="image_id"))
    losses.write.parquet("hdfs:///losses/")

Workers import focalgraph: install it there (``pip install focalgraph``: no TensorFlow needed),
and point ``PYSPARK_PYTHON`` at that interpreter.
"""

from __future__ import annotations

import os
import sys

from export.engines import SUMMARY_COLUMN, LossJob, check_reachable, partials_of, with_partial
from export.extras import require
from export.quiet import silenced_stderr


def loss_function(artifact, *, provider: str = "auto", threads: int | None = 1, predictions=None, labels=None,
                  weights=None, id_column=None, top_k: int = 0, summary: bool = False):
    """A ``mapInArrow`` function: Arrow record batches of a partition in, record batches of
    ``id_column`` (if given) and ``loss`` out, with one `LossSession` per Python worker (kept
    across tasks). Spark hands fixed-size lists over as variable lists: each row's length is
    checked. ``threads``: ONNX Runtime's intra-op threads (match ``spark.task.cpus``). With
    ``summary``, the partition's last batch also carries the partition's partial summary
    (`export.engines.SUMMARY_COLUMN`)."""
    job = LossJob(os.path.abspath(artifact), provider, threads, predictions, labels, weights, id_column, top_k)

    def losses(batches):
        evaluator = job.evaluator()
        merged, pending = None, None
        for batch in batches:
            result, partial = evaluator.evaluate(batch, first_row=None)
            if not summary:
                yield result
                continue
            if partial is not None:
                merged = partial if merged is None else merged.absorb(partial)
            if pending is not None:
                yield with_partial(pending, None)
            pending = result
        if pending is not None:
            yield with_partial(pending, merged)

    return losses


def loss_schema(df, *, id_column=None, weights=None, summary: bool = False):
    """The Spark schema `loss_function`'s batches have, for ``df.mapInArrow(function, schema)``:
    the id column's own type, and ``loss`` as float (double with ``weights``)."""
    from pyspark.sql.types import BinaryType, DoubleType, FloatType, StructField, StructType

    fields = [df.schema[id_column]] if id_column is not None else []
    fields.append(StructField("loss", DoubleType() if weights is not None else FloatType(), False))
    if summary:
        fields.append(StructField(SUMMARY_COLUMN, BinaryType(), True))
    return StructType(fields)


def run(job: LossJob, files: list[str], destination, *, batch_size: int, master: str | None) -> list:
    """Map ``job`` over ``files`` on Spark; write the losses under ``destination`` (None: none);
    return the partial summaries."""
    require("pyspark", "--engine spark")
    from pyspark.sql import SparkSession

    if master is not None:
        check_reachable("--master", master)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this interpreter, with focalgraph
    with silenced_stderr():
        session = SparkSession.getActiveSession()
        started = session is None
        if started:
            session = _start(master or "local[*]")
        try:
            return _job(session, job, files, destination, batch_size)
        finally:
            if started:
                session.stop()


def _start(master: str):
    from pyspark.sql import SparkSession

    try:
        session = (SparkSession.builder.master(master).appName("focalgraph-eval")
                   .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                   .getOrCreate())
    except Exception as error:  # no Java runtime, a master that refuses us, ...
        from export.errors import UsageError

        raise UsageError(f"--master: cannot start Spark on {master} ({str(error).strip().splitlines()[0]})") from None
    session.sparkContext.setLogLevel("ERROR")
    return session


def _job(session, job: LossJob, files, destination, batch_size: int) -> list:
    from pyspark import StorageLevel
    from pyspark.sql import functions

    session.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    columns = list(dict.fromkeys(c for c in (job.predictions, job.labels, job.weights, job.id_column) if c is not None))
    df = session.read.parquet(*files).select(*columns)
    threads = int(session.conf.get("spark.task.cpus", "1"))
    job = LossJob(job.artifact, job.provider, threads, job.predictions, job.labels, job.weights, job.id_column, job.top_k)
    function = loss_function(job.artifact, provider=job.provider, threads=job.threads, predictions=job.predictions,
                             labels=job.labels, weights=job.weights, id_column=job.id_column, top_k=job.top_k,
                             summary=True)
    mapped = df.mapInArrow(function, loss_schema(df, id_column=job.id_column, weights=job.weights, summary=True))
    summaries = mapped.where(functions.col(SUMMARY_COLUMN).isNotNull()).select(SUMMARY_COLUMN)
    if destination is None:
        return partials_of_rows(summaries.collect())
    # kept after the write, so collecting the summaries does not run ONNX Runtime a second time
    mapped = mapped.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        mapped.drop(SUMMARY_COLUMN).write.parquet(str(destination))
        return partials_of_rows(mapped.where(functions.col(SUMMARY_COLUMN).isNotNull()).select(SUMMARY_COLUMN).collect())
    finally:
        mapped.unpersist()


def partials_of_rows(rows) -> list:
    import pyarrow as pa

    return partials_of(pa.array([bytes(row[0]) for row in rows], pa.binary()))
