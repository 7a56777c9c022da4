"""ONNX Runtime time of the unreduced loss with the class axis last (axis -1) against channels-first
(axis 1) on the same (N, C, H, W) numbers: minima over 15 interleaved rounds.

    PYTHONPATH=$PWD .venv/bin/python examples/axis_cost.py sparse_softmax|softmax|sigmoid
"""
import sys, time
import numpy as np
from export.onnx_conversion import convert
from export.runtime import open_session
from focal_graph.spec import FocalSpec

variant = sys.argv[1]
shape = (8, 19, 128, 128)  # N, C, H, W: 2.5M elements
rng = np.random.default_rng(0)
first = (rng.normal(size=shape) * 3).astype(np.float32)
last = np.ascontiguousarray(np.moveaxis(first, 1, -1))
sessions = {}
for axis in (-1, 1):
    spec = FocalSpec(variant=variant, rank=4, axis=axis)
    sessions[axis] = open_session(convert(spec).SerializeToString(), "cpu").session
if variant == "sparse_softmax":
    labels = rng.integers(0, 19, size=(8, 128, 128))
    feeds = {-1: {"labels": labels, "logits": last}, 1: {"labels": labels, "logits": first}}
else:
    targets = (rng.uniform(size=shape) < 0.1).astype(np.float32)
    feeds = {-1: {"targets": np.ascontiguousarray(np.moveaxis(targets, 1, -1)), "logits": last}, 1: {"targets": targets, "logits": first}}
times = {-1: [], 1: []}
for _ in range(15):
    for axis in (-1, 1):
        start = time.perf_counter()
        sessions[axis].run(["loss"], feeds[axis])
        times[axis].append(time.perf_counter() - start)
print(variant, {axis: f"min {min(t)*1e3:.1f} ms, median {np.median(t)*1e3:.1f} ms" for axis, t in times.items()})
