"""From command-line style options to a `FocalSpec`. No TensorFlow.

The option names are the command line's (``classes``, ``class_counts``, ...); list-valued
options take a Python sequence or a comma-separated string (``"0.25,0.5,1"``).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from export.errors import UsageError
from focal_graph.spec import PRESETS, VARIANTS, FocalSpec
from focal_graph.weights import WEIGHTINGS

# Option name -> FocalSpec field. Every field has an option.
SPEC_OPTIONS = {
    "classes": "num_classes",
    "gamma": "gamma",
    "alpha": "alpha",
    "class_weight": "class_weight",
    "class_counts": "class_counts",
    "weighting": "weighting",
    "beta": "beta",
    "from_logits": "from_logits",
    "label_smoothing": "label_smoothing",
    "ignore_index": "ignore_index",
    "epsilon": "epsilon",
    "axis": "axis",
    "poly_epsilon": "poly_epsilon",
    "gamma_negative": "gamma_negative",
    "probability_margin": "probability_margin",
    "weighted": "weighted",
    "reduction": "reduction",
    "rank": "rank",
    "dtype": "dtype",
}
LIST_OPTIONS = ("gamma", "alpha", "class_weight", "class_counts", "gamma_negative")
MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; this bounds what --spec reads
# A spec file holds every value, derived ones included (to_json writes them out). Overriding a
# field drops the file's values that were derived from it or only make sense with it, unless
# they are overridden too: --from-logits on a probabilities spec drops its epsilon, and new
# class counts drop the old weighting, beta and the class count they implied.
_DERIVED = {
    "from_logits": ("epsilon",),
    "class_counts": ("class_weight", "weighting", "beta", "num_classes"),
    "class_weight": ("class_counts", "weighting", "beta", "num_classes"),
    "weighting": ("beta",),
}


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def spec_from_options(*, preset=None, variant=None, spec=None, keras=None, **options) -> FocalSpec:
    """The FocalSpec named by exactly one of ``preset``, ``variant``, ``spec`` (a FocalSpec, or
    the path of a JSON file that ``FocalSpec.to_json`` wrote) or ``keras`` (the path of a ``.keras``
    model: the loss it was compiled with, `export.keras_model`; needs TensorFlow), with the other
    options as field overrides. Names may use ``-`` (``multilabel-lsr``, ``effective-number``).
    Raises `UsageError` naming the option."""
    unknown = set(options) - set(SPEC_OPTIONS)
    if unknown:
        raise UsageError(f"{sorted(unknown)[0]}: not a spec option (options: {', '.join(SPEC_OPTIONS)})")
    sources = (("preset", preset), ("variant", variant), ("spec", spec), ("keras", keras))
    given = [name for name, value in sources if value is not None]
    if len(given) != 1:
        raise UsageError("--preset/--variant/--spec/--keras: give exactly one")
    fields: dict = {}
    if spec is not None:
        fields = _spec_fields(spec)
    elif keras is not None:
        from export.keras_model import spec_from_keras_model

        fields = spec_from_keras_model(keras).to_dict()
    elif preset is not None:
        fields["preset"] = _name("--preset", preset, PRESETS)
    else:
        fields["variant"] = _name("--variant", variant, VARIANTS)
    overrides = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in LIST_OPTIONS and isinstance(value, str):
            value = _numbers(name, value)
        if name == "weighting" and isinstance(value, str):
            value = _name("--weighting", value, WEIGHTINGS)
        overrides[SPEC_OPTIONS[name]] = value
    for field in overrides:
        for derived in _DERIVED.get(field, ()):
            if derived not in overrides:
                fields.pop(derived, None)
    if "gamma" in overrides and "gamma_negative" not in overrides and fields.get("gamma_negative") == fields.get("gamma"):
        # a file's gamma_negative equal to its gamma is the symmetric default: it follows a new
        # gamma (an asymmetric one, which differs, is kept)
        fields.pop("gamma_negative", None)
    fields.update(overrides)
    try:
        return FocalSpec(**fields)
    except ValueError as error:
        raise UsageError(_flagged(str(error))) from None


def _spec_fields(spec) -> dict:
    if isinstance(spec, FocalSpec):
        return {key: value for key, value in spec.to_dict().items()}
    path = Path(spec)
    try:
        # O_NONBLOCK: a FIFO would block open() itself until a writer came, before the check below
        # could refuse it; a regular file ignores the flag
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # /dev/zero would never end
                raise UsageError(f"--spec: {path} is not a regular file")
            data = file.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            raise UsageError(f"--spec: {path} is larger than {MAX_SPEC_BYTES >> 10} KiB; not a spec file")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--spec: cannot read {path} ({error.strerror if isinstance(error, OSError) else error})") from None
    try:
        spec = FocalSpec.from_json(text)  # validates keys and values as written
    except ValueError as error:
        raise UsageError(f"--spec: {path}: {error}") from None
    return spec.to_dict()


def _name(flag: str, value: str, allowed) -> str:
    name = str(value).replace("-", "_")
    if name not in allowed:
        shown = ", ".join(a.replace("_", "-") for a in allowed)
        raise UsageError(f"{flag}: expected one of {shown}, got {value!r}")
    return name


def _numbers(name: str, text: str):
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        raise UsageError(f"{option_flag(name)}: expected a number or comma-separated numbers, got {text!r}") from None
    if name == "class_counts":
        values = [int(v) if v.is_integer() else v for v in values]
    return values[0] if len(values) == 1 and name in ("gamma", "alpha", "gamma_negative") else values


def _flagged(message: str) -> str:
    """A FocalSpec error ("num_classes: ...") with the field named as its command-line flag."""
    field, sep, rest = message.partition(":")
    flags = {f: option_flag(o) for o, f in SPEC_OPTIONS.items()} | {"variant/preset": "--preset/--variant"}
    flags |= {"variant": "--variant", "preset": "--preset"}
    return f"{flags[field]}:{rest}" if sep and field in flags else message
