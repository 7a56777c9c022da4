"""From a `FocalSpec` to a callable loss and to a `tf.function` graph with a fixed signature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tensorflow as tf

from focal_graph import presets
from focal_graph.focal import (
    ignored_targets,
    positive_targets,
    sigmoid_focal_loss,
    softmax_focal_loss,
    sparse_softmax_focal_loss,
)
from focal_graph.reduction import reduce_loss, reductions
from focal_graph.spec import FocalSpec
from focal_graph.weights import class_weights


@dataclass(frozen=True)
class _Loss:
    function: Callable
    arguments: tuple[str, ...]  # FocalSpec fields passed through by name
    sparse: bool  # integer labels (..., ) rather than targets (..., C)


_COMMON = ("gamma", "alpha", "class_weight", "from_logits", "epsilon")
LOSSES = {
    ("variant", "sparse_softmax"): _Loss(sparse_softmax_focal_loss, _COMMON + ("ignore_index",), sparse=True),
    ("variant", "softmax"): _Loss(softmax_focal_loss, _COMMON + ("label_smoothing",), sparse=False),
    ("variant", "sigmoid"): _Loss(sigmoid_focal_loss, _COMMON + ("label_smoothing", "ignore_index"), sparse=False),
    ("preset", "multilabel_lsr"): _Loss(
        presets.multilabel_lsr_loss, ("gamma", "class_weight", "label_smoothing", "epsilon"), sparse=False
    ),
    ("preset", "multi_category"): _Loss(presets.multi_category_loss, ("gamma", "class_weight", "epsilon"), sparse=False),
    ("preset", "sparse_softmax"): _Loss(sparse_softmax_focal_loss, ("gamma", "alpha"), sparse=True),
}


class SpecLoss:
    """``loss(y_true, y_pred)`` for a spec: its loss function, then its reduction.

    ``y_true`` is integer labels (...) for sparse losses, targets (..., C) otherwise. A mean
    leaves ``ignore_index`` positions out of its denominator.
    """

    def __init__(self, spec: FocalSpec):
        self.spec = spec
        self._loss = LOSSES[spec.kind]
        # Fields that do not apply stay None in the spec; the function's own default then holds.
        arguments = {name: getattr(spec, name) for name in self._loss.arguments if getattr(spec, name) is not None}
        if spec.class_counts is not None:
            # presets leave weighting unset: the seeds' inverse frequency; beta is set only (and
            # always) with effective_number
            method = spec.weighting or "inverse_frequency"
            beta = {} if spec.beta is None else {"beta": spec.beta}
            arguments["class_weight"] = tuple(class_weights(spec.class_counts, method, **beta))
        self.arguments = arguments

    @property
    def sparse(self) -> bool:
        return self._loss.sparse

    def unreduced(self, y_true, y_pred) -> tf.Tensor:
        return self._loss.function(y_true, y_pred, **self.arguments)

    def mask(self, y_true):
        """The positions that count (None: all of them): labels (sparse) or targets (sigmoid)
        other than ``ignore_index``."""
        if self.spec.ignore_index is None:
            return None
        if self.sparse:
            return tf.not_equal(tf.cast(y_true, tf.int64), self.spec.ignore_index)
        return tf.logical_not(ignored_targets(y_true, self.spec.ignore_index))

    def positives(self, y_true):
        """The positive elements RetinaNet normalises by (`focal_graph.focal.positive_targets`),
        for specs with ``normalized`` forms; None for the others."""
        if not self.spec.normalized_by_positives:
            return None
        return positive_targets(y_true, self.spec.ignore_index)

    def __call__(self, y_true, y_pred) -> tf.Tensor:
        return reduce_loss(self.unreduced(y_true, y_pred), self.spec.reduction, self.mask(y_true),
                           self.positives(y_true))

    def forms(self, y_true, y_pred) -> dict[str, tf.Tensor]:
        """Every form of the loss from one evaluation, whatever the spec's own ``reduction``:

        - ``loss``: unreduced, the shape the loss function returns;
        - ``per_sample``: (N,), each sample's sum over its other axes;
        - ``sum``, ``mean``: scalars; the mean leaves ``ignore_index`` positions out;
        - for the sigmoid variant (`FocalSpec.normalized_by_positives`) also ``normalized``
          (scalar, ``sum / max(1, P)``) and ``per_sample_normalized`` ((N,), ``per_sample_n /
          max(1, P_n)``), P the positive targets (> 0.5) at counted positions.

        The reduced forms are float32 for 16-bit losses (`focal_graph.reduction.reductions`).
        """
        y_pred = tf.convert_to_tensor(y_pred)
        masks = (self.mask(y_true), self.positives(y_true))
        if y_pred.dtype in (tf.float16, tf.bfloat16):
            # Reduce the float32 loss the functions compute anyway, before its cast back to 16
            # bits: a float16 loss below 6e-8 is 0, and its sum over 40000 x 100 overflows.
            loss = self.unreduced(y_true, tf.cast(y_pred, tf.float32))
            return {"loss": tf.cast(loss, y_pred.dtype), **reductions(loss, *masks)}
        loss = self.unreduced(y_true, y_pred)
        return {"loss": loss, **reductions(loss, *masks)}

    def __repr__(self) -> str:
        return f"SpecLoss({self.spec!r})"


def input_signature(spec: FocalSpec) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    """``(labels | targets, logits | probabilities)``: every dimension None but a fixed C."""
    batch = [None] * (spec.rank - 1)
    dtype = tf.as_dtype(spec.dtype)
    true_name, prediction_name = spec.input_names
    predictions = tf.TensorSpec(batch + [spec.num_classes], dtype, name=prediction_name)
    if spec.sparse:
        return tf.TensorSpec(batch, tf.int64, name=true_name), predictions
    return tf.TensorSpec(batch + [spec.num_classes], dtype, name=true_name), predictions


def build_graph(spec: FocalSpec) -> tf.types.experimental.PolymorphicFunction:
    """The spec's loss as a `tf.function` with an explicit input signature (see `input_signature`).

    Every constant is created inside the traced function, so tf2onnx sees no captured inputs.
    """
    # The SpecLoss object itself, not its bound method: TensorFlow counts traces per code object,
    # so many graphs built from one method looked like "excessive retracing" and warned.
    return tf.function(SpecLoss(spec), input_signature=input_signature(spec), autograph=False)
