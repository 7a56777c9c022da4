"""From a Keras loss to the `FocalSpec` that computes the same numbers (`FocalSpec.from_keras`).

Accepted: focalgraph's Keras losses (`focal_graph.keras`; anything with a ``.spec``), and Keras's
own ``BinaryFocalCrossentropy`` and ``CategoricalFocalCrossentropy`` (as instances, as the
functions ``binary_focal_crossentropy`` and ``categorical_focal_crossentropy``, or by the names
``model.compile`` takes). Where Keras computes a number no spec gives, a ValueError names the
argument; nothing is translated approximately.

This module imports Keras only when it translates one of Keras's own losses, so the warning class
and the reduction table can be read without TensorFlow.
"""

from __future__ import annotations

import warnings

from focal_graph import params
from focal_graph.spec import FocalSpec

# Keras's reduction -> FocalSpec.reduction, for losses whose unreduced output is the spec's own.
# Keras's "sum_over_batch_size" (its default) and "mean" divide the sum by the number of loss
# values, "mean_with_sample_weight" by the sum of the sample weights, which without sample weights
# is the same number; a Keras mask (`ignore_index`) leaves masked positions out of all three, as
# the spec's mean does. Sample weights are an input of Keras's training, not part of the loss.
KERAS_REDUCTIONS = {
    None: "none",
    "none": "none",
    "sum": "sum",
    "sum_over_batch_size": "mean",
    "mean": "mean",
    "mean_with_sample_weight": "mean",
}
KERAS_FOCAL_LOSSES = ("BinaryFocalCrossentropy", "CategoricalFocalCrossentropy")


class UntranslatedWarning(UserWarning):
    """A Keras argument whose effect the spec does not reproduce where it is active (one line)."""


def spec_reduction(reduction) -> str:
    """The `FocalSpec` reduction of a Keras ``reduction`` (see `KERAS_REDUCTIONS`)."""
    if reduction not in KERAS_REDUCTIONS:
        expected = ", ".join(repr(name) for name in KERAS_REDUCTIONS)
        raise ValueError(f"reduction: expected one of Keras's {expected}, got {params.shown(reduction)}")
    return KERAS_REDUCTIONS[reduction]


def keras_dtype_field(dtype) -> dict:
    """``{"dtype": dtype}`` for a Keras loss computing in another dtype than float32, else ``{}``
    (the spec's own dtype stands). Keras does not save a loss's dtype with a model."""
    name = getattr(dtype, "name", dtype)  # a DTypePolicy or a string
    return {} if name in (None, "float32") else {"dtype": name}


