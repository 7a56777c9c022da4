"""export: focal losses as files (TF SavedModel, ONNX) and the checks that prove them.

Importing the package is cheap and loads neither TensorFlow nor onnxruntime. The modules:

- `export.exporter`: ``export(...)`` and ``export_defaults(...)`` write artifact directories
  (TensorFlow and tf2onnx).
- `export.validation`: ``validate(...)``, ONNX Runtime against TensorFlow or against the
  artifact's stored reference outputs (the latter without TensorFlow).
- `export.inspection`: ``inspect(...)``, what an artifact holds.
- `export.artifact`: the directory layout and its manifest; `export.writing`: the output-path
  check and atomic writes every command uses; `export.cases`: validation inputs;
  `export.compare`: element-wise verdicts; `export.runtime`: ONNX Runtime sessions, and
  ``LossSession`` / ``BatchLoss`` for evaluating a loss with ONNX Runtime alone.
- `export.consistency`: whether an artifact's files (spec.json, the ONNX metadata and graph, the
  SavedModel, reference.npz) describe one loss, using `export.formula`, a spec's loss as a
  float64 numpy formula (no TensorFlow); `export.signing`: ``sign(...)`` / ``verify(...)``,
  signatures of artifacts (the optional ``signing`` extra).
- `export.evaluation`: ``evaluate(...)``, per-sample losses of files and Parquet datasets (no
  TensorFlow), wiring `export.sources` (readers), `export.batches` (checks, and
  ``batch_losses`` / ``BatchEvaluator``: an Arrow batch to its losses), `export.sinks` (.npy or
  Parquet dataset output) and `export.summary` (``LossSummary``: exact, mergeable partial
  results); `export.engines`: the same on Ray Data or Spark;
  `export.attach`: ``attach(...)``, a loss joined to a model's ONNX graph; `export.embed`:
  ``embed(...)`` / ``embed_keras(...)``, a model and its loss in one SavedModel;
  `export.bench`: ``bench(...)``, speed against Keras and a read-once floor.
- `export.cli`: the ``focalgraph`` command line, a thin layer over the functions above, which
  take the command line's option names as keyword arguments.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "export": "export.exporter",
    "export_defaults": "export.exporter",
    "validate": "export.validation",
    "inspect": "export.inspection",
    "evaluate": "export.evaluation",
}
# attach and bench are not listed: their modules share their names (export.attach.attach).

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
