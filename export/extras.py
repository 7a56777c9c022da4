"""Optional dependencies: import one, or say in one line which extra of focalgraph installs it.

The base install (numpy, onnx, onnxruntime-gpu, pyarrow, click, tqdm) runs ``eval``,
``validate --reference-only``, ``inspect`` and ``attach``. TensorFlow and tf2onnx (``export``,
validation against TensorFlow, ``embed``, ``bench``, the Keras losses) come with
``focalgraph[tensorflow]``; Ray Data with ``focalgraph[ray]``; pyspark with ``focalgraph[spark]``.
"""

from __future__ import annotations

import importlib

from export.errors import MissingExtra

EXTRAS = {"tensorflow": "tensorflow", "tf2onnx": "tensorflow", "keras": "tensorflow", "ray": "ray", "pyspark": "spark",
          "matplotlib": "bench"}


def require(module: str, purpose: str):
    """``import module``, or `MissingExtra` saying that ``purpose`` needs it and what to install.
    Only the module's own absence is translated: a broken install's ImportError stays as it is."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        top = module.split(".")[0]
        if error.name is None or error.name.split(".")[0] != top:
            raise
        raise MissingExtra(missing_message(top, purpose)) from None


def missing_message(module: str, purpose: str) -> str:
    extra = EXTRAS[module]
    return f"{purpose} needs {module}, which is not installed here: pip install 'focalgraph[{extra}]'"
