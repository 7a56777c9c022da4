"""`focalgraph eval` keeps its peak resident memory under 300 MB whatever the input's size and
format, with and without --out (250 MB inputs here; the bound does not grow with them)."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporting import ROOT, exported
from focal_graph.spec import FocalSpec

LIMIT_MB = 300
N, C = 625_000, 100  # 250 MB of float32 predictions

# Runs eval as the only child of a small wrapper, so the peak RSS reported is eval's alone
# (RUSAGE_CHILDREN of the test process would include every earlier subprocess of the session).
MEASURE = """
import resource, subprocess, sys
code = subprocess.run([sys.executable, "-c", "import sys; from export.cli import main; sys.exit(main(sys.argv[1:]))",
                       *sys.argv[1:]]).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    exported(root / "sparse", FocalSpec(variant="sparse_softmax"), validate=False)
    exported(root / "sigmoid", FocalSpec(variant="sigmoid", alpha=0.25), validate=False)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((N, C), dtype=np.float32)
    labels = rng.integers(0, C, N)
    np.save(root / "x.npy", logits)
    np.save(root / "y.npy", labels)
    # sigmoid: a batch also holds the targets, the (N, C) loss and the per-class keys; 1000
    # classes, so that a batch is bounded by its bytes, not by --batch-size's 4096 rows
    np.save(root / "sigmoid-x.npy", rng.standard_normal((N // 10, 10 * C), dtype=np.float32))
    np.save(root / "sigmoid-targets.npy", (rng.random((N // 10, 10 * C)) < 0.05).astype(np.float32))
    np.savez(root / "stored.npz", logits=logits, labels=labels)
    # 250 MB of zeros in a few hundred kB: a reader that decompresses members whole holds it all
    with zipfile.ZipFile(root / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("logits.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (N, C)})
            block = np.zeros((N // 10, C), np.float32).tobytes()
            for _ in range(10):  # N is a multiple of 10
                member.write(block)
        with archive.open("labels.npy", "w") as member:
            np.lib.format.write_array(member, np.zeros(N, np.int64))
    table = pa.table({"logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.ravel()), C), "labels": labels})
    pq.write_table(table, root / "one-row-group.parquet", row_group_size=N)  # one 250 MB column chunk
    # wide rows: 10,000 classes, where a batch of 4096 rows alone would be 164 MB
    np.save(root / "wide.npy", rng.standard_normal((N // 100, 100 * C), dtype=np.float32))
    np.save(root / "wide-labels.npy", rng.integers(0, 100 * C, N // 100))
    (root / "dataset").mkdir()
    for part in range(5):
        pq.write_table(table.slice(part * N // 5, N // 5), root / "dataset" / f"part-{part}.parquet")
    return root


CASES = {
    "npy, --out .npy": ("x.npy", "y.npy", "out.npy"),
    "npz stored, no --out": ("stored.npz:logits", "stored.npz:labels", None),
    "npy of 10,000 classes, --out .npy": ("wide.npy", "wide-labels.npy", "out.npy"),
    "npz deflated zeros, --out dataset": ("bomb.npz:logits", "bomb.npz:labels", "out"),
    "parquet one row group, --out dataset": ("one-row-group.parquet:logits", "one-row-group.parquet:labels", "out"),
    "parquet dataset, --out .npy": ("dataset:logits", "dataset:labels", "out.npy"),
    "sigmoid npy of 1000 classes, --out .npy": ("sigmoid-x.npy", "sigmoid-targets.npy", "out.npy"),
}


@pytest.mark.parametrize("case", CASES)
def test_peak_memory_stays_under_300_mb(inputs, tmp_path, case):
    predictions, labels, out = CASES[case]
    args = ["eval", inputs / ("sigmoid" if case.startswith("sigmoid") else "sparse"), "--predictions", f"{inputs}/{predictions}", "--labels", f"{inputs}/{labels}",
            "--provider", "cpu"]
    if out is not None:
        args += ["--out", tmp_path / out]
    result = subprocess.run([sys.executable, "-c", MEASURE, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    code, peak_kb = map(int, result.stdout.split()[-2:])
    assert code == 0, result.stderr
    rows = N // 100 if predictions.startswith("wide") else N // 10 if predictions.startswith("sigmoid") else N
    assert f"samples {rows}" in result.stdout
    assert peak_kb / 1024 < LIMIT_MB, f"{case}: peak RSS {peak_kb / 1024:.0f} MB"
    if out is not None:
        assert (tmp_path / out).exists()


@pytest.fixture(scope="module")
def sigmoid_columns(tmp_path_factory):
    """62,500 x 1000 sigmoid rows whose logits, targets and weights are columns of one Parquet
    file in one row group (each column's reader then holds pages of its own)."""
    root = tmp_path_factory.mktemp("sigmoid-columns")
    exported(root / "sigmoid", FocalSpec(variant="sigmoid", alpha=0.25), validate=False)
    exported(root / "weighted", FocalSpec(variant="sigmoid", alpha=0.25, weighted=True), validate=False)
    rng = np.random.default_rng(1)
    rows, classes = N // 10, 10 * C

    def column(values):
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), classes)

    table = pa.table({"logits": column(rng.standard_normal((rows, classes), dtype=np.float32)),
                      "targets": column((rng.random((rows, classes)) < 0.05).astype(np.float32)),
                      "weights": column(rng.random((rows, classes), dtype=np.float32))})
    pq.write_table(table, root / "columns.parquet", row_group_size=rows)
    return root


@pytest.mark.parametrize("weighted", [False, True], ids=["targets", "targets-and-weights"])
def test_sigmoid_columns_of_one_parquet_row_group_stay_under_300_mb(sigmoid_columns, tmp_path, weighted):
    data = sigmoid_columns / "columns.parquet"
    args = ["eval", sigmoid_columns / ("weighted" if weighted else "sigmoid"), "--predictions", f"{data}:logits",
            "--labels", f"{data}:targets", "--provider", "cpu", "--out", tmp_path / "out.npy"]
    if weighted:
        args += ["--weights", f"{data}:weights"]
    result = subprocess.run([sys.executable, "-c", MEASURE, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    code, peak_kb = map(int, result.stdout.split()[-2:])
    assert code == 0, result.stderr
    assert f"samples {N // 10}" in result.stdout
    assert peak_kb / 1024 < LIMIT_MB, f"peak RSS {peak_kb / 1024:.0f} MB"


def test_top_k_at_its_cap_on_625000_rows_stays_under_300_mb(inputs, tmp_path):
    args = ["eval", inputs / "sparse", "--predictions", inputs / "x.npy", "--labels", inputs / "y.npy", "--provider", "cpu",
            "--top-k", "10000", "--summary", tmp_path / "summary.json"]
    result = subprocess.run([sys.executable, "-c", MEASURE, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    code, peak_kb = map(int, result.stdout.split()[-2:])
    assert code == 0, result.stderr
    assert peak_kb / 1024 < LIMIT_MB, f"peak RSS {peak_kb / 1024:.0f} MB"
    hardest = json.loads((tmp_path / "summary.json").read_text())["hardest"]
    assert len(hardest) == 10000 and hardest[0]["loss"] >= hardest[-1]["loss"]
