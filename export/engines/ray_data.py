"""``eval --engine ray``: Ray Data's ``read_parquet`` -> ``map_batches`` (`RayLossMapper`, one
ONNX Runtime session per actor) -> a Parquet datasink that also hands the partial summaries back
to the driver.

`RayLossMapper` is the entry point for a Dataset of your own::

    import ray
    from export.engines.ray_data import RayLossMapper

    ds = ray.data.read_parquet("s3://bucket/predictions/")
    losses = ds.map_batches(RayLossMapper, fn_constructor_kwargs={"artifact": "/models/loss", "id_column": "image_id"},
                            batch_format="pyarrow", concurrency=4, num_cpus=1)
    losses.write_parquet("s3://bucket/losses/")

Workers import focalgraph: install it there (``pip install focalgraph``: no TensorFlow needed).
"""

from __future__ import annotations

import os
import uuid

from export.engines import SUMMARY_COLUMN, LossJob, check_reachable, partials_of
from export.extras import require
from export.quiet import silenced_stderr


class RayLossMapper:
    """A ``map_batches`` callable class: one `LossSession` per actor, Arrow tables in
    (``batch_format="pyarrow"``), a table of ``id_column`` (if given) and ``loss`` out.

    ``artifact``: a loss artifact directory or ``model.onnx`` every worker can read;
    ``predictions``/``labels``/``weights``/``id_column``: column names (default: the loss's
    input names); ``threads``: ONNX Runtime's intra-op threads (Ray sets OMP_NUM_THREADS=1,
    which ONNX Runtime ignores; match it to the actor's ``num_cpus``). With ``summary``, each
    output table also carries the batch's partial summary (`export.engines.SUMMARY_COLUMN`).
    """

    def __init__(self, artifact, *, provider: str = "auto", threads: int | None = 1, predictions=None, labels=None,
                 weights=None, id_column=None, top_k: int = 0, summary: bool = False):
        self.job = LossJob(os.path.abspath(artifact), provider, threads, predictions, labels, weights, id_column, top_k)
        self.summary = summary
        self.job.evaluator()  # the session opens in the actor's constructor, once

    def __call__(self, table):
        import pyarrow as pa

        return pa.Table.from_batches([self.job.losses(table, with_summary=self.summary)])


class _LossDatasink:
    """Writes each write task's blocks to one Parquet file (without the summary column) and
    returns the task's merged partial summary, which ``on_write_complete`` collects in the
    driver: the losses are written and the summaries gathered in one pass over the data."""

    def __init__(self, directory):
        self.directory, self.partials = directory, []

    def write(self, blocks, ctx):
        import pyarrow.parquet as pq

        from export.summary import merge_all

        partials, writer = [], None
        try:
            for block in blocks:
                if SUMMARY_COLUMN not in block.column_names:
                    # a block of zero rows reaches the sink as read, never mapped: nothing to add
                    if block.num_rows:
                        raise RuntimeError(f"a block of {block.num_rows} rows reached the writer without its losses")
                    continue
                partials += partials_of(block.column(SUMMARY_COLUMN))
                table = block.drop_columns([SUMMARY_COLUMN])
                if self.directory is not None and table.num_rows:
                    if writer is None:
                        name = f"part-{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}.parquet"
                        writer = pq.ParquetWriter(os.path.join(self.directory, name), table.schema)
                    writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
        merged = merge_all(partials)
        return None if merged is None else merged.to_bytes()

    def on_write_complete(self, write_result):
        from export.summary import LossSummary

        self.partials = [LossSummary.from_bytes(value) for value in write_result.write_returns if value is not None]


def run(job: LossJob, files: list[str], destination, *, batch_size: int, address: str | None) -> list:
    """Map ``job`` over ``files`` on Ray; write the losses under ``destination`` (None: none);
    return the partial summaries."""
    ray = require("ray", "--engine ray")
    require("ray.data", "--engine ray")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable("--address", address)
    started = not ray.is_initialized()
    with silenced_stderr():
        if started:
            _start(ray, address)
        try:
            return _job(ray, job, files, destination, batch_size, local=not address)
        finally:
            if started:
                ray.shutdown()


def _start(ray, address) -> None:
    import logging

    if address:
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except ConnectionError as error:
            from export.errors import UsageError

            raise UsageError(f"--address: cannot join the Ray cluster at {address} ({error})") from None
        return
    # Two CPUs at least, whatever the machine says: the actors take one CPU each and leave one to
    # the read and write tasks (two 1-CPU actors on 2 CPUs starved the reads and hung for ever).
    ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)


def _job(ray, job: LossJob, files, destination, batch_size: int, *, local: bool) -> list:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = job.provider == "cuda" or (job.provider == "auto" and gpus > 0)
    actors = max(1, cpus - 1)
    if use_gpu:
        actors = max(1, gpus)
    dataset = ray.data.read_parquet(files, columns=_columns(job), partitioning=None)
    mapped = dataset.map_batches(
        RayLossMapper, fn_constructor_args=(job.artifact,),
        fn_constructor_kwargs={"provider": job.provider, "threads": job.threads, "predictions": job.predictions,
                               "labels": job.labels, "weights": job.weights, "id_column": job.id_column,
                               "top_k": job.top_k, "summary": True},
        batch_size=batch_size, batch_format="pyarrow", num_cpus=job.threads or 1, num_gpus=1 if use_gpu else 0,
        concurrency=actors if local else (1, actors))
    if destination is not None:
        os.makedirs(destination)
    sink = _datasink(None if destination is None else str(destination))
    mapped.write_datasink(sink)
    return sink.partials


def _columns(job: LossJob) -> list[str]:
    return list(dict.fromkeys(c for c in (job.predictions, job.labels, job.weights, job.id_column) if c is not None))


def _datasink(directory):
    """A `_LossDatasink` that is a ``ray.data.Datasink`` (the subclass is made here, so that
    importing this module does not import Ray)."""
    from ray.data import Datasink

    class LossDatasink(_LossDatasink, Datasink):
        pass

    return LossDatasink(directory)
