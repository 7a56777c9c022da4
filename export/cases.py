"""Validation inputs for a spec: several shapes per dynamic dimension, random and edge values.

numpy only. The same seed gives the same cases, so an export's ``reference.npz`` and a later
``validate`` without ``--shapes`` see the same inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from export import artifact
from export.errors import UsageError
from focal_graph.spec import FocalSpec

# Meaningful names for the dynamic dimensions of (N, ..., C), shared by every input and output.
_BATCH_NAMES = {2: ("N",), 3: ("N", "T"), 4: ("N", "H", "W"), 5: ("N", "D", "H", "W")}
BASE_SIZE = {"N": 6, "C": 5}  # T, H, W, D: 3; d1, d2, ... (rank > 5): 1, to keep cases small
LARGER_SIZE = {"N": 33, "C": 11}  # T, H, W, D: 5; d1, d2, ...: 2
MAX_CASE_ELEMENTS = 1 << 24  # per case: 64 MB of float32 predictions
# Logits of this size are "large" (the loss is then about as large). float16 outputs stop at 65504,
# so their large case is smaller, or every sum would be inf on both sides and compare nothing.
LARGE_LOGITS = {"float16": 1e2, "float32": 1e4, "float64": 1e4}


def dimension_names(spec: FocalSpec) -> tuple[str, ...]:
    """Names of the predictions' dimensions: ``N``, then ``T`` | ``H, W`` | ``D, H, W`` | ``d1..``,
    with ``C`` (the class axis; fixed when the spec fixes ``num_classes``) where the spec's
    ``axis`` puts it: last by default, ``N, C, H, W`` for channels-first."""
    batch = _BATCH_NAMES.get(spec.rank, ("N",) + tuple(f"d{i}" for i in range(1, spec.rank - 1)))
    return batch[:spec.class_axis] + ("C",) + batch[spec.class_axis:]


def tensor_dimension_names(spec: FocalSpec) -> dict[str, tuple[str, ...]]:
    """The dimension names of every graph input and output, by name: the predictions' (and dense
    targets') `dimension_names`, the labels' without ``C``, ``weights`` and ``loss`` as the
    unreduced loss is laid out, ``per_sample`` ``(N,)``. A fixed size keeps its value."""
    names = dimension_names(spec)
    without_classes = names[:spec.class_axis] + names[spec.class_axis + 1:]
    loss = names if spec.loss_shape == "classes" else without_classes + (("1",) if spec.loss_shape == "one" else ())
    true_name, prediction_name = spec.input_names
    return {true_name: without_classes if spec.sparse else names, prediction_name: names, "weights": loss,
            "loss": loss, "per_sample": names[:1], "sum": (), "mean": (), "normalized": (),
            "per_sample_normalized": names[:1]}


def _classes_last(spec: FocalSpec, shape) -> tuple[int, ...]:
    """A shape in the spec's layout, its class axis moved last (the layout cases are made in)."""
    axis = spec.class_axis
    return tuple(shape[:axis]) + tuple(shape[axis + 1:]) + (shape[axis],)


def _laid_out(spec: FocalSpec, inputs: dict) -> dict:
    """Inputs made classes-last, in the spec's layout: the class axis moved to ``axis``."""
    axis = spec.class_axis
    if axis == spec.rank - 1:
        return inputs
    true_name, prediction_name = spec.input_names
    moved = {prediction_name}
    if not spec.sparse:
        moved.add(true_name)
    if spec.loss_shape == "classes":
        moved.add("weights")
    return {name: np.ascontiguousarray(np.moveaxis(array, -1, axis)) if name in moved else array
            for name, array in inputs.items()}


def _weights(spec: FocalSpec, loss_shape, uniform: np.ndarray) -> np.ndarray:
    """Validation weights from ``uniform`` values in [0, 1): in [0, 2), one position in four 0
    (a mask)."""
    weights = (uniform * 2.0).reshape(loss_shape)
    weights.reshape(-1)[::4] = 0.0
    return weights.astype(spec.dtype)


