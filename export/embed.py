"""``embed``: one SavedModel that runs a model and its loss: the model's inputs plus labels in,
the model's outputs plus the per-sample loss out (``serving_default``).

The loss is the artifact's own TensorFlow graph (its SavedModel's ``per_sample`` signature),
not a rebuild from ``spec.json``, and only once the artifact's files agree on the loss
(`export.consistency`, with the SavedModel run on the stored inputs): an edited ``spec.json``
is refused, naming it. An artifact exported without a SavedModel has only its spec to build
TensorFlow's graph from, confirmed the same way against its ONNX model and reference outputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from export import artifact, consistency, writing
from export.errors import ArtifactError, UsageError
from export.quiet import import_tensorflow, silenced_stderr
from focal_graph.spec import FocalSpec

LOSS_OUTPUT = "per_sample_loss"
LOSS_SIGNATURE = "per_sample"  # the artifact SavedModel's signature embed calls
tf = import_tensorflow()  # this module is TensorFlow's side; the command line imports it only for embed


def embed(*, savedmodel, output: str, loss, out, force: bool = False, signature: str = "serving_default",
          public_key=None) -> Path:
    """Write to ``out`` a SavedModel whose ``serving_default`` takes the inputs of
    ``savedmodel``'s ``signature`` plus the loss's labels (``labels`` or ``targets``), and returns
    that signature's outputs plus ``per_sample_loss``: the loss at ``loss`` (an artifact
    directory) applied to the output ``output``. All or nothing, like ``export``.

    ``public_key``: refuse the loss artifact unless its signature verifies with this public key
    (`export.signing.verify`). Raises `ArtifactError` for a loss artifact whose files disagree.
    """
    destination = writing.check_outputs({"--out": out}, {"--loss": loss, "--savedmodel": savedmodel}, directory=True,
                                        force=force)["--out"]
    if public_key is not None:
        from export import signing

        signing.verify(loss, public_key)
    spec, loss_function = _loss(loss)
    try:
        with silenced_stderr():
            loaded = tf.saved_model.load(str(savedmodel))
    except Exception as error:  # OSError, or TF's own errors for a directory that is not a SavedModel
        raise UsageError(f"--savedmodel: {savedmodel} is not a readable SavedModel ({type(error).__name__})") from None
    if signature not in loaded.signatures:
        raise UsageError(f"--savedmodel: {savedmodel} has no signature {signature!r} (it has: {', '.join(loaded.signatures)})")
    model_function = loaded.signatures[signature]
    inputs = dict(model_function.structured_input_signature[1])
    outputs = dict(model_function.structured_outputs)
    if output not in outputs:
        raise UsageError(f"--output: {output!r} is not an output of {savedmodel} (outputs: {', '.join(outputs)})")
    _check_compatible(spec, outputs[output], output)
    true_name = spec.input_names[0]
    if true_name in inputs:
        raise UsageError(f"--savedmodel: the model already has an input named {true_name!r}")
    if LOSS_OUTPUT in outputs:
        raise UsageError(f"--savedmodel: the model already has an output named {LOSS_OUTPUT!r}")

    from focal_graph.graph import input_signature

    module = _Embedded(loaded, signature, loss_function, output, spec.input_names, spec.sparse)
    label_spec = input_signature(spec)[0]
    specs = {name: tf.TensorSpec(value.shape, value.dtype, name=name) for name, value in inputs.items()}
    # Sparse labels of any rank: (N, 1) works in training (the Keras wrapper squeezes it) and must
    # work here; `_Embedded` squeezes it or refuses the shape.
    label_shape = None if spec.sparse else label_spec.shape
    specs[true_name] = tf.TensorSpec(label_shape, label_spec.dtype, name=true_name)
    concrete = tf.function(module.__call__, autograph=False).get_concrete_function(**specs)
    with writing.staged(destination, force=force) as stage:
        with silenced_stderr():
            tf.saved_model.save(module, str(stage), signatures={"serving_default": concrete})
        # verifiable like an artifact, and replaceable with --force
        artifact.write_manifest(stage, spec.name, {"embedded": {"savedmodel": str(savedmodel), "output": output}})
    return Path(out)


def embed_keras(model, *, loss, out, output: str | None = None, force: bool = False) -> Path:
    """The same for an in-memory Keras model: it is exported (``model.export``) to a temporary
    SavedModel first. ``output`` defaults to its only output (``output_0``)."""
    with tempfile.TemporaryDirectory() as scratch:
        with silenced_stderr():
            model.export(str(Path(scratch) / "model"), format="tf_saved_model", verbose=False)
        return embed(savedmodel=Path(scratch) / "model", output=output or "output_0", loss=loss, out=out, force=force)


class _Embedded(tf.Module):
    """The model's signature, then the loss on one of its outputs. Holding the loaded SavedModels
    as attributes makes tf.saved_model.save keep their variables and functions."""

    def __init__(self, loaded, signature: str, loss, output: str, input_names: tuple[str, str], sparse: bool):
        super().__init__()
        self.model = loaded
        self.loss = loss  # the loss artifact's loaded SavedModel, or (without one) a SpecLoss
        self._signature, self._output, self._input_names, self._sparse = signature, output, input_names, sparse

    def __call__(self, **inputs):
        true_name, prediction_name = self._input_names
        labels = inputs.pop(true_name)
        outputs = self.model.signatures[self._signature](**inputs)
        predictions = outputs[self._output]
        if self._sparse:
            labels = _labels_as_in_training(labels, predictions)
        if hasattr(self.loss, "signatures"):
            loss = self.loss.signatures[LOSS_SIGNATURE](**{true_name: labels, prediction_name: predictions})
            return {**outputs, LOSS_OUTPUT: loss[LOSS_SIGNATURE]}
        return {**outputs, LOSS_OUTPUT: self.loss.forms(labels, predictions)["per_sample"]}


def _labels_as_in_training(labels, logits):
    """Sparse labels (...) or (..., 1) as the Keras wrapper takes them, (...) out, where (...) is
    the model output's shape without its class axis. Any other shape raises at run time, naming
    the shapes (never a broadcast to an (N, 1) loss of NaN)."""
    rank = logits.shape.rank - 1
    labels = tf.cond(tf.equal(tf.rank(labels), rank + 1), lambda: tf.squeeze(labels, axis=-1), lambda: labels)
    labels = tf.ensure_shape(labels, [None] * rank)
    tf.debugging.assert_equal(
        tf.shape(labels), tf.shape(logits)[:-1],
        message="labels: expected the model output's shape without its class axis, or that shape with a trailing 1",
    )
    return labels


def _loss(path) -> tuple[FocalSpec, object]:
    """The loss artifact's spec and TensorFlow loss: its SavedModel, loaded, once its files are
    confirmed to agree (the SavedModel on the stored inputs among them); without a SavedModel, the
    spec's graph, once the spec is confirmed against the ONNX model and the stored outputs."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"--loss: {path} is not an artifact directory")
    spec = artifact.loss_artifact(path)
    saved_model_path = path / artifact.SAVED_MODEL
    if not saved_model_path.is_dir():
        consistency.confirm_artifact(path, spec)
        from focal_graph.graph import SpecLoss

        return spec, SpecLoss(spec)
    try:
        with silenced_stderr():
            loaded = tf.saved_model.load(str(saved_model_path))
        function = loaded.signatures[LOSS_SIGNATURE]
    except Exception as error:  # TF's errors for a SavedModel it cannot load, KeyError for a missing signature
        raise ArtifactError(f"{saved_model_path}: not a loss SavedModel with a {LOSS_SIGNATURE!r} signature "
                            f"({type(error).__name__})") from None

    def forms(inputs, forms_wanted):
        with silenced_stderr():
            result = function(**{name: tf.constant(value) for name, value in inputs.items()})
        return {form: result[form].numpy() for form in forms_wanted}

    cases, _ = consistency.stored_cases(path)
    # per_sample only (the form embed uses) on the cases of the first stored shape (random values
    # and every edge case): XLA compiles once per signature and shape, about 0.3 s each here
    cases = [case for case in cases if case.shape == cases[0].shape]
    witness = consistency.saved_model_witness(forms, cases, forms=(LOSS_SIGNATURE,))
    consistency.confirm_artifact(path, spec, saved_model=witness)
    return spec, loaded


def _check_compatible(spec: FocalSpec, output_spec, name: str) -> None:
    if spec.weighted:
        raise UsageError("--loss: a weighted loss (its graph takes weights) cannot be embedded; export it without --weighted")
    if output_spec.dtype.name != spec.dtype:
        raise UsageError(f"--loss: it takes {spec.dtype} {spec.input_names[1]}; output {name!r} is {output_spec.dtype.name}")
    rank = output_spec.shape.rank
    if rank is not None and rank != spec.rank:
        raise UsageError(f"--loss: it takes rank-{spec.rank} {spec.input_names[1]}; output {name!r} has rank {rank}")
    classes = output_spec.shape[spec.class_axis] if rank else None
    if spec.num_classes is not None and classes is not None and classes != spec.num_classes:
        raise UsageError(f"--loss: it fixes C={spec.num_classes}; output {name!r} has {classes} classes")
