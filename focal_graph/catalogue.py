"""The loss catalogue: one record per loss kind, read by the spec, the graphs, Keras, export and eval.

A record says everything about a kind that is not math: which function computes it, which
`FocalSpec` fields it takes and passes on, their defaults, which are required or fixed, what its
inputs are called and what shape its unreduced loss has. Adding an option to a kind is one entry
here (plus its validation in `focal_graph.spec` and its math in the function).

Pure Python: the ONNX-Runtime-only side reads records without TensorFlow. ``function`` is
therefore a ``"module:name"`` string, resolved by `focal_graph.graph.loss_function` (which
imports TensorFlow).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from focal_graph.params import KERAS_EPSILON

FAMILIES = ("variant", "preset")
# Fields every kind takes (and every spec shows).
ALWAYS = ("num_classes", "gamma", "reduction", "rank", "dtype")
# Unreduced loss shapes: (...) one value per position; (..., C) one per class; (..., 1).
LOSS_SHAPES = ("positions", "classes", "one")
WEIGHTS = "weights"  # the third input of a weighted loss's graph: the unreduced loss's shape


@dataclass(frozen=True)
class LossKind:
    """What focalgraph knows about one loss kind, apart from its math.

    - ``family``, ``name``: ``("variant", "sigmoid")``, ``("preset", "multilabel_lsr")``, ...
    - ``function``: ``"module:name"`` of the TensorFlow function ``f(y_true, y_pred, **arguments)``.
    - ``fields``: the optional `FocalSpec` fields it takes besides `ALWAYS`; any other must be unset.
    - ``arguments``: the fields passed to ``function`` by name (``class_counts`` becomes
      ``class_weight`` on the way, see `focal_graph.graph.SpecLoss`).
    - ``defaults``: values filled in on construction for fields left unset.
    - ``required``: fields that must be given; ``fixed``: fields whose default is the only value.
    - ``sparse``: integer labels (...) rather than targets (..., C).
    - ``multi_label``: per-class sigmoid probabilities rather than one softmax over the classes.
    - ``loss_shape``: the unreduced loss's shape, one of `LOSS_SHAPES`.
    - ``normalized_by_positives``: its artifacts also carry RetinaNet's ``normalized`` and
      ``per_sample_normalized`` (sums over max(1, positive targets)): the element-wise sigmoid
      loss, one loss per anchor and class. The multi-label presets return one loss per sample
      (the seeds' own reductions inside), where a count of positive anchors has nothing to
      divide; softmax losses have no positive targets.
    """

    family: str
    name: str
    function: str
    fields: tuple[str, ...]
    arguments: tuple[str, ...]
    defaults: Mapping[str, Any]
    sparse: bool
    multi_label: bool
    loss_shape: str
    required: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()
    normalized_by_positives: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    @property
    def key(self) -> tuple[str, str]:
        return (self.family, self.name)

    def input_names(self, from_logits: bool) -> tuple[str, str]:
        """``labels`` | ``targets``, then ``logits`` | ``probabilities`` (a weighted loss's graph
        takes ``weights`` third, `WEIGHTS`)."""
        return ("labels" if self.sparse else "targets", "logits" if from_logits else "probabilities")


_CLASS_WEIGHTING = ("alpha", "class_weight", "class_counts", "weighting", "beta")
# Options every variant takes (issue 11): the class axis, Poly-1's epsilon, a weights input.
_VARIANT_OPTIONS = ("axis", "poly_epsilon", "weighted")
_VARIANT_ARGUMENTS = ("gamma", "alpha", "class_weight", "from_logits", "epsilon", "axis", "poly_epsilon")
_VARIANT_DEFAULTS = {"gamma": 2.0, "from_logits": True, "reduction": "none", "axis": -1, "poly_epsilon": 0.0,
                     "weighted": False}
# The sigmoid variant's asymmetric focusing (Ridnik et al., ICCV 2021); gamma_negative's default is
# the spec's gamma (`focal_graph.spec`), which gives the symmetric loss.
_ASYMMETRIC = ("gamma_negative", "probability_margin")
# Seed 000's weight of its label-smoothing-regularisation term (its ``e``).
SEED_000_LSR_WEIGHT = 0.1

KINDS: Mapping[tuple[str, str], LossKind] = MappingProxyType({kind.key: kind for kind in (
    LossKind(
        "variant", "sparse_softmax", "focal_graph.focal:sparse_softmax_focal_loss",
        fields=_CLASS_WEIGHTING + ("from_logits", "ignore_index", "epsilon") + _VARIANT_OPTIONS,
        arguments=_VARIANT_ARGUMENTS + ("ignore_index",),
        defaults=_VARIANT_DEFAULTS, sparse=True, multi_label=False, loss_shape="positions",
    ),
    LossKind(
        "variant", "softmax", "focal_graph.focal:softmax_focal_loss",
        fields=_CLASS_WEIGHTING + ("from_logits", "label_smoothing", "epsilon") + _VARIANT_OPTIONS,
        arguments=_VARIANT_ARGUMENTS + ("label_smoothing",),
        defaults={**_VARIANT_DEFAULTS, "label_smoothing": 0.0}, sparse=False, multi_label=False,
        loss_shape="positions",
    ),
    LossKind(
        "variant", "sigmoid", "focal_graph.focal:sigmoid_focal_loss",
        fields=_CLASS_WEIGHTING + ("from_logits", "label_smoothing", "ignore_index", "epsilon") + _VARIANT_OPTIONS
        + _ASYMMETRIC,
        arguments=_VARIANT_ARGUMENTS + ("label_smoothing", "ignore_index") + _ASYMMETRIC,
        defaults={**_VARIANT_DEFAULTS, "label_smoothing": 0.0, "probability_margin": 0.0}, sparse=False, multi_label=True,
        loss_shape="classes", normalized_by_positives=True,
    ),
    # The seeds' own constants: 000 clips at 1e-8 and weights its LSR term by 0.1; 001 clips at
    # 1e-7 (Keras's epsilon); 002 takes logits and returns the mean.
    LossKind(
        "preset", "multilabel_lsr", "focal_graph.compositions:multilabel_lsr_loss",
        fields=("class_counts", "from_logits", "label_smoothing", "epsilon"),
        arguments=("gamma", "class_weight", "label_smoothing", "epsilon"),
        defaults={"gamma": 2.0, "from_logits": False, "label_smoothing": SEED_000_LSR_WEIGHT, "epsilon": 1e-8,
                  "reduction": "none"},
        required=("class_counts",), fixed=("from_logits",), sparse=False, multi_label=True, loss_shape="positions",
    ),
    LossKind(
        "preset", "multi_category", "focal_graph.compositions:multi_category_loss",
        fields=("class_counts", "from_logits", "epsilon"),
        arguments=("gamma", "class_weight", "epsilon"),
        defaults={"gamma": 2.0, "from_logits": False, "epsilon": KERAS_EPSILON, "reduction": "none"},
        required=("class_counts",), fixed=("from_logits",), sparse=False, multi_label=True, loss_shape="one",
    ),
    LossKind(
        "preset", "sparse_softmax", "focal_graph.focal:sparse_softmax_focal_loss",
        fields=("alpha", "from_logits"),
        arguments=("gamma", "alpha"),
        defaults={"gamma": 2.0, "from_logits": True, "reduction": "mean"},
        required=("alpha",), fixed=("from_logits",), sparse=True, multi_label=False, loss_shape="positions",
    ),
)})


def names(family: str) -> tuple[str, ...]:
    """The kinds of one family, in catalogue order: ``names("variant")``."""
    return tuple(name for kind_family, name in KINDS if kind_family == family)


def record(family: str, name: str) -> LossKind:
    """The record of ``family`` ``name``, or a ValueError naming the family and its kinds."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    try:
        return KINDS[(family, name)]
    except (KeyError, TypeError):
        raise ValueError(f"{family}: expected one of {', '.join(names(family))}, got {name!r}") from None