ALL_FORMS = artifact.FORMS
REDUCED_FORMS = tuple(form for form in artifact.FORMS if form != "loss")
# The realistic case: this many positions (rows, or pixels and anchors over the batch) at the
# spec's C, or at REALISTIC_CLASSES when C is dynamic: 16.4M elements, where one float32 running
# sum in ONNX Runtime was 1.6e-3 off float64. Its batch shape per rank (product 16384):
REALISTIC_POSITIONS = {2: (16384,), 3: (64, 256), 4: (16, 32, 32), 5: (4, 16, 16, 16)}
REALISTIC_CLASSES = 1000
REALISTIC_NAME = "realistic"


@dataclass(frozen=True)
class Case:
    """One set of inputs: ``name`` says what it tests, ``inputs`` maps input name to array,
    ``forms`` the outputs compared on it (the realistic case compares the reductions only)."""

    name: str
    inputs: dict
    forms: tuple = ALL_FORMS

    @property
    def shape(self) -> tuple[int, ...]:
        """The predictions' shape (the second input)."""
        return tuple(list(self.inputs.values())[1].shape)


def default_shapes(spec: FocalSpec) -> list[tuple[int, ...]]:
    """A base shape, then each dynamic dimension in turn set to 0, 1 and a larger size.

    The class axis, when dynamic, takes 1, 2 and a larger size but not 0: with no class there is
    nothing to score, and no label is valid.
    """
    names = dimension_names(spec)
    base = [BASE_SIZE.get(name, 1 if name.startswith("d") else 3) for name in names]
    if spec.num_classes is not None:
        base[spec.class_axis] = spec.num_classes
    shapes = [tuple(base)]
    for axis, name in enumerate(names):
        if name == "C":
            if spec.num_classes is not None:
                continue
            sizes = (1, 2, LARGER_SIZE["C"])
        else:
            sizes = (0, 1, LARGER_SIZE.get(name, 2 if name.startswith("d") else 5))
        for size in sizes:
            shape = list(base)
            shape[axis] = size
            shapes.append(tuple(shape))
    return shapes


def parse_shapes(spec: FocalSpec, text, option: str = "--shapes") -> list[tuple[int, ...]]:
    """Shapes of the predictions from ``"8x10,0x10"`` (or a list of tuples), checked against the
    spec's rank and class count. Raises `UsageError` naming ``option``."""
    if isinstance(text, str):
        items = [item.strip() for item in text.split(",") if item.strip()]
        try:
            shapes = [tuple(int(size) for size in item.lower().split("x")) for item in items]
        except ValueError:
            raise UsageError(f"{option}: expected shapes like 8x10,0x10 (sizes joined by x), got {text!r}") from None
    else:
        try:
            shapes = [tuple(_size(option, size) for size in shape) for shape in text]
        except TypeError:
            raise UsageError(f"{option}: expected shapes like 8x10,0x10 or a list of tuples of sizes, got {text!r}") from None
    if not shapes:
        raise UsageError(f"{option}: expected at least one shape")
    layout = "x".join(dimension_names(spec))
    for shape in shapes:
        if len(shape) != spec.rank:
            raise UsageError(f"{option}: {'x'.join(map(str, shape))} has rank {len(shape)}; the spec has rank {spec.rank} ({layout})")
        if any(size < 0 for size in shape):
            raise UsageError(f"{option}: {'x'.join(map(str, shape))} has a negative size")
        classes = shape[spec.class_axis]
        if spec.num_classes is not None and classes != spec.num_classes:
            raise UsageError(f"{option}: {'x'.join(map(str, shape))} has C={classes}; the spec fixes C={spec.num_classes}")
        if classes == 0:
            raise UsageError(f"{option}: {'x'.join(map(str, shape))} has no class (C=0)")
        _check_size(option, shape)
    repeated = [shape for i, shape in enumerate(shapes) if shape in shapes[:i]]
    if repeated:
        raise UsageError(f"{option}: {_text(repeated[0])} is given twice")
    return shapes


def _size(option: str, size) -> int:
    """One size of a shape given as a tuple: an integer (2.7 is not truncated to 2)."""
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
        raise UsageError(f"{option}: sizes are integers, got {size!r}")
    return int(size)


def _check_size(option: str, shape) -> None:
    elements = int(np.prod(shape, dtype=object))
    if elements > MAX_CASE_ELEMENTS:
        raise UsageError(f"{option}: {_text(shape)} has {elements} elements; validation cases take at most {MAX_CASE_ELEMENTS}")


