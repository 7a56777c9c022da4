"""``export --keras MODEL.keras``: the loss a saved Keras model was compiled with, as a `FocalSpec`.

The model is rebuilt from the archive's ``config.json`` alone (Keras's own deserialisation, in
its safe mode, which refuses to run code stored in the file), and its compiled loss deserialised
on its own: the weights are never read and no optimizer state is created, whatever the model's
size. The loss comes from `FocalSpec.from_keras`; the model's output fixes the spec's ``rank``
and, where it is known, the class count C.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

from export.errors import UsageError
from focal_graph.spec import FocalSpec

MAX_CONFIG_BYTES = 64 << 20  # a model's config.json; this bounds what --keras reads into memory


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
            # compile_config None: compiling would build the optimizer's variables, as large as the weights
            model = keras.saving.deserialize_keras_object({**config, "compile_config": None}, safe_mode=True)
            losses = keras.saving.deserialize_keras_object(loss_config, safe_mode=True)
    except Exception as error:  # noqa: BLE001 -- whatever Keras raises on a config it cannot rebuild
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"--keras: Keras cannot rebuild the model in {path} ({reason})") from None
    loss, output_shape = _the_loss(path, model, losses)
    try:
        spec = FocalSpec.from_keras(loss)
    except ValueError as error:
        raise UsageError(f"--keras: {path}: {error}") from None
    return _at_model_output(path, spec, output_shape)


def _model_config(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise UsageError(f"--keras: {path} is not a regular file")
            if not zipfile.is_zipfile(file):
                raise UsageError(f"--keras: {path} is not a .keras model (not a zip archive)")
            with zipfile.ZipFile(file) as archive:
                try:
                    member = archive.getinfo("config.json")
                except KeyError:
                    raise UsageError(f"--keras: {path} is not a .keras model (no config.json in the archive)") from None
                if member.file_size > MAX_CONFIG_BYTES:
                    raise UsageError(f"--keras: {path}: config.json is larger than {MAX_CONFIG_BYTES >> 20} MiB")
                text = archive.read(member).decode("utf-8")
    except OSError as error:
        raise UsageError(f"--keras: cannot read {path} ({error.strerror or error})") from None
    except (zipfile.BadZipFile, UnicodeDecodeError, EOFError) as error:
        raise UsageError(f"--keras: {path} is not a readable .keras model ({error})") from None
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise UsageError(f"--keras: {path} is not a .keras model (its config.json is not JSON)") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise UsageError(f"--keras: {path} is not a .keras model (its config.json describes no model)")
    return config


def _the_loss(path: Path, model, loss):
    """The one loss of ``loss`` (what ``compile`` took: a loss, or one per output), and the shape of
    the output it scores (None if the model does not say)."""
    names = list(getattr(model, "output_names", None) or [])
    shapes = [tuple(output.shape) for output in getattr(model, "outputs", None) or []]
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
    (output, loss), = given.items()
    if output is None:
        shape = shapes[0] if len(set(shapes)) == 1 else None  # one output, or the same loss on equal outputs
    else:
        shape = shapes[names.index(output)] if output in names and len(shapes) == len(names) else None
    return loss, shape


def _at_model_output(path: Path, spec: FocalSpec, shape) -> FocalSpec:
    """``spec`` at the rank of the model's output, with C fixed where the output fixes it."""
    if shape is None:
        return spec
    fields = spec.to_dict()
    fields["rank"] = len(shape)
    classes = shape[-1]
    if classes is not None:
        if spec.num_classes is not None and spec.num_classes != classes:
            raise UsageError(f"--keras: {path}: the loss takes {spec.num_classes} classes, the model outputs {classes}")
        fields["num_classes"] = classes
    try:
        return FocalSpec.from_dict(fields)
    except ValueError as error:
        raise UsageError(f"--keras: {path}: the model's output {shape}: {error}") from None
