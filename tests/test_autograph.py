"""No AutoGraph warning from any focal_graph function traced under `tf.function`.

AutoGraph converts every Python function a `tf.function` calls; one it cannot convert is run
as-is with a warning that asks the user to report a TensorFlow bug ("AutoGraph could not
transform <function per_class> ... Please report this to the TensorFlow team"), printed on every
trace. Each public loss is traced here in a fresh process (AutoGraph warns once per function and
process), with the options that reach the most code, and its log is read.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import numpy as np
import tensorflow as tf
import focal_graph as fg
from focal_graph import presets
from focal_graph.keras import SigmoidFocalLoss, SoftmaxFocalLoss, SparseSoftmaxFocalLoss

labels = np.array([0, 2, 1], np.int64)
logits = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)
targets = np.eye(3, dtype=np.float32)[labels]
weights = np.ones((3,), np.float32)
calls = {
    "sparse_softmax_focal_loss": lambda: fg.sparse_softmax_focal_loss(labels, logits, gamma=[1.0, 2.0, 0.5], alpha=[0.2, 0.3, 0.5],
                                                                      ignore_index=2, poly_epsilon=1.0, weights=weights),
    "softmax_focal_loss": lambda: fg.softmax_focal_loss(targets, logits, gamma=2.0, alpha=0.25, label_smoothing=0.1,
                                                        class_weight=[1.0, 2.0, 3.0], poly_epsilon=1.0),
    "sigmoid_focal_loss": lambda: fg.sigmoid_focal_loss(targets, logits, gamma=[2.0, 0.5, 1.0], alpha=0.25, ignore_index=-1,
                                                        poly_epsilon=1.0),
    "sigmoid_focal_loss asymmetric": lambda: fg.sigmoid_focal_loss(targets, logits, gamma=0.0, gamma_negative=4.0,
                                                                   probability_margin=0.05, axis=1),
    "sigmoid_focal_loss from probabilities": lambda: fg.sigmoid_focal_loss(targets, tf.sigmoid(logits), from_logits=False),
    "reduce_loss": lambda: fg.reduce_loss(fg.sigmoid_focal_loss(targets, logits), "mean", mask=targets > -1.0),
    "positive_targets": lambda: fg.positive_targets(targets),
    "SpecLoss": lambda: fg.SpecLoss(fg.FocalSpec(variant="sigmoid", ignore_index=-1, reduction="normalized")).forms(targets, logits),
    "presets.multilabel_lsr": lambda: presets.multilabel_lsr([5, 10, 20])(targets, tf.sigmoid(logits)),
    "presets.multi_category": lambda: presets.multi_category([5, 10, 20])(targets, tf.nn.softmax(logits)),
    "presets.sparse_softmax": lambda: presets.sparse_softmax([0.2, 0.3, 0.5])(labels, logits),
    "SparseSoftmaxFocalLoss": lambda: SparseSoftmaxFocalLoss(ignore_index=2)(labels, logits),
    "SoftmaxFocalLoss": lambda: SoftmaxFocalLoss(alpha=0.25)(targets, logits),
    "SigmoidFocalLoss": lambda: SigmoidFocalLoss(normalization="normalized")(targets, logits),
}
for name, call in calls.items():
    result = tf.function(lambda: call())()
    tf.nest.map_structure(lambda tensor: tensor.numpy(), result)
    print("traced", name, flush=True)
"""


def test_no_autograph_warning_from_any_public_loss(tmp_path):
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "AUTOGRAPH_VERBOSITY": "1",
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # a file, not ``-c``: AutoGraph reads the traced functions' source, and quietly converts
    # nothing when it has none
    script = tmp_path / "trace_every_loss.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert log.count("traced ") == 14, log[-3000:]
    assert "AutoGraph" not in log and "autograph" not in log, log[-3000:]