def generate(spec: FocalSpec, shapes=None, seed: int = 0) -> list[Case]:
    """Random inputs for every shape (default: `default_shapes`), then edge cases on the first
    shape with no empty dimension: large logits, ties, labels 0 and C-1, invalid labels, soft
    targets, saturated probabilities, NaN and infinite predictions, and ``ignore_index``
    positions (with finite and with non-finite predictions), whichever apply to the spec."""
    rng = np.random.default_rng(seed)
    realistic = shapes is None
    if shapes is None:
        shapes = default_shapes(spec)
        for shape in shapes:
            _check_size("classes", shape)
    builder = _CaseBuilder(spec, rng)
    if realistic:
        return _generated(spec, shapes, builder, rng) + [realistic_case(spec, seed)]
    return _generated(spec, shapes, builder, rng)


def _generated(spec: FocalSpec, shapes, builder, rng) -> list[Case]:
    cases = [builder.case(f"random {_text(shape)}", shape) for shape in shapes]
    base = next((shape for shape in shapes if 0 not in shape), None)
    if base is None:
        return cases
    classes, positions = base[spec.class_axis], _classes_last(spec, base)[:-1]
    alternate = np.indices(positions).sum(axis=0)  # a checkerboard over the positions
    cases.append(builder.case(f"large logits {_text(base)}", base, scale=LARGE_LOGITS[spec.dtype]))
    cases.append(builder.case(f"ties {_text(base)}", base, logits=np.full(_classes_last(spec, base), 7.0)))
    cases.append(builder.case(f"non-finite predictions {_text(base)}", base, edit=_non_finite(spec)))
    if spec.sparse:
        cases.append(builder.case(f"labels 0 and C-1 {_text(base)}", base, labels=np.where(alternate % 2 == 0, 0, classes - 1)))
        invalid = rng.integers(0, classes, size=positions)
        outside = [value for value in (classes, -2, -3) if value != spec.ignore_index][:2]
        invalid[alternate % 3 == 0] = outside[0]
        invalid[alternate % 3 == 1] = outside[1]
        cases.append(builder.case(f"invalid labels {_text(base)}", base, labels=invalid))
        if spec.ignore_index is not None:
            labels = rng.integers(0, classes, size=positions)
            labels[alternate % 3 == 0] = spec.ignore_index
            cases.append(builder.case(f"ignore_index {_text(base)}", base, labels=labels))
            ignored_rows = np.full(positions, spec.ignore_index)
            ignored_rows[alternate % 3 == 1] = 0
            cases.append(builder.case(f"non-finite predictions at ignore_index {_text(base)}", base, labels=ignored_rows,
                                      edit=_non_finite(spec, where=ignored_rows == spec.ignore_index)))
            everything = np.full(positions, spec.ignore_index)
            cases.append(builder.case(f"all ignore_index {_text(base)}", base, labels=everything))
    else:
        cases.append(builder.case(f"soft targets {_text(base)}", base, soft=True))
        if spec.multi_label and spec.ignore_index is not None:
            cases += _ignored_targets_cases(spec, builder, base, alternate)
    if not spec.from_logits:
        cases.append(builder.case(f"saturated probabilities {_text(base)}", base, saturated=True))
    # last, so that the cases before it keep the inputs they had before it existed
    cases.append(_confident_case(spec, builder, base, rng))
    return cases


def _confident_case(spec: FocalSpec, builder, base, rng) -> Case:
    """Predictions that are right with a margin of 3 to 30 logits: losses from about 0.05 down
    past 1e-30, where an error that is small in absolute terms is 2x or 100% of the loss (a
    compiler's rewrite once gave 2x, or 0.0, there). Compared relatively (`export.formula.
    relative_tolerance`), not only within atol."""
    last = _classes_last(spec, base)
    positions = last[:-1]
    labels = rng.integers(0, last[-1], size=positions)
    margins = np.linspace(3.0, 30.0, int(np.prod(last))).reshape(last)
    noise = rng.normal(size=last) * 0.5
    if spec.multi_label:
        targets = rng.uniform(size=last) < 0.3
        logits = np.where(targets, margins, -margins) + noise  # |noise| < 3 (6 sigma): no sign flips
        return builder.case(f"confident predictions {_text(base)}", base, logits=logits,
                            edit_targets=lambda y_true: targets.astype(np.float64))
    chosen = np.arange(last[-1]) == labels[..., None]  # not np.eye(C)[labels]: C x C at a vocabulary's C
    logits = np.where(chosen, noise.max(axis=-1, keepdims=True) + margins, noise)
    return builder.case(f"confident predictions {_text(base)}", base, logits=logits, labels=labels)


