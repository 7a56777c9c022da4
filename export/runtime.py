"""ONNX Runtime sessions: pick the execution provider, record which one ran the nodes.

onnxruntime and numpy only: no TensorFlow, so a serving host with only onnxruntime(-gpu) can use it.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from export.errors import ProviderError, UsageError
from export.quiet import silenced_stderr, verbose

PROVIDERS = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# TF32 rounds float32 matrix inputs to 10 mantissa bits on Ampere and later; off for parity.
CUDA_OPTIONS = {"use_tf32": "0"}


@dataclass
class RuntimeSession:
    """An `onnxruntime.InferenceSession` and what ran it.

    ``provider`` is the execution provider that the session put first and that ran the graph's
    nodes; ``assignment`` counts the nodes each provider was given; ``note`` says why ``auto``
    chose what it chose.
    """

    session: object
    requested: str
    provider: str
    assignment: dict = field(default_factory=dict)
    note: str = ""

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict) -> dict[str, np.ndarray]:
        values = self.session.run(None, {name: inputs[name] for name in self.input_names})
        return dict(zip(self.output_names, values))

    def describe(self) -> dict:
        return {
            "requested": self.requested,
            "provider": self.provider,
            "session_providers": list(self.session.get_providers()),
            "nodes_per_provider": self.assignment,
            "note": self.note,
        }


def check_provider(provider: str) -> str:
    if provider not in PROVIDERS:
        raise UsageError(f"--provider: expected one of {', '.join(PROVIDERS)}, got {provider!r}")
    return provider


def open_session(model, provider: str = "auto", threads: int | None = None, *, spinning: bool = True) -> RuntimeSession:
    """An InferenceSession for ``model`` (a path or serialized bytes) on ``provider``, with
    ``threads`` intra-op threads (None: ONNX Runtime's default, one per core). Ray and Spark set
    OMP_NUM_THREADS=1 for their workers, which ONNX Runtime ignores: engines pass ``threads``.
    ``spinning=False``: the intra-op threads sleep between runs instead of spinning (ONNX
    Runtime's default), for callers that do other work between runs (`LossSession`).

    - ``cpu``: the CPU execution provider.
    - ``cuda``: the CUDA provider with TF32 off, or `ProviderError` when it cannot be created
      (ONNX Runtime itself would silently fall back to the CPU).
    - ``auto``: CUDA when its provider can be created, else the CPU; ``note`` says which and why.
    """
    import onnxruntime

    check_provider(provider)
    model = str(model) if not isinstance(model, bytes) else model
    reason = ""
    if provider in ("auto", "cuda"):
        if CUDA not in onnxruntime.get_available_providers():
            reason = f"this onnxruntime build ({onnxruntime.__version__}) has no {CUDA}"
        else:
            session = _session(onnxruntime, model, [(CUDA, CUDA_OPTIONS), CPU], quiet=True, threads=threads,
                               spinning=spinning)
            if session.get_providers()[0] == CUDA:
                note = "auto: CUDA provider created" if provider == "auto" else ""
                return _described(session, provider, note)
            reason = f"{CUDA} could not be created (no usable GPU, driver or CUDA libraries; --verbose shows ONNX Runtime's log)"
        if provider == "cuda":
            raise ProviderError(f"--provider cuda: {reason}")
    session = _session(onnxruntime, model, [CPU], quiet=False, threads=threads, spinning=spinning)
    return _described(session, provider, f"auto: using the CPU; {reason}" if provider == "auto" else "")


def _session(onnxruntime, model, providers, *, quiet: bool, threads: int | None = None, spinning: bool = True):
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if quiet and not verbose():
        options.log_severity_level = 4  # the CUDA probe's failure is reported by us, in one line
        onnxruntime.set_default_logger_severity(4)
    try:
        if any(p[0] == CUDA for p in providers if isinstance(p, tuple)) and hasattr(onnxruntime, "preload_dlls"):
            with silenced_stderr(), contextlib.redirect_stdout(io.StringIO()):
                onnxruntime.preload_dlls()  # it prints what it cannot find  # CUDA/cuDNN from the nvidia-* pip packages, if present
        with silenced_stderr() if quiet else contextlib.nullcontext():
            return onnxruntime.InferenceSession(model, options, providers=providers)
    finally:
        if quiet and not verbose():
            onnxruntime.set_default_logger_severity(2)


def _described(session, requested: str, note: str) -> RuntimeSession:
    assignment = Counter()
    for subgraph in session.get_provider_graph_assignment_info():
        assignment[subgraph.ep_name] += len(subgraph.get_nodes())
    return RuntimeSession(session, requested, session.get_providers()[0], dict(assignment), note)


class LossSession:
    """A loss artifact (a directory, or a bare ``.onnx`` file) ready to evaluate with ONNX Runtime.

    Imports only onnxruntime and numpy (and focalgraph's numpy-only spec): a host without
    TensorFlow can use it. A directory is checked against its manifest first. ``provider``:
    ``auto`` | ``cpu`` | ``cuda`` (see `open_session`); ``describe()`` says which ran;
    ``threads``: ONNX Runtime's intra-op threads (default: one per core).

    ``session(y_true, predictions)`` returns the per-sample losses, shape (N,) (a weighted loss
    takes ``weights``, the unreduced loss's shape, third); ``forms(...)`` returns every output
    (``loss``, ``per_sample``, ``sum``, ``mean``; a sigmoid loss's ``normalized`` and
    ``per_sample_normalized`` too). ONNX Runtime sessions
    may be run from several threads at once, and nothing here keeps per-call state, so one
    LossSession serves many threads.
    """

    def __init__(self, path, provider: str = "auto", threads: int | None = None):
        from pathlib import Path

        from export import artifact

        path = Path(path)
        if path.is_dir():
            self.spec = artifact.loss_artifact(path, onnx=True)
            model = path / artifact.ONNX
        elif path.is_file():
            artifact.check_self_contained(path)
            model = path
            self.spec = None
        else:
            raise UsageError(f"{path}: no such artifact directory or .onnx file")
        self.path = path
        try:
            # eval checks, sums and writes between runs, and reads the next batch meanwhile:
            # spinning intra-op threads took the cores that work needs (eval of a 1 GiB .npy,
            # sparse, 1.26 s spinning against 1.04 s not; minima of 5 interleaved cold runs)
            self.runtime = open_session(str(model), provider, threads, spinning=False)
        except ProviderError:
            raise
        except Exception as error:  # onnxruntime's InvalidProtobuf, Fail, ...
            raise UsageError(f"{model}: ONNX Runtime cannot load it ({type(error).__name__})") from None
        if self.spec is None:  # a bare model.onnx carries its spec in the metadata
            text = self.runtime.session.get_modelmeta().custom_metadata_map.get(artifact.SPEC_METADATA)
            self.spec = artifact.spec_from_metadata(text, model) if text else None
        names = self.runtime.input_names
        if len(names) not in (2, 3) or "per_sample" not in self.runtime.output_names:
            raise UsageError(f"{model}: not a focalgraph loss (inputs {names}, outputs {self.runtime.output_names})")
        self.input_names = tuple(names)
        from export.consistency import confirm_loss

        confirm_loss(path, self.spec)  # spec.json or the metadata, read by eval's summary, must be this graph's

    @property
    def provider(self) -> str:
        return self.runtime.provider

    def describe(self) -> dict:
        return self.runtime.describe()

    def forms(self, y_true, predictions, weights=None) -> dict:
        return self.runtime.run(self._feed(y_true, predictions, weights))

    def __call__(self, y_true, predictions, weights=None) -> np.ndarray:
        """Per-sample losses (N,), computed in runs of `rows_per_run` rows on the CPU."""
        return self.row_forms(y_true, predictions, weights, ("per_sample",))["per_sample"]

    def row_forms(self, y_true, predictions, weights=None, names=("per_sample", "loss")) -> dict:
        """The outputs with one entry per row (``per_sample``, ``loss``), computed in runs of
        `rows_per_run` rows on the CPU: the same values as one run, bit for bit."""
        feed = self._feed(y_true, predictions, weights)
        rows = len(feed[self.input_names[1]])
        element_wise = self.spec is not None and self.spec.multi_label
        step = rows_per_run(feed[self.input_names[1]].shape, self.provider, element_wise=element_wise)
        names = list(names)
        if rows <= step:
            return dict(zip(names, self.runtime.session.run(names, feed)))
        runs = [self.runtime.session.run(names, {name: value[start:start + step] for name, value in feed.items()})
                for start in range(0, rows, step)]  # row slices of C-contiguous inputs: views, no copy
        return {name: np.concatenate([run[i] for run in runs]) for i, name in enumerate(names)}

    def _feed(self, y_true, predictions, weights=None) -> dict:
        """The inputs as the model's input types, their shapes checked against each other:
        ONNX Runtime does not enforce that the N of the labels is the N of the predictions, and
        it refuses int32 labels or a Python list with a message of its own."""
        y_true = self._converted(0, y_true)
        predictions = self._converted(1, predictions)
        sparse = self.input_names[0] == "labels"
        axis = (self.spec.class_axis if self.spec is not None else predictions.ndim - 1) % max(predictions.ndim, 1)
        without_classes = predictions.shape[:axis] + predictions.shape[axis + 1:]
        expected = without_classes if sparse else predictions.shape
        if y_true.shape != expected:
            raise UsageError(f"{self.input_names[0]}: shape {y_true.shape}; expected {expected} for "
                             f"{self.input_names[1]} of shape {predictions.shape}")
        feed = dict(zip(self.input_names, (y_true, predictions)))
        if (weights is None) != (len(self.input_names) == 2):
            raise UsageError("weights: " + ("this loss is weighted; give weights of the loss's shape" if weights is None
                                            else "this loss takes no weights (export it with --weighted)"))
        if weights is not None:
            weights = self._converted(2, weights)
            per_class = self.spec is not None and self.spec.loss_shape == "classes"
            expected = predictions.shape if per_class else without_classes
            if weights.shape != expected:
                raise UsageError(f"weights: shape {weights.shape}; expected the loss's shape {expected}")
            feed[self.input_names[2]] = weights
        return feed

    def _converted(self, index: int, value) -> np.ndarray:
        """``value`` (an array or nested lists) as input ``index``'s element type: integer labels
        of any width become int64, numbers become the model's float type; anything else (float
        class indices, strings, objects, ragged lists) is a `UsageError` naming the input."""
        name = self.input_names[index]
        wanted = _ONNX_TYPES.get(self.runtime.session.get_inputs()[index].type)
        try:
            array = np.asarray(value)
        except ValueError as error:  # ragged nested lists
            raise UsageError(f"{name}: not a rectangular array ({error})") from None
        kinds = "iu" if wanted == np.int64 else "fiub"
        if array.dtype.kind not in kinds or wanted is None:
            expected = "integer class indices" if wanted == np.int64 else "numbers"
            raise UsageError(f"{name}: dtype {array.dtype}; expected {expected}")
        if array.dtype == wanted:
            return array
        if wanted == np.int64 and array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
            raise UsageError(f"{name}: a label beyond int64 ({int(array.max())}); expected class indices")
        return array.astype(wanted)


# ONNX Runtime's CPU provider runs one kernel per node and fuses no element-wise chain, so each
# full-size intermediate goes to memory and back. A run whose intermediates stay in cache (2 MiB of
# L2 per core, 36 MiB of L3 on the 2-core machine) costs less per element. The element-wise
# (multi-label) losses have about twenty full-size intermediates, the softmax ones one (their
# LogSoftmax), hence two sizes. Measured with per_sample at 16384 x 1000 float32, one intra-op
# thread, minima of 11 interleaved rounds under load 5 to 7: sigmoid 453 ms in one run, 288-331
# ms in runs of 64 to 512 rows; sparse softmax 20.3 ms in one run, 25-27 ms in runs of 512 or
# 1024 rows, 39 ms in runs of 256. Softmax losses therefore run a whole batch of eval at a time
# (16 MiB: 2^22 predictions), which also saves the per-run cost of their ~50 small nodes.
RUN_ELEMENTS = {"element-wise": 1 << 18, "softmax": 1 << 22}
RUN_ALIGNMENT = 64  # elements: 4 vectors of 16 float32 (AVX-512), the widest unrolled step


def rows_per_run(shape, provider: str = CPU, *, element_wise: bool = False) -> int:
    """Rows of predictions of ``shape`` (N, ..., C) that one ``session.run`` takes: on the CPU as
    many as make `RUN_ELEMENTS` predictions (at least one row); elsewhere all of them (a GPU's
    cost per run is the launch, not the cache)."""
    rows = max(1, shape[0])
    if provider != CPU:
        return rows
    per_row = max(1, int(np.prod(shape[1:])))
    rows = RUN_ELEMENTS["element-wise" if element_wise else "softmax"] // per_row
    # Each run starts a multiple of RUN_ALIGNMENT elements into the batch, so its vectorised
    # kernels meet every element at the same lane as one run would, and give the same bits: with
    # 5 classes and runs of 5 rows, 1 sigmoid loss in 23 moved by one unit in the last place.
    granule = RUN_ALIGNMENT // math.gcd(RUN_ALIGNMENT, per_row)
    return max(1, rows - rows % granule if rows >= granule else rows)


_ONNX_TYPES = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(float16)": np.float16,
               "tensor(double)": np.float64}


class BatchLoss:
    """A plain, picklable per-batch callable: ``BatchLoss(path)(y_true, predictions)`` returns
    the per-sample losses (N,). It opens its `LossSession` on first use in each process, so a
    distributed engine can ship it to workers and map it over batches unchanged."""

    def __init__(self, path, provider: str = "auto"):
        import os

        self.path, self.provider = os.path.abspath(path), provider  # workers may start elsewhere
        self._session = None

    def __call__(self, y_true, predictions) -> np.ndarray:
        if self._session is None:
            self._session = LossSession(self.path, self.provider)
        return self._session(y_true, predictions)

    def __getstate__(self) -> dict:
        return {"path": self.path, "provider": self.provider}

    def __setstate__(self, state: dict) -> None:
        self.path, self.provider, self._session = state["path"], state["provider"], None
