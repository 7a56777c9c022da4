"""TensorFlow's side: the SavedModel with one signature per form, and its outputs on cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.artifact import KNOWN_FORMS, FORMS
from export.artifact import forms as spec_forms
from export.cases import Case
from export.quiet import import_tensorflow, silenced_stderr
from focal_graph.spec import FocalSpec

# SavedModel signature -> the form it returns (one output, named after the form).
# serving_default is the unreduced loss, as serving clients expect of the default signature.
SIGNATURES = {"serving_default": "loss", **{form: form for form in KNOWN_FORMS if form != "loss"}}


def spec_signatures(spec: FocalSpec) -> dict[str, str]:
    """`SIGNATURES` of the forms ``spec``'s artifacts carry (`export.artifact.forms`)."""
    carried = spec_forms(spec)
    return {name: form for name, form in SIGNATURES.items() if form in carried}


class _Form:
    """One form of a spec's loss, as a callable with the spec's input names."""

    def __init__(self, loss, form: str):
        self.loss, self.form = loss, form

    def __call__(self, *inputs):  # y_true, y_pred[, weights]
        return {self.form: self.loss.forms(*inputs)[self.form]}


def save_saved_model(spec: FocalSpec, path: Path, xla: bool = True) -> None:
    """A SavedModel at ``path`` whose signatures (`SIGNATURES`) take the spec's named inputs.

    With ``xla`` the signatures are compiled by XLA (``jit_compile``): at N x C = 16384 x 1000 the
    sparse-softmax loss took 7.7 ms against 13.5 ms without (tests' `focalgraph bench`), as XLA
    fuses the max, exp and sum passes; each new input shape costs a compilation (about 0.1 s
    here), so ``--no-xla`` suits callers whose shapes rarely repeat.
    """
    tf = import_tensorflow()
    from focal_graph.graph import SpecLoss, input_signature

    loss = SpecLoss(spec)
    module = tf.Module()
    signatures = {}
    for name, form in spec_signatures(spec).items():
        function = tf.function(_Form(loss, form), input_signature=input_signature(spec), autograph=False,
                               jit_compile=xla)
        setattr(module, name, function)
        signatures[name] = function.get_concrete_function()
    with silenced_stderr():
        tf.saved_model.save(module, str(path), signatures=signatures)


def outputs_from_saved_model(path: Path, cases: list[Case]) -> dict:
    """``{case name: {form: array}}`` from the SavedModel's signatures."""
    run = saved_model_forms(path)
    return {case.name: run(case.inputs, case.forms) for case in cases}


def saved_model_forms(path: Path):
    """The SavedModel at ``path``, loaded once, as ``run(inputs, forms=FORMS) -> {form: array}``
    (one signature per form; ``inputs`` by name). Loading once matters: XLA compiles each
    signature once per input shape and loaded object."""
    tf = _tensorflow_for_parity()
    with silenced_stderr():
        loaded = tf.saved_model.load(str(path))
    # every signature the SavedModel has: FORMS always, NORMALIZED_FORMS where the spec has them
    functions = {form: loaded.signatures[name] for name, form in SIGNATURES.items()
                 if form in FORMS or name in loaded.signatures}

    def run(inputs: dict, forms=FORMS) -> dict:
        with silenced_stderr():  # XLA logs its first compilation at INFO level
            tensors = {name: tf.constant(value) for name, value in inputs.items()}
            return {form: functions[form](**tensors)[form].numpy() for form in forms}

    run.loaded = loaded  # the signatures need the loaded object alive
    return run


def forms_function(spec: FocalSpec):
    """A `tf.function` with the spec's input signature returning every form (`SpecLoss.forms`):
    what tf2onnx converts, and TensorFlow's reference for an artifact without a SavedModel."""
    tf = import_tensorflow()
    from focal_graph.graph import SpecLoss, input_signature

    loss = SpecLoss(spec)
    return tf.function(lambda *inputs: loss.forms(*inputs), input_signature=input_signature(spec), autograph=False)


def outputs_from_spec(spec: FocalSpec, cases: list[Case]) -> dict:
    """``{case name: {form: array}}`` from the spec's graph, built afresh."""
    tf = _tensorflow_for_parity()
    function = forms_function(spec)
    return {
        case.name: {form: np.asarray(value) for form, value in function(*map(tf.constant, case.inputs.values())).items()
                    if form in case.forms}
        for case in cases
    }


def _tensorflow_for_parity():
    tf = import_tensorflow()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    return tf
