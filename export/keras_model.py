"""``export --keras MODEL.keras``: the loss a saved Keras model was compiled with, as a `FocalSpec`.

The model is rebuilt from the archive's ``config.json`` alone (Keras's own deserialisation, in
its safe mode, which refuses to run code stored in the file, and in a stateless scope, so its
variables get shapes but no values), and its compiled loss deserialised on its own: the weights
are neither read nor created and no optimizer state is, whatever the model's size. The loss
comes from `FocalSpec.from_keras`; the model's output fixes the spec's ``rank`` and, where it is
known, the class count C.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
import zipfile
from pathlib import Path

from export.errors import UsageError
from focal_graph.keras_specs import UntranslatedWarning
from focal_graph.spec import FocalSpec

MAX_CONFIG_BYTES = 64 << 20  # a model's config.json; this bounds what --keras reads into memory
_READABLE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def spec_from_keras_model(path) -> FocalSpec:
    """The spec of the loss the ``.keras`` model at ``path`` was compiled with, at the rank (and
    C) of the model's output. Raises `UsageError` naming ``--keras`` for a file that is not a
    ``.keras`` model, a model without a loss or with one loss per output, a loss that is not a
    focal loss or an argument of it that does not translate."""
    path = Path(path)
    config = _model_config(path)
    loss_config = (config.get("compile_config") or {}).get("loss")
    if loss_config is None:
        raise UsageError(f"--keras: {path} was saved without a compiled loss (compile the model, then save it)")

    from export.quiet import import_tensorflow, silenced_stderr

    import_tensorflow()
    import keras

    import focal_graph.keras  # noqa: F401 -- registers focalgraph's losses, so Keras can rebuild them

    try:
        with silenced_stderr():
            # compile_config None: compiling would build the optimizer's variables, as large as the
            # weights. A stateless scope that does not initialise its variables on exit: the layers
            # get their variables' shapes and the model its output's, and no variable a value (a
            # 1.1 KB .keras declaring Dense(20000) on a 20000-wide input peaked at 5.6 GB without it)
            with keras.StatelessScope(initialize_variables=False):
                model = keras.saving.deserialize_keras_object({**config, "compile_config": None}, safe_mode=True)
            _forget_uninitialized_variables()
            losses = keras.saving.deserialize_keras_object(loss_config, safe_mode=True)
    except Exception as error:  # noqa: BLE001 -- whatever Keras raises on a config it cannot rebuild
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"--keras: Keras cannot rebuild the model in {path} ({reason})") from None
    loss, output = _the_loss(path, model, losses)
    try:
        spec = FocalSpec.from_keras(loss)
    except ValueError as error:
        raise UsageError(f"--keras: {path}: {error}") from None
    _warn_if_trained_from_logits(loss, spec, output)
    return _at_model_output(path, spec, None if output is None else tuple(output.shape))


def _forget_uninitialized_variables() -> None:
    """Keras lists the variables a stateless scope left without a value, and the next scope that
    initialises on exit gives them all one: the model's, as large as its weights. The list is
    Keras's own global state (keras/src/backend/common/variables.py); emptied here. A Keras that
    moved it keeps the list; `export --format onnx --no-validate` of a 20000-wide model then still
    peaked at 1884 MB (nothing on that path initialises it)."""
    try:
        from keras.src.backend.common import global_state

        global_state.set_global_attribute("uninitialized_variables", [])
    except (ImportError, AttributeError):
        pass


def _model_config(path: Path) -> dict:
    try:
        # O_NONBLOCK: a FIFO would block open() itself until a writer came, before the check below
        # could refuse it; a regular file ignores the flag
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise UsageError(f"--keras: {path} is not a regular file")
            if not zipfile.is_zipfile(file):
                raise UsageError(f"--keras: {path} is not a .keras model (not a zip archive)")
            with zipfile.ZipFile(file) as archive:
                try:
                    member = archive.getinfo("config.json")
                except KeyError:
                    raise UsageError(f"--keras: {path} is not a .keras model (no config.json in the archive)") from None
                # zipfile raises its own NotImplementedError / RuntimeError for these; Keras writes neither
                if member.flag_bits & 0x1:
                    raise UsageError(f"--keras: {path}: config.json is encrypted in the archive; "
                                     "a .keras model's config.json is not")
                if member.compress_type not in _READABLE_METHODS:
                    raise UsageError(f"--keras: {path}: config.json uses zip compression method {member.compress_type}, "
                                     "which cannot be read here (stored, deflate, bzip2 or lzma)")
                if member.file_size > MAX_CONFIG_BYTES:
                    raise UsageError(f"--keras: {path}: config.json is larger than {MAX_CONFIG_BYTES >> 20} MiB")
                text = archive.read(member).decode("utf-8")
    except OSError as error:
        raise UsageError(f"--keras: cannot read {path} ({error.strerror or error})") from None
    except (zipfile.BadZipFile, UnicodeDecodeError, EOFError) as error:
        raise UsageError(f"--keras: {path} is not a readable .keras model ({error})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        raise UsageError(f"--keras: {path} is not a .keras model (its config.json is not JSON)") from None
    except RecursionError:  # Python's JSON reader recurses once per level: about 1000 levels
        raise UsageError(f"--keras: {path}: its config.json is nested too deeply to read (a model's config is a few "
                         "dozen levels deep)") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise UsageError(f"--keras: {path} is not a .keras model (its config.json describes no model)")
    return config


def _the_loss(path: Path, model, loss):
    """The one loss of ``loss`` (what ``compile`` took: a loss, or one per output), and the model
    output it scores (None if the model does not say)."""
    outputs = list(getattr(model, "outputs", None) or [])
    names = list(getattr(model, "output_names", None) or [])  # Sequential models have none
    if isinstance(loss, dict):
        given = {name: value for name, value in loss.items() if value is not None}
    elif isinstance(loss, (list, tuple)):
        given = {names[i] if i < len(names) else str(i): value for i, value in enumerate(loss) if value is not None}
    else:
        given = {} if loss is None else {None: loss}
    if not given:
        raise UsageError(f"--keras: {path} was saved without a compiled loss (compile the model, then save it)")
    if len(given) > 1:
        raise UsageError(f"--keras: {path} has a loss for each of the outputs {', '.join(map(str, given))}; "
                         "export one of them with --variant/--spec")
    (name, loss), = given.items()
    if len(outputs) == 1:
        return loss, outputs[0]
    if name in names and len(outputs) == len(names):
        return loss, outputs[names.index(name)]
    return loss, None


def _warn_if_trained_from_logits(loss, spec: FocalSpec, output) -> None:
    """Keras's BinaryFocalCrossentropy on probabilities takes its cross-entropy from the logits of
    a sigmoid activation when there is one (keras/src/backend/tensorflow/nn.py, ``_get_logits``),
    without a clip; the spec has only the probabilities. Said in one line."""
    if isinstance(getattr(loss, "spec", None), FocalSpec) or spec.variant != "sigmoid" or spec.from_logits:
        return  # focalgraph's own losses never look behind the activation
    layer = getattr(getattr(output, "_keras_history", None), "operation", None)
    if getattr(getattr(layer, "activation", None), "__name__", None) == "sigmoid":
        warnings.warn(
            f"from_logits: the model's output is a sigmoid activation, and Keras's BinaryFocalCrossentropy took its "
            f"cross-entropy from that activation's logits, unclipped; the spec takes the probabilities, clipped to "
            f"[{spec.epsilon:g}, 1 - {spec.epsilon:g}]: the losses agree while every probability is in that range",
            UntranslatedWarning, stacklevel=3)


def _at_model_output(path: Path, spec: FocalSpec, shape) -> FocalSpec:
    """``spec`` at the rank of the model's output, with C fixed where the output fixes it."""
    if shape is None:
        return spec
    fields = spec.to_dict()
    fields["rank"] = len(shape)
    classes = shape[-1 if spec.axis is None else spec.axis]  # the class axis: channels-first with axis 1
    if classes is not None:
        if spec.num_classes is not None and spec.num_classes != classes:
            raise UsageError(f"--keras: {path}: the loss takes {spec.num_classes} classes, the model outputs {classes}")
        fields["num_classes"] = classes
    try:
        return FocalSpec.from_dict(fields)
    except ValueError as error:
        raise UsageError(f"--keras: {path}: the model's output {shape}: {error}") from None
