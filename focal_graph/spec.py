"""`FocalSpec`: a complete, serialisable description of one focal loss.

Pure Python (plus numpy for validation): an ONNX-Runtime-only host can read and check a spec
without TensorFlow. `focal_graph.graph.build_graph` turns a spec into a TensorFlow graph.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from focal_graph import catalogue, params
from focal_graph.weights import WEIGHTINGS, check_beta, check_class_counts, class_weights

VARIANTS = catalogue.names("variant")
PRESETS = catalogue.names("preset")
SPEC_VERSION = 1
MAX_RANK = 8  # TensorFlow's broadcasting kernels (SelectV2, ...) stop at rank 8


@dataclass(frozen=True)
class FocalSpec:
    """One focal loss: a `variant` or a `preset`, and its parameters.

    Fields use the names of the loss functions' arguments. Unset fields (None) take the loss's
    default on construction, so a constructed spec is explicit: ``to_json()`` shows every value the
    graph uses, and fields that do not apply to the chosen loss stay None.

    - ``variant``: ``sparse_softmax`` | ``softmax`` | ``sigmoid``; or ``preset``:
      ``multilabel_lsr`` | ``multi_category`` | ``sparse_softmax`` (exactly one of the two).
    - ``num_classes``: C; fixed in the graph's signature when set. Inferred from per-class values.
    - ``gamma``, ``alpha``, ``class_weight``: scalars or one value per class (``class_weight`` is
      per class only). ``class_counts`` (with ``weighting`` and ``beta``) derives ``class_weight``.
    - ``from_logits``, ``label_smoothing``, ``ignore_index`` (a label for sparse_softmax, a target
      value outside [0, 1] for sigmoid), ``epsilon`` (probability clip),
      ``reduction`` (``none`` | ``sum`` | ``mean``; sigmoid also ``normalized`` |
      ``per_sample_normalized``).
    - ``axis`` (variants): the class axis of the predictions, -1 (classes last) by default; 1 for
      channels-first (N, C, H, W). Any axis but the first (the batch).
    - ``poly_epsilon`` (variants): Poly-1's epsilon (Leng et al., ICLR 2022), >= -1; 0 by default.
      The loss is ``FL + epsilon * (1 - p_t)**(gamma + 1)``, which is >= 0 for every p_t when
      epsilon >= -1 and the class weight is 1, since ``FL >= (1 - p_t)**(gamma + 1)`` then; with
      FL scaled by a weight ``w`` (alpha, class weights) it is >= 0 when ``epsilon >= -w``.
    - ``gamma_negative``, ``probability_margin`` (sigmoid): the asymmetric loss's focusing of
      negatives (>= 0; gamma by default) and its probability margin in [0, 1) (0 by default)
      (Ridnik et al., ICCV 2021). The defaults give the symmetric focal loss exactly.
    - ``weighted`` (variants): the graph takes a third input, ``weights``, of the unreduced
      loss's shape, multiplied into the loss; ``mean`` is then ``sum(w loss) / sum(w)``.
    - ``rank``: rank of the predictions, class axis included (2 to 8); ``dtype`` of the predictions.

    Invalid values raise a ValueError naming the field.
    """

    variant: Optional[str] = None
    preset: Optional[str] = None
    num_classes: Optional[int] = None
    gamma: Optional[params.PerClass] = None
    alpha: Optional[params.PerClass] = None
    class_weight: Optional[tuple[float, ...]] = None
    class_counts: Optional[tuple[float, ...]] = None
    weighting: Optional[str] = None
    beta: Optional[float] = None
    from_logits: Optional[bool] = None
    label_smoothing: Optional[float] = None
    ignore_index: Optional[int] = None
    epsilon: Optional[float] = None
    axis: Optional[int] = None
    poly_epsilon: Optional[float] = None
    gamma_negative: Optional[params.PerClass] = None
    probability_margin: Optional[float] = None
    weighted: Optional[bool] = None
    reduction: Optional[str] = None
    rank: int = 2
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name, value in _validated(self).items():
            object.__setattr__(self, name, value)

    @property
    def kind(self) -> tuple[str, str]:
        """``("variant", name)`` or ``("preset", name)``."""
        return ("variant", self.variant) if self.variant is not None else ("preset", self.preset)

    @property
    def record(self) -> catalogue.LossKind:
        """The kind's `focal_graph.catalogue.LossKind`."""
        return catalogue.KINDS[self.kind]

    @property
    def name(self) -> str:
        return f"{self.kind[0]}:{self.kind[1]}"

    @property
    def sparse(self) -> bool:
        """Integer class labels (...) rather than targets (..., C)."""
        return self.record.sparse

    @property
    def multi_label(self) -> bool:
        """Per-class sigmoid probabilities rather than one softmax over the classes."""
        return self.record.multi_label

    @property
    def normalized_by_positives(self) -> bool:
        """Whether the loss also has RetinaNet's ``normalized`` and ``per_sample_normalized``
        forms (sum over max(1, positive targets)): the sigmoid variant."""
        return self.record.normalized_by_positives

    @property
    def input_names(self) -> tuple[str, str]:
        """The graph's input names: ``labels`` | ``targets``, then ``logits`` | ``probabilities``."""
        return self.record.input_names(self.from_logits)

    @property
    def graph_inputs(self) -> tuple[str, ...]:
        """The graph's inputs: `input_names`, then ``weights`` for a weighted loss."""
        return self.input_names + ((catalogue.WEIGHTS,) if self.weighted else ())

    @property
    def class_axis(self) -> int:
        """The class axis of the predictions as a non-negative index (rank - 1 for presets)."""
        return self.rank - 1 if self.axis is None else self.axis % self.rank

    @property
    def loss_shape(self) -> str:
        """The unreduced loss's shape: ``positions`` (...), ``classes`` (..., C) or ``one`` (..., 1)."""
        return self.record.loss_shape

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FocalSpec:
        """Build from a dict; keys may use ``-`` for ``_`` (as command lines write them)."""
        if not isinstance(data, dict):
            raise ValueError(f"spec: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name in kwargs:
                raise ValueError(f"{key}: given twice (as {name} and with '-')")
            if name == "spec_version":
                if value != SPEC_VERSION:
                    raise ValueError(f"spec_version: this focalgraph reads version {SPEC_VERSION}, got {value!r}")
                continue
            if name not in known:
                raise ValueError(f"{key}: not a FocalSpec field (fields: {', '.join(sorted(known))})")
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def from_keras(cls, loss) -> FocalSpec:
        """The spec of a Keras loss: focalgraph's Keras losses (their ``.spec``) and Keras's own
        ``BinaryFocalCrossentropy`` and ``CategoricalFocalCrossentropy`` where the semantics
        coincide; a ValueError names the argument that does not translate (see
        `focal_graph.keras_specs.spec_from_keras`). Needs TensorFlow; imported only when called."""
        from focal_graph.keras_specs import spec_from_keras

        return spec_from_keras(loss)

    def to_json(self) -> str:
        return json.dumps({"spec_version": SPEC_VERSION, **self.to_dict()}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FocalSpec:
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as error:
            raise ValueError(f"spec: not valid JSON ({error})") from None
        except RecursionError:
            raise ValueError("spec: nested too deeply to be a FocalSpec") from None
        return cls.from_dict(data)


def _validated(spec: FocalSpec) -> dict[str, Any]:
    """Every field's canonical value, with defaults resolved; raises ValueError naming the field."""
    if (spec.variant is None) == (spec.preset is None):
        raise ValueError(
            f"variant/preset: give exactly one (variant: {', '.join(VARIANTS)}; preset: {', '.join(PRESETS)})"
        )
    family = "variant" if spec.variant is not None else "preset"
    record = catalogue.record(family, getattr(spec, family))
    kind = record.key

    fields = set(record.fields) | set(catalogue.ALWAYS)
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    for name, value in values.items():
        if name in ("variant", "preset", "rank", "dtype") or value is None:
            continue
        if name not in fields:
            takes = ", ".join(sorted(fields))
            raise ValueError(f"{name}: does not apply to {kind[0]} {kind[1]!r} (it takes: {takes})")
    for name in record.required:
        if values[name] is None:
            raise ValueError(f"{name}: required by {kind[0]} {kind[1]!r}")
    for name in record.fixed:
        fixed = record.defaults[name]
        if values[name] is not None and values[name] is not fixed:
            raise ValueError(f"{name}: {kind[0]} {kind[1]!r} is defined with {name}={fixed}, got {params.shown(values[name])}")

    out = dict(values)
    for name, default in record.defaults.items():
        if out[name] is None:
            out[name] = default

    out["rank"] = params.integer("rank", out["rank"], minimum=2, maximum=MAX_RANK)
    if not isinstance(out["dtype"], str) or out["dtype"] not in params.DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(params.DTYPES)}, got {params.shown(out['dtype'])}")
    out["reduction"] = params.reduction(out["reduction"], normalized=record.normalized_by_positives)
    if not isinstance(out["from_logits"], bool):
        raise ValueError(f"from_logits: expected true or false, got {params.shown(out['from_logits'])}")

    if out["num_classes"] is not None:
        out["num_classes"] = params.integer("num_classes", out["num_classes"], minimum=1)
    # Per-class values fix C; they must agree with each other and with num_classes.
    num_classes = out["num_classes"]
    # RetinaNet's alpha balances positives against negatives: a weight in [0, 1]
    is_sigmoid = kind == ("variant", "sigmoid")
    checks = {
        "gamma": dict(low=0.0),
        "alpha": dict(low=0.0, high=1.0 if is_sigmoid else math.inf),
        "class_weight": dict(low=0.0, allow_scalar=False),
    }
    for name, bounds in checks.items():
        if out[name] is None:
            continue
        out[name] = params.per_class(name, out[name], num_classes=num_classes, **bounds)
        num_classes = num_classes or params.vector_length(out[name])
    if out["class_counts"] is not None:
        if out["class_weight"] is not None:
            raise ValueError("class_counts: give class_weight or class_counts, not both")
        counts = check_class_counts(out["class_counts"])
        if num_classes is not None and len(counts) != num_classes:
            raise ValueError(f"class_counts: expected {num_classes} counts (one per class), got {len(counts)}")
        num_classes = len(counts)
        out["class_counts"] = tuple(int(c) if isinstance(c, (int, np.integer)) else float(c) for c in out["class_counts"])
        if kind[0] == "variant":
            out["weighting"] = out["weighting"] or "inverse_frequency"
            if not isinstance(out["weighting"], str) or out["weighting"] not in WEIGHTINGS:
                raise ValueError(f"weighting: expected one of {', '.join(WEIGHTINGS)}, got {params.shown(out['weighting'])}")
            if out["weighting"] == "effective_number":
                out["beta"] = 0.999 if out["beta"] is None else out["beta"]
                check_beta(out["beta"])
                out["beta"] = float(out["beta"])
            elif out["beta"] is not None:
                raise ValueError("beta: applies only with weighting 'effective_number'")
        # the weights the graph will use must be numbers: counts like 1e308, 1e308 overflow their sum
        class_weights(counts, out["weighting"] or "inverse_frequency", 0.999 if out["beta"] is None else out["beta"])
    elif out["weighting"] is not None or out["beta"] is not None:
        name = "weighting" if out["weighting"] is not None else "beta"
        raise ValueError(f"{name}: applies only with class_counts")
    out["num_classes"] = num_classes

    if out["axis"] is not None:
        params.class_axis(out["axis"], out["rank"])
        out["axis"] = int(out["axis"])
    if out["poly_epsilon"] is not None:
        out["poly_epsilon"] = params.poly_epsilon(out["poly_epsilon"])
    if out["weighted"] is not None and not isinstance(out["weighted"], bool):
        raise ValueError(f"weighted: expected true or false, got {params.shown(out['weighted'])}")
    if "gamma_negative" in fields:
        gamma_negative = out["gamma"] if out["gamma_negative"] is None else out["gamma_negative"]
        out["gamma_negative"] = params.per_class("gamma_negative", gamma_negative, num_classes=num_classes)
        num_classes = num_classes or params.vector_length(out["gamma_negative"])
        out["num_classes"] = num_classes
    if out["probability_margin"] is not None:
        out["probability_margin"] = params.probability_margin(out["probability_margin"])
    if out["label_smoothing"] is not None:
        out["label_smoothing"] = params.label_smoothing(out["label_smoothing"])
    if out["ignore_index"] is not None:
        if is_sigmoid:  # a target value: 0 and 1 are targets, not markers
            out["ignore_index"] = params.sigmoid_ignore_index(out["ignore_index"])
        else:
            out["ignore_index"] = params.integer("ignore_index", out["ignore_index"])
    if "epsilon" in fields:
        if out["from_logits"]:
            if out["epsilon"] is not None:
                raise ValueError("epsilon: applies only with from_logits=false (logits are never clipped)")
        else:
            out["epsilon"] = params.epsilon(params.KERAS_EPSILON if out["epsilon"] is None else out["epsilon"])
    return out


def _unique_keys(pairs) -> dict:
    keys = [key for key, _ in pairs]
    repeated = [key for i, key in enumerate(keys) if key in keys[:i]]
    if repeated:
        raise ValueError(f"{repeated[0]}: given twice")
    return dict(pairs)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
