"""From a `FocalSpec` to a callable loss and to a `tf.function` graph with a fixed signature."""

from __future__ import annotations

import importlib
from typing import Callable

import tensorflow as tf

from focal_graph import catalogue
from focal_graph.focal import ignored_targets, positive_targets
from focal_graph.reduction import reduce_loss, reductions
from focal_graph.spec import FocalSpec
from focal_graph.weights import class_weights


def loss_function(kind: tuple[str, str]) -> Callable:
    """The TensorFlow function the catalogue names for ``kind`` (`focal_graph.catalogue`)."""
    module, name = catalogue.KINDS[kind].function.split(":")
    return getattr(importlib.import_module(module), name)


class SpecLoss:
    """``loss(y_true, y_pred)`` for a spec: its loss function, then its reduction.

    ``y_true`` is integer labels (...) for sparse losses, targets (..., C) otherwise (the class
    axis where the spec's ``axis`` puts it). A mean leaves ``ignore_index`` positions out of its
    denominator. A weighted spec's loss takes ``weights`` (the unreduced loss's shape) too, and its
    mean is ``sum(w loss) / sum(w)``.
    """

    def __init__(self, spec: FocalSpec):
        self.spec = spec
        self._function = loss_function(spec.kind)
        # Fields that do not apply stay None in the spec; the function's own default then holds.
        arguments = {name: getattr(spec, name) for name in spec.record.arguments if getattr(spec, name) is not None}
        if spec.class_counts is not None:
            # presets leave weighting unset: the seeds' inverse frequency; beta is set only (and
            # always) with effective_number
            method = spec.weighting or "inverse_frequency"
            beta = {} if spec.beta is None else {"beta": spec.beta}
            arguments["class_weight"] = tuple(class_weights(spec.class_counts, method, **beta))
        self.arguments = arguments

    @property
    def sparse(self) -> bool:
        return self.spec.sparse

    def unreduced(self, y_true, y_pred, weights=None) -> tf.Tensor:
        if (weights is not None) != bool(self.spec.weighted):
            raise ValueError("weights: " + ("the spec is weighted; pass weights of the loss's shape" if weights is None
                                            else "the spec is not weighted (weighted=True takes them)"))
        if weights is not None:
            return self._function(y_true, y_pred, weights=weights, **self.arguments)
        return self._function(y_true, y_pred, **self.arguments)

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

    def __call__(self, y_true, y_pred, weights=None) -> tf.Tensor:
        loss = self.unreduced(y_true, y_pred, weights)
        return reduce_loss(loss, self.spec.reduction, self.mask(y_true), weights=weights,
                           positives=self.positives(y_true))

    def forms(self, y_true, y_pred, weights=None) -> dict[str, tf.Tensor]:
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
        counted = dict(mask=self.mask(y_true), weights=weights, positives=self.positives(y_true))
        if y_pred.dtype in (tf.float16, tf.bfloat16):
            # Reduce the float32 loss the functions compute anyway, before its cast back to 16
            # bits: a float16 loss below 6e-8 is 0, and its sum over 40000 x 100 overflows.
            loss = self.unreduced(y_true, tf.cast(y_pred, tf.float32), weights)
            return {"loss": tf.cast(loss, y_pred.dtype), **reductions(loss, **counted)}
        loss = self.unreduced(y_true, y_pred, weights)
        return {"loss": loss, **reductions(loss, **counted)}

    def __repr__(self) -> str:
        return f"SpecLoss({self.spec!r})"


def input_signature(spec: FocalSpec) -> tuple[tf.TensorSpec, ...]:
    """``(labels | targets, logits | probabilities[, weights])``: every dimension None but a fixed
    C, which sits at the spec's class axis. ``weights`` has the unreduced loss's shape."""
    shape = [None] * spec.rank
    shape[spec.class_axis] = spec.num_classes
    without_classes = shape[:spec.class_axis] + shape[spec.class_axis + 1:]
    dtype = tf.as_dtype(spec.dtype)
    true_name, prediction_name = spec.input_names
    predictions = tf.TensorSpec(shape, dtype, name=prediction_name)
    if spec.sparse:
        signature = (tf.TensorSpec(without_classes, tf.int64, name=true_name), predictions)
    else:
        signature = (tf.TensorSpec(shape, dtype, name=true_name), predictions)
    if spec.weighted:
        loss_shape = shape if spec.loss_shape == "classes" else without_classes
        signature += (tf.TensorSpec(loss_shape, dtype, name=catalogue.WEIGHTS),)
    return signature


def build_graph(spec: FocalSpec) -> tf.types.experimental.PolymorphicFunction:
    """The spec's loss as a `tf.function` with an explicit input signature (see `input_signature`).

    Every constant is created inside the traced function, so tf2onnx sees no captured inputs.
    """
    # The SpecLoss object itself, not its bound method: TensorFlow counts traces per code object,
    # so many graphs built from one method looked like "excessive retracing" and warned.
    return tf.function(SpecLoss(spec), input_signature=input_signature(spec), autograph=False)
