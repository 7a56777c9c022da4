"""Keras `Loss` wrappers: each stores its arguments and calls the function; no math of its own.

All are registered (package ``focal_graph``), so a model compiled with one saves to ``.keras``
and loads back once this module is imported. Keras reduces the per-position output (by default
the mean over the batch, honouring ``sample_weight``); ``SparseSoftmaxFocalLoss``, ``SigmoidFocalLoss`` and
``FocalSpecLoss`` mark ``ignore_index`` positions with a Keras mask, so they leave the mean's
denominator. ``SigmoidFocalLoss(normalization=...)`` gives RetinaNet's normalisation by positives.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

try:
    import keras
    import tensorflow as tf
except ModuleNotFoundError as error:  # the base install has no TensorFlow: say what brings it
    if error.name not in ("tensorflow", "keras"):
        raise
    raise ModuleNotFoundError(f"focal_graph.keras needs {error.name}, which is not installed here: "
                              "pip install 'focalgraph[tensorflow]'", name=error.name) from None

# Keras reads a loss's mask from this attribute setter; it is not re-exported under keras.backend.
from keras.src.backend import set_keras_mask

from focal_graph import presets
from focal_graph.focal import ignored_targets, positive_targets
from focal_graph.graph import SpecLoss, loss_function
from focal_graph.keras_specs import keras_dtype_field, spec_reduction
from focal_graph.params import KERAS_EPSILON, sigmoid_ignore_index
from focal_graph.reduction import NORMALIZED_REDUCTIONS, normalized_sample_terms
from focal_graph.spec import FocalSpec

_PACKAGE = "focal_graph"


class _FocalLoss(keras.losses.Loss):
    """Stores the loss's keyword arguments; `get_config` returns them, `spec` their `FocalSpec`. A
    variant's class names its catalogue kind (``KIND``) and calls the function the catalogue
    names for it; the presets override `spec`."""

    KIND: tuple[str, str] | None = None

    def __init__(self, arguments: dict, *, reduction, name, dtype):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        # get_config must be JSON: per-class values as plain lists of numbers.
        self.arguments = {key: _plain(value) for key, value in arguments.items()}

    def _variant_loss(self, y_true, y_pred):
        return loss_function(self.KIND)(y_true, y_pred, **self.arguments)

    def get_config(self) -> dict:
        return {**super().get_config(), **self.arguments}

    @property
    def spec(self) -> FocalSpec:
        """The `FocalSpec` of this loss as Keras applies it: ``SpecLoss(loss.spec)`` gives the same
        numbers as ``loss`` (no sample weights), its reduction included (`keras_spec_fields`)."""
        fields = {name: value for name, value in self.arguments.items() if value is not None}
        if fields.get("from_logits", True):
            fields.pop("epsilon", None)  # the stored default clip; logits are never clipped
        return FocalSpec(**{self.KIND[0]: self.KIND[1]}, **fields, **self.keras_spec_fields())

    def keras_spec_fields(self) -> dict:
        """What Keras adds to the loss's arguments: its reduction as the spec's (Keras's default
        mean over the loss values is the spec's ``mean``; `keras_specs.KERAS_REDUCTIONS`), and a
        compute dtype other than float32."""
        return {"reduction": spec_reduction(self.reduction), **keras_dtype_field(self.dtype)}


def warn_if_activated(y_pred, from_logits: bool, activation: str, loss_name: str) -> None:
    """Warn, as Keras's own cross-entropies do, when ``from_logits=True`` meets the output of a
    ``Softmax`` or ``Sigmoid`` activation: the loss then trains on a plausible but wrong number.

    Keras marks its activations' outputs with ``_keras_logits``; in a graph the producing op's
    type tells too (keras/src/backend/tensorflow/nn.py, ``_get_logits``).
    """
    if not from_logits:
        return
    produced = hasattr(y_pred, "_keras_logits") or (
        hasattr(y_pred, "op")
        and not isinstance(y_pred, (tf.__internal__.EagerTensor, tf.Variable))
        and y_pred.op.type == activation
    )
    if produced:
        warnings.warn(
            f"{loss_name}: from_logits=True, but y_pred was produced by a {activation} activation "
            f"and is not logits; pass from_logits=False, or drop the activation. Was this intended?",
            stacklevel=3,
        )


def _plain(value):
    if isinstance(value, (tuple, list)) or hasattr(value, "tolist"):
        return np.asarray(value).tolist()
    return value


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SparseSoftmaxFocalLoss(_FocalLoss):
    """`focal_graph.sparse_softmax_focal_loss` as a Keras loss. Labels (N,) or (N, 1).

    With ``alpha`` per class and ``gamma``, this is also the seed-002 preset
    (`focal_graph.presets.sparse_softmax`): Keras's mean reduction gives the seed's scalar.
    """

    KIND = ("variant", "sparse_softmax")

    def __init__(self, gamma=2.0, alpha=None, class_weight=None, from_logits=True, ignore_index=None,
                 epsilon=KERAS_EPSILON, axis=-1, poly_epsilon=0.0, reduction="sum_over_batch_size",
                 name="sparse_softmax_focal_loss", dtype=None):
        arguments = dict(gamma=gamma, alpha=alpha, class_weight=class_weight, from_logits=from_logits,
                         ignore_index=ignore_index, epsilon=epsilon, axis=axis, poly_epsilon=poly_epsilon)
        super().__init__(arguments, reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        warn_if_activated(y_pred, self.arguments["from_logits"], "Softmax", self.name)
        class_axis = self.arguments["axis"] % y_pred.shape.rank
        if y_true.shape.rank == y_pred.shape.rank and y_true.shape[class_axis] == 1:
            y_true = tf.squeeze(y_true, axis=class_axis)  # labels (N, 1) or (N, 1, H, W) as Keras passes them
        loss = self._variant_loss(y_true, y_pred)
        ignore_index = self.arguments["ignore_index"]
        if ignore_index is not None:
            set_keras_mask(loss, tf.not_equal(y_true, tf.cast(ignore_index, y_true.dtype)))
        return loss


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SoftmaxFocalLoss(_FocalLoss):
    """`focal_graph.softmax_focal_loss` as a Keras loss (one-hot or soft targets)."""

    KIND = ("variant", "softmax")

    def __init__(self, gamma=2.0, alpha=None, class_weight=None, from_logits=True, label_smoothing=0.0,
                 epsilon=KERAS_EPSILON, axis=-1, poly_epsilon=0.0, reduction="sum_over_batch_size",
                 name="softmax_focal_loss", dtype=None):
        arguments = dict(gamma=gamma, alpha=alpha, class_weight=class_weight, from_logits=from_logits,
                         label_smoothing=label_smoothing, epsilon=epsilon, axis=axis, poly_epsilon=poly_epsilon)
        super().__init__(arguments, reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        warn_if_activated(y_pred, self.arguments["from_logits"], "Softmax", self.name)
        return self._variant_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SigmoidFocalLoss(_FocalLoss):
    """`focal_graph.sigmoid_focal_loss` as a Keras loss.

    Without ``normalization`` the output is per class (..., C) and Keras reduces it (by default
    its mean), ``ignore_index`` elements masked out of the mean's denominator as
    `SparseSoftmaxFocalLoss` does.

    ``normalization="normalized"`` (RetinaNet: the batch's summed loss over ``max(1, P)``, P the
    positive targets (> 0.5) that are not ``ignore_index``) or ``"per_sample_normalized"``
    (torchvision: the mean over samples of each sample's sum over ``max(1, P_n)``): the loss
    returns one term per sample (`focal_graph.reduction.normalized_sample_terms`) whose Keras
    mean (``reduction="sum_over_batch_size"``, the default) is that figure, the artifact's
    output of the same name; a ``sample_weight`` weighs each sample's term. Any other Keras
    reduction would report a multiple of it, so it is refused, except ``None``/``"none"`` with
    ``per_sample_normalized`` (the per-sample values themselves).
    """

    KIND = ("variant", "sigmoid")

    def __init__(self, gamma=2.0, alpha=None, class_weight=None, from_logits=True, label_smoothing=0.0,
                 ignore_index=None, normalization=None, epsilon=KERAS_EPSILON, axis=-1, poly_epsilon=0.0,
                 gamma_negative=None, probability_margin=0.0, reduction="sum_over_batch_size",
                 name="sigmoid_focal_loss", dtype=None):
        sigmoid_ignore_index(ignore_index)
        if normalization is not None:
            if normalization not in NORMALIZED_REDUCTIONS:
                raise ValueError(f"normalization: expected None or one of {', '.join(NORMALIZED_REDUCTIONS)}, "
                                 f"got {normalization!r}")
            allowed = ("sum_over_batch_size",) + ((None, "none") if normalization == "per_sample_normalized" else ())
            if reduction not in allowed:
                raise ValueError(f"reduction: normalization={normalization!r} is Keras's mean of per-sample terms; "
                                 f"expected reduction {' or '.join(map(repr, allowed))}, got {reduction!r}")
        arguments = dict(gamma=gamma, alpha=alpha, class_weight=class_weight, from_logits=from_logits,
                         label_smoothing=label_smoothing, ignore_index=ignore_index, epsilon=epsilon, axis=axis,
                         poly_epsilon=poly_epsilon, gamma_negative=gamma_negative,
                         probability_margin=probability_margin)
        super().__init__(arguments, reduction=reduction, name=name, dtype=dtype)
        self.normalization = normalization

    def call(self, y_true, y_pred):
        warn_if_activated(y_pred, self.arguments["from_logits"], "Sigmoid", self.name)
        loss = self._variant_loss(y_true, y_pred)
        ignore_index = self.arguments["ignore_index"]
        if self.normalization is not None:
            return normalized_sample_terms(loss, positive_targets(y_true, ignore_index), self.normalization)
        if ignore_index is not None:
            set_keras_mask(loss, tf.logical_not(ignored_targets(y_true, ignore_index)))
        return loss

    def get_config(self) -> dict:
        return {**super().get_config(), "normalization": self.normalization}

    def keras_spec_fields(self) -> dict:
        """With ``normalization``, the spec's reduction is that form: Keras's mean of the
        per-sample terms is the artifact's ``normalized``, and the mean of its
        ``per_sample_normalized`` vector (the vector itself with ``reduction=None``)."""
        fields = super().keras_spec_fields()
        if self.normalization is not None:
            fields["reduction"] = self.normalization
        return fields


class _PresetLoss(_FocalLoss):
    """A preset's unreduced output (the per-sample vector the seed returned to Keras)."""

    def __init__(self, preset: SpecLoss, arguments: dict, *, reduction, name, dtype):
        super().__init__(arguments, reduction=reduction, name=name, dtype=dtype)
        self._preset = preset

    @property
    def spec(self) -> FocalSpec:
        """The preset's (or given) spec, with the reduction and dtype Keras applies."""
        return dataclasses.replace(self._preset.spec, **self.keras_spec_fields())

    def call(self, y_true, y_pred):
        spec = self._preset.spec
        warn_if_activated(y_pred, spec.from_logits, "Sigmoid" if spec.multi_label else "Softmax", self.name)
        loss = self._preset.unreduced(y_true, y_pred)
        mask = self._preset.mask(y_true)  # ignore_index positions leave Keras's mean
        if mask is not None:
            set_keras_mask(loss, mask)
        return loss


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultilabelLSRFocalLoss(_PresetLoss):
    """Seed 000 (`focal_graph.presets.multilabel_lsr`): per-sample loss, shape (N,). ``epsilon``
    None is the seed's own LSR weight (`focal_graph.catalogue.SEED_000_LSR_WEIGHT`)."""

    def __init__(self, class_counts, gamma=2.0, epsilon=None, reduction="sum_over_batch_size",
                 name="multilabel_lsr_focal_loss", dtype=None):
        preset = presets.multilabel_lsr(class_counts, gamma=gamma, epsilon=epsilon)
        arguments = dict(class_counts=class_counts, gamma=gamma, epsilon=epsilon)
        super().__init__(preset, arguments, reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiCategoryFocalLoss(_PresetLoss):
    """Seed 001 (`focal_graph.presets.multi_category`): per-sample loss, shape (N, 1)."""

    def __init__(self, class_counts, gamma=2.0, reduction="sum_over_batch_size",
                 name="multi_category_focal_loss", dtype=None):
        preset = presets.multi_category(class_counts, gamma=gamma)
        arguments = dict(class_counts=class_counts, gamma=gamma)
        super().__init__(preset, arguments, reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FocalSpecLoss(_PresetLoss):
    """Any `FocalSpec` (variant or preset) as a Keras loss; the spec's own reduction is not applied."""

    def __init__(self, spec, reduction="sum_over_batch_size", name="focal_spec_loss", dtype=None):
        spec = spec if isinstance(spec, FocalSpec) else FocalSpec.from_dict(spec)
        if spec.weighted:  # Keras's call has no third input: its sample_weight is the way
            raise ValueError("weighted: a Keras loss takes its weights as sample_weight; give an unweighted spec")
        super().__init__(SpecLoss(spec), dict(spec=spec.to_dict()), reduction=reduction, name=name, dtype=dtype)
