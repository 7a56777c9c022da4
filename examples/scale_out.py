"""The measurements behind docs/scale-out.md: a dataset, a plain loop, and a meter.

    python examples/scale_out.py dataset DIR [--rows 2000000] [--classes 100] [--files 16]
    python examples/scale_out.py plain DIR ARTIFACT           # the single-process floor
    python examples/scale_out.py measure -- COMMAND ...       # wall time and peak memory of COMMAND

``measure`` samples, every 0.1 s, the resident memory of COMMAND and all its descendants (Ray's
raylet and actors, Spark's JVM and Python workers are descendants when the engine starts
locally) and prints the peak of their sum: shared pages count once per process, so this is an
upper bound on the memory the job needs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_dataset(directory: Path, rows: int, classes: int, files: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_file = rows // files
    for part in range(files):
        logits = rng.standard_normal((per_file, classes), dtype=np.float32) * 3
        labels = rng.integers(0, classes, per_file)
        ids = np.arange(part * per_file, (part + 1) * per_file)
        table = pa.table({"id": ids, "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.ravel()), classes),
                          "labels": labels})
        pq.write_table(table, directory / f"part-{part:03d}.parquet")


def plain_loop(directory: Path, artifact: Path) -> None:
    """Read each file a batch at a time and run ONNX Runtime on it: no checks, no output."""
    import onnxruntime
    import pyarrow.parquet as pq

    start = time.perf_counter()
    session = onnxruntime.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    rows, total, in_ort = 0, 0.0, 0.0
    for path in sorted(directory.glob("*.parquet")):
        with pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20) as file:
            for batch in file.iter_batches(batch_size=4096, columns=["logits", "labels"]):
                logits = batch.column(0).flatten().to_numpy().reshape(batch.num_rows, -1)
                labels = batch.column(1).to_numpy()
                began = time.perf_counter()
                (losses,) = session.run(["per_sample"], {"labels": labels, "logits": logits})
                in_ort += time.perf_counter() - began
                total += float(losses.sum(dtype=np.float64))
                rows += batch.num_rows
    print(f"rows {rows}, sum {total:.6f}, {time.perf_counter() - start:.2f} s ({in_ort:.2f} s in ONNX Runtime)")


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as file:
                rss[int(entry)] = int(file.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        total += rss.get(pid, 0)
        pending += children.get(pid, [])
    return total


def measure(command: list[str]) -> int:
    start = time.perf_counter()
    process = subprocess.Popen(command)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(process.pid))
        time.sleep(0.1)
    print(f"exit {process.returncode}, {time.perf_counter() - start:.1f} s, peak memory of the process tree "
          f"{peak / 2**20:.0f} MiB", file=sys.stderr)
    return process.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    dataset = commands.add_parser("dataset")
    dataset.add_argument("directory", type=Path)
    dataset.add_argument("--rows", type=int, default=2_000_000)
    dataset.add_argument("--classes", type=int, default=100)
    dataset.add_argument("--files", type=int, default=16)
    plain = commands.add_parser("plain")
    plain.add_argument("directory", type=Path)
    plain.add_argument("artifact", type=Path)
    meter = commands.add_parser("measure")
    meter.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command == "dataset":
        make_dataset(args.directory, args.rows, args.classes, args.files)
        return 0
    if args.command == "plain":
        plain_loop(args.directory, args.artifact)
        return 0
    return measure([a for a in args.argv if a != "--"] if args.argv[:1] == ["--"] else args.argv)


if __name__ == "__main__":
    sys.exit(main())
