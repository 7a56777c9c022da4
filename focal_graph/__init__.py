"""focal_graph: focal losses as stable, dynamic-shape TensorFlow graphs.

Importing the package is cheap: TensorFlow loads on first use of a name that needs it, so
`focal_graph.spec` (and `FocalSpec`) work on hosts that have only numpy and onnxruntime.

    from focal_graph import sparse_softmax_focal_loss, FocalSpec, build_graph, presets
"""

from __future__ import annotations

import importlib
from importlib import metadata

try:
    __version__ = metadata.version("focalgraph")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "sparse_softmax_focal_loss": "focal_graph.focal",
    "softmax_focal_loss": "focal_graph.focal",
    "sigmoid_focal_loss": "focal_graph.focal",
    "positive_targets": "focal_graph.focal",
    "reduce_loss": "focal_graph.reduction",
    "class_weights": "focal_graph.weights",
    "FocalSpec": "focal_graph.spec",
    "SpecLoss": "focal_graph.graph",
    "build_graph": "focal_graph.graph",
    "input_signature": "focal_graph.graph",
}

# "keras" stays out of __all__: a star import would shadow the real keras package.
__all__ = sorted(_EXPORTS) + ["presets", "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(_import(_EXPORTS[name]), name)
    if name in ("presets", "keras"):
        return _import(f"focal_graph.{name}")
    raise AttributeError(f"module 'focal_graph' has no attribute {name!r}")


def _import(module: str):
    """Import ``module``; the base install has no TensorFlow, so say what brings it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name not in ("tensorflow", "keras"):
            raise
        raise ModuleNotFoundError(f"{module} needs {error.name}, which is not installed here: "
                                  "pip install 'focalgraph[tensorflow]'", name=error.name) from None