def _ignored_targets_cases(spec: FocalSpec, builder, base, alternate) -> list[Case]:
    """Sigmoid targets equal to ``ignore_index``: a third of the positions (whole rows of C, as
    RetinaNet ignores anchors), single elements, non-finite predictions there, and everything."""
    last = _classes_last(spec, base)  # the layout `case` edits targets in
    ignored_rows = (alternate % 3 == 0)[..., None] & np.ones(last, bool)
    ignored_elements = np.indices(last).sum(axis=0) % 4 == 1
    everything = np.ones(last, bool)

    def targets(where):
        def edit(y_true):
            return np.where(where, spec.ignore_index, y_true)
        return edit

    return [
        builder.case(f"ignore_index anchors {_text(base)}", base, edit_targets=targets(ignored_rows)),
        builder.case(f"ignore_index elements {_text(base)}", base, edit_targets=targets(ignored_elements)),
        builder.case(f"non-finite predictions at ignore_index {_text(base)}", base, edit_targets=targets(ignored_rows),
                     edit=_non_finite(spec, where=alternate % 3 == 0)),
        builder.case(f"all ignore_index {_text(base)}", base, edit_targets=targets(everything)),
    ]


def realistic_shape(spec: FocalSpec, *, legacy: bool = False) -> tuple[int, ...]:
    """16384 positions at the spec's C (`REALISTIC_CLASSES` when C is dynamic), in its layout;
    fewer in the first (batch) dimension where C is so large that they would pass
    `MAX_CASE_ELEMENTS` (C > 1024 at rank 2): a declared C of 20000 made 327M elements, 2.4 GiB
    per float64 array. ``legacy``: the 16384 positions whatever C (artifacts exported before)."""
    positions = REALISTIC_POSITIONS.get(spec.rank, (4, 16, 16, 16) + (1,) * (spec.rank - 5))
    classes = spec.num_classes or REALISTIC_CLASSES
    if not legacy and math.prod(positions) * classes > MAX_CASE_ELEMENTS:
        rest = math.prod(positions[1:]) * classes
        positions = (max(1, MAX_CASE_ELEMENTS // rest),) + positions[1:]
    return positions[:spec.class_axis] + (classes,) + positions[spec.class_axis:]


def realistic_case(spec: FocalSpec, seed: int = 0, *, legacy: bool = False) -> Case:
    """One case at `realistic_shape`, comparing the reduced forms: large reductions drift where
    small ones do not. Its inputs come from `portable_uniform`, so ``reference.npz`` stores only
    the seed and a later ``validate --reference-only`` on any machine regenerates them."""
    named_shape = realistic_shape(spec, legacy=legacy)
    shape = _classes_last(spec, named_shape)
    size = int(np.prod(shape))
    positions = shape[:-1]
    logits = ((portable_uniform(size, seed, 0) * 2.0 - 1.0) * 6.0).reshape(shape)
    labels = np.minimum((portable_uniform(size // shape[-1], seed, 1) * shape[-1]).astype(np.int64), shape[-1] - 1).reshape(positions)
    dtype = np.dtype(spec.dtype)
    if spec.sparse:
        y_true = labels
        if spec.ignore_index is not None:
            y_true = np.where(portable_uniform(labels.size, seed, 2).reshape(positions) < 0.1, spec.ignore_index, labels)
    elif spec.multi_label:
        y_true = (portable_uniform(size, seed, 3).reshape(shape) < 0.3).astype(dtype)
        if spec.ignore_index is not None:  # RetinaNet's anchors between the IoU thresholds
            y_true = np.where(portable_uniform(size, seed, 2).reshape(shape) < 0.1, spec.ignore_index, y_true).astype(dtype)
    else:
        y_true = np.zeros(shape, dtype)
        np.put_along_axis(y_true, labels[..., None], 1, axis=-1)
    predictions = logits if spec.from_logits else probabilities(spec, logits)
    true_name, prediction_name = spec.input_names
    inputs = {true_name: y_true, prediction_name: predictions.astype(dtype)}
    reduced = tuple(form for form in artifact.forms(spec) if form != "loss")
    if spec.weighted:
        loss_shape = shape if spec.loss_shape == "classes" else positions
        inputs["weights"] = _weights(spec, loss_shape, portable_uniform(int(np.prod(loss_shape)), seed, 4))
    return Case(f"{REALISTIC_NAME} {_text(named_shape)} seed {seed}", _laid_out(spec, inputs), reduced)


def portable_uniform(count: int, seed: int, stream: int) -> np.ndarray:
    """``count`` float64 values in [0, 1), 24 random bits each (exact in float32): splitmix64 of
    the index. Unsigned 64-bit arithmetic wraps the same way on every machine and numpy version,
    which numpy's generators do not promise (NEP 19)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        state = np.arange(count, dtype=np.uint64) * golden + np.uint64((seed * 7919 + stream * 104729) % 2**63)
        state = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        state = (state ^ (state >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        state = state ^ (state >> np.uint64(31))
    return (state >> np.uint64(40)).astype(np.float64) * 2.0**-24


def _non_finite(spec: FocalSpec, where=None):
    """An edit of the predictions: NaN, +inf and -inf (logits) or NaN (probabilities) at the
    first, second and third of the positions ``where`` marks (default: every position)."""
    values = (np.nan, np.inf, -np.inf) if spec.from_logits else (np.nan,)

    def edit(predictions):
        marked = np.argwhere(np.ones(predictions.shape[:-1], bool) if where is None else where)
        for index, value in zip(marked, values):
            predictions[tuple(index)][0] = value
        return predictions

    return edit


def probabilities(spec: FocalSpec, logits: np.ndarray) -> np.ndarray:
    """What a model would feed a loss that takes probabilities: per-class sigmoids for
    multi-label losses, a softmax over the classes otherwise (float64, no overflow)."""
    logits = np.asarray(logits, np.float64)
    if spec.multi_label:
        return 0.5 * (1.0 + np.tanh(0.5 * logits))  # the sigmoid without overflow
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True, initial=-np.inf))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _text(shape) -> str:
    return "x".join(map(str, shape))


class _CaseBuilder:
    def __init__(self, spec: FocalSpec, rng: np.random.Generator):
        self.spec = spec
        self.rng = rng
        if spec.dtype == "bfloat16":
            raise UsageError("dtype: bfloat16 inputs cannot be generated (numpy has no bfloat16)")
        self.dtype = np.dtype(spec.dtype)

    def case(self, name, shape, *, scale=3.0, logits=None, labels=None, soft=False, saturated=False, edit=None,
             edit_targets=None) -> Case:
        """A case of predictions ``shape`` (the spec's layout); ``logits``, ``labels``, ``edit`` and
        ``edit_targets`` are classes-last."""
        spec, rng = self.spec, self.rng
        shape = _classes_last(spec, shape)
        classes = shape[-1]
        if logits is None:
            logits = rng.normal(size=shape) * scale
        if labels is None:
            labels = rng.integers(0, classes, size=shape[:-1])
        if spec.sparse:
            y_true = labels.astype(np.int64)
        elif soft:
            y_true = rng.uniform(size=shape) if spec.multi_label else rng.dirichlet(np.ones(classes), size=shape[:-1])
        elif spec.multi_label:
            y_true = (rng.uniform(size=shape) < 0.3).astype(np.float64)
            y_true[..., 0] = labels == 0  # some rows with an exact positive at class 0
        else:
            y_true = _one_hot(labels, classes) if classes else np.zeros(shape)
        if saturated:
            predictions = _one_hot(rng.integers(0, classes, size=shape[:-1]), classes)  # exact 0s and 1s
        elif spec.from_logits:
            predictions = logits
        else:
            predictions = probabilities(spec, logits)
        if edit is not None:
            predictions = edit(np.array(predictions, dtype=np.float64))
        if edit_targets is not None:
            y_true = edit_targets(y_true)
        true_name, prediction_name = spec.input_names
        if not spec.sparse:
            y_true = y_true.astype(self.dtype)
        inputs = {true_name: y_true, prediction_name: predictions.astype(self.dtype)}
        if spec.weighted:
            loss_shape = shape if spec.loss_shape == "classes" else shape[:-1]
            inputs["weights"] = _weights(spec, loss_shape, rng.uniform(size=loss_shape))
        return Case(name, _laid_out(spec, inputs), artifact.forms(spec))


def _one_hot(indices: np.ndarray, classes: int) -> np.ndarray:
    """float64 one-hot rows, ``indices.shape + (classes,)``: ``np.eye(classes)[indices]`` without
    the (C, C) identity (3 GB at C = 20000, which a .keras model's output can declare)."""
    rows = np.zeros(indices.shape + (classes,))
    np.put_along_axis(rows, indices[..., None], 1.0, axis=-1)
    return rows


def save_reference(path, cases: list[Case], outputs: dict) -> None:
    """Write the cases' inputs and ``outputs[case name][form]`` (the case's forms) to an ``.npz``
    (no pickles): ``case_names``, then ``NNN/<input or output name>`` per case. The realistic
    case's inputs are not stored: its name carries the seed they are regenerated from."""
    arrays = {"case_names": np.array([case.name for case in cases])}
    for number, case in enumerate(cases):
        inputs = {} if case.name.startswith(REALISTIC_NAME + " ") else case.inputs
        for name, array in {**inputs, **{form: outputs[case.name][form] for form in case.forms}}.items():
            arrays[f"{number:03d}/{name}"] = np.asarray(array)
    with open(path, "wb") as file:
        np.savez_compressed(file, **arrays)


def load_reference(path, spec: FocalSpec, forms) -> tuple[list[Case], dict]:
    """The cases and outputs `save_reference` wrote, the inputs named as ``spec`` names them, the
    realistic case regenerated from its seed; raises ValueError (KeyError where an input or form is
    missing) on a malformed file."""
    stored, outputs = read_reference(path, forms)
    cases = [Case(case.name, {key: case.inputs[key] for key in spec.graph_inputs}, artifact.forms(spec)) for case in stored]
    realistic, realistic_outputs = read_realistic(path, spec, forms)
    return cases + realistic, {**outputs, **realistic_outputs}


def read_reference(path, forms) -> tuple[list[Case], dict]:
    """The cases stored with their inputs, and their outputs, whatever spec they were written for:
    a case's inputs are its arrays other than outputs, in the order they were written. Every
    form in ``forms`` must be stored (KeyError otherwise); the others of
    `export.artifact.KNOWN_FORMS` are read where stored. The realistic case (inputs regenerated
    from the spec) is left to `read_realistic`."""
    with np.load(path, allow_pickle=False) as data:
        names = [str(name) for name in data["case_names"]]
        cases, outputs = [], {}
        for number, name in enumerate(names):
            if name.startswith(REALISTIC_NAME + " "):
                continue
            prefix = f"{number:03d}/"
            keys = [key[len(prefix):] for key in data.files if key.startswith(prefix)]
            stored = [form for form in artifact.KNOWN_FORMS if form in forms or form in keys]
            cases.append(Case(name, {key: data[prefix + key] for key in keys if key not in stored}))
            outputs[name] = {form: data[prefix + form] for form in stored}
    return cases, outputs


def read_realistic(path, spec: FocalSpec, forms) -> tuple[list[Case], dict]:
    """The realistic case(s) of the file, inputs regenerated from the seed in the name
    (`realistic_case`), with their stored outputs (``Case.forms`` only); raises ValueError when
    the name is not the one ``spec`` gives that seed."""
    with np.load(path, allow_pickle=False) as data:
        names = [str(name) for name in data["case_names"]]
        cases, outputs = [], {}
        for number, name in enumerate(names):
            if not name.startswith(REALISTIC_NAME + " "):
                continue
            seed = int(name.rsplit(" ", 1)[1])
            legacy = realistic_shape(spec, legacy=True)
            # an artifact with C > 1024 exported before the realistic shape was bounded
            case = realistic_case(spec, seed, legacy=legacy != realistic_shape(spec)
                                  and name == f"{REALISTIC_NAME} {_text(legacy)} seed {seed}")
            if case.name != name:
                raise ValueError(f"case {name!r} does not match the spec's realistic shape ({case.name!r})")
            cases.append(case)
            outputs[name] = {form: data[f"{number:03d}/{form}"] for form in forms if form in case.forms}
    return cases, outputs