def spec_from_keras(loss) -> FocalSpec:
    """The `FocalSpec` whose loss is ``loss``'s: ``SpecLoss(spec)(y_true, y_pred)`` equals
    ``loss(y_true, y_pred)`` (no sample weights), reduction included.

    - focalgraph's losses: their ``.spec``.
    - ``CategoricalFocalCrossentropy(alpha, gamma, from_logits, label_smoothing, axis, reduction)``:
      variant ``softmax`` with the same alpha (a multiplier of every class, scalar or per class),
      gamma, from_logits and label_smoothing (``y (1 - ls) + ls / C``, as ours), and reduction by
      `KERAS_REDUCTIONS`. From probabilities both normalise p to sum 1 and clip it to
      ``[epsilon, 1 - epsilon]`` with Keras's current ``keras.config.epsilon()``. From logits Keras
      clips the softmax too, and the spec does not: the two agree while every probability is within
      ``[epsilon, 1 - epsilon]``; beyond, Keras's loss is capped and the spec's is exact. That is
      said in one `UntranslatedWarning`.
    - ``BinaryFocalCrossentropy(apply_class_balancing, alpha, gamma, from_logits, label_smoothing,
      axis, reduction)``: variant ``sigmoid``, alpha only with ``apply_class_balancing=True`` (Keras
      ignores it otherwise), label smoothing ``y (1 - ls) + ls / 2`` as ours. Keras's unreduced
      loss (..., ) is the mean over the classes of the spec's (..., C), so only Keras's mean
      reductions translate (the spec's ``mean`` over every element is the same number); ``sum``
      and ``None`` are refused. From probabilities Keras clips p in the cross-entropy but not in
      the focal factor, the spec in both: they differ by at most a factor ``(1 - epsilon)**gamma``
      (p below epsilon) or by ``epsilon**(gamma + 1)`` absolute (p above 1 - epsilon).
      On a sigmoid activation's output Keras takes the cross-entropy from the activation's logits
      instead, unclipped; a loss object cannot see that (``export --keras`` sees the model and
      warns, `export.keras_model`).
    - ``axis``: the spec's ``axis`` (1 for channels-first); the spec's rank is 2 until a model's
      output gives it (``export --keras``), so an ``axis`` k beyond 1 gives rank k + 1.
    - ``dtype``: a loss computing in float64 (or float16) gives a spec of that dtype
      (`keras_dtype_field`). ``name`` is not part of the loss.

    Raises ValueError naming the argument that does not translate, or the loss that is not a
    focal loss.
    """
    if isinstance(getattr(loss, "spec", None), FocalSpec):
        return loss.spec
    keras = _keras()

    if isinstance(loss, str) or (callable(loss) and not isinstance(loss, keras.losses.Loss)):
        loss = _keras_focal_instance(loss)
    name = type(loss).__name__
    # Keras's own classes only: a subclass may compute anything
    if name not in KERAS_FOCAL_LOSSES or type(loss) is not getattr(keras.losses, name):
        raise _not_focal(loss)
    config = loss.get_config()
    fields = _shared_fields(config, name, keras.config.epsilon())
    if name == "CategoricalFocalCrossentropy":
        fields.update(variant="softmax", alpha=config["alpha"], reduction=spec_reduction(config["reduction"]))
        if config["from_logits"]:
            warnings.warn(
                f"from_logits: Keras's CategoricalFocalCrossentropy clips the softmax to [{keras.config.epsilon():g}, "
                f"1 - {keras.config.epsilon():g}] even from logits, the spec does not: the losses agree while every "
                "probability is in that range; beyond it Keras's is capped and the spec's is exact",
                UntranslatedWarning, stacklevel=2)
    else:
        if KERAS_REDUCTIONS.get(config["reduction"]) != "mean":
            raise ValueError(
                f"reduction: BinaryFocalCrossentropy(reduction={config['reduction']!r}) gives each position's mean over "
                "the classes, which no FocalSpec reduction gives (the sigmoid spec's loss is per class); only Keras's "
                "mean reductions translate (to the spec's mean)")
        fields.update(variant="sigmoid", reduction="mean")
        if config["apply_class_balancing"]:
            fields["alpha"] = config["alpha"]
    return FocalSpec(**fields, **keras_dtype_field(loss.dtype))


def _shared_fields(config: dict, name: str, epsilon: float) -> dict:
    """The arguments both Keras focal losses have, as FocalSpec fields."""
    axis = config["axis"]
    fields = dict(gamma=config["gamma"], from_logits=config["from_logits"], label_smoothing=config["label_smoothing"],
                  axis=axis)
    if isinstance(axis, int) and axis > 1:
        fields["rank"] = axis + 1  # the least rank with that axis; a model's output sets the real one
    if not config["from_logits"]:
        fields["epsilon"] = epsilon  # Keras reads its backend epsilon when it computes the loss
    return fields


def _keras_focal_instance(loss):
    """Keras's focal-loss function, or a name ``compile`` takes, as the class with its defaults:
    ``binary_focal_crossentropy(y_true, y_pred)`` is ``BinaryFocalCrossentropy()(y_true, y_pred)``
    before reduction."""
    keras = _keras()
    functions = {
        keras.losses.binary_focal_crossentropy: keras.losses.BinaryFocalCrossentropy,
        keras.losses.categorical_focal_crossentropy: keras.losses.CategoricalFocalCrossentropy,
    }
    function = keras.losses.get(loss) if isinstance(loss, str) and loss in _keras_names() else loss
    if isinstance(function, keras.losses.Loss):
        return function
    if function in functions:
        return functions[function]()
    raise _not_focal(loss)


def _keras():
    """Keras, imported only to translate one of its losses; without it, say what brings it."""
    try:
        import keras
    except ModuleNotFoundError as error:
        if error.name not in ("keras", "tensorflow"):
            raise
        raise ModuleNotFoundError(f"FocalSpec.from_keras needs {error.name}, which is not installed here: "
                                  "pip install 'focalgraph[tensorflow]'", name=error.name) from None
    return keras


def _keras_names() -> tuple[str, ...]:
    return KERAS_FOCAL_LOSSES + ("binary_focal_crossentropy", "categorical_focal_crossentropy")


def _not_focal(loss) -> ValueError:
    described = repr(loss) if isinstance(loss, str) else getattr(loss, "__name__", None) or type(loss).__name__
    return ValueError(f"loss: {described} is not a focal loss (expected focalgraph's Keras losses, "
                      "keras.losses.BinaryFocalCrossentropy or keras.losses.CategoricalFocalCrossentropy)")
