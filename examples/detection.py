"""Dense detection end to end: a small RetinaNet-style head trained with the sigmoid focal loss
(alpha 0.25, gamma 2, anchors between the IoU thresholds ignored with -1, normalised by the
positive anchors), saved, converted to ONNX, its loss attached and evaluated; every loss number
checked against a float64 numpy transcription of the formula. The README's "Worked example: dense
detection" runs, in order:

    .venv/bin/python examples/detection.py train OUT_DIR
    focalgraph export ... / attach ... / eval ...      (the README's commands)
    .venv/bin/python examples/detection.py check OUT_DIR

``train`` writes OUT_DIR/head.keras (the trained Keras model, its loss included), head.onnx
(tf2onnx; input ``features`` (N, 4, 4, 8), output ``logits`` (N, 48, 3): 4 x 4 positions x 3
anchors, 3 classes), features.npy and targets.npy (N, 48, 3) (1 for the anchor's class, 0,
or -1 for an ignored anchor), outputs.parquet (columns ``logits`` and ``targets``, nested
fixed-size lists of float32: what a detector's evaluation job would write) and keras.json (the
loss Keras reports on the data). ``check`` reads what the commands wrote and compares every
figure with the float64 reference, exit 1 on a difference beyond 1e-5 (relative, or absolute
below 1).
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

SAMPLES, HEIGHT, WIDTH, CHANNELS = 32, 4, 4, 8
ANCHORS, CLASSES = 3, 3
ALPHA, GAMMA, IGNORE = 0.25, 2.0, -1
STEPS, BATCH = 4, 8
TOLERANCE = 1e-5


def detection_data(rng):
    """Features (N, 4, 4, 8) and RetinaNet-style targets (N, 48, 3): per anchor, 5% matched to a
    class (one-hot), 10% between the IoU thresholds (-1 throughout), the rest background (0).
    Sample 0 has no positive anchor (its per-sample normaliser is max(1, 0) = 1)."""
    features = rng.normal(size=(SAMPLES, HEIGHT, WIDTH, CHANNELS)).astype(np.float32)
    anchors = HEIGHT * WIDTH * ANCHORS
    draw = rng.uniform(size=(SAMPLES, anchors))
    targets = np.zeros((SAMPLES, anchors, CLASSES), np.float32)
    matched = draw < 0.05
    matched[0] = False
    targets[matched, rng.integers(0, CLASSES, size=int(matched.sum()))] = 1.0
    targets[draw > 0.9] = IGNORE
    return features, targets


def reference(targets, logits) -> dict:
    """Float64, from the paper: ``p = sigmoid(x)``, ``p_t = y p + (1 - y)(1 - p)``,
    ``a_t = y alpha + (1 - y)(1 - alpha)``, ``FL = -a_t (1 - p_t)**gamma log p_t`` per element;
    0 where the target is -1; sums over each sample and the batch; the positives are targets
    > 0.5 (ignored ones are -1). log p and log(1 - p) are taken with logaddexp, no clipping."""
    y = np.asarray(targets, np.float64)
    x = np.asarray(logits, np.float64)
    ignored = y == IGNORE
    y = np.where(ignored, 0.0, y)
    log_p, log_q = -np.logaddexp(0.0, -x), -np.logaddexp(0.0, x)
    log_p_t = y * log_p + (1 - y) * log_q
    one_minus_p_t = y * np.exp(log_q) + (1 - y) * np.exp(log_p)
    alpha_t = y * ALPHA + (1 - y) * (1 - ALPHA)
    loss = np.where(ignored, 0.0, -alpha_t * one_minus_p_t**GAMMA * log_p_t)
    per_sample = loss.sum(axis=(1, 2))
    positives = ((y > 0.5) & ~ignored).sum(axis=(1, 2))
    return {
        "loss": loss,
        "per_sample": per_sample,
        "sum": loss.sum(),
        "mean": loss.sum() / max(int((~ignored).sum()), 1),
        "normalized": loss.sum() / max(int(positives.sum()), 1),
        "per_sample_normalized": per_sample / np.maximum(positives, 1),
        "positives": int(positives.sum()),
    }


def train(out: Path) -> None:
    from export.quiet import import_tensorflow, import_tf2onnx

    tf = import_tensorflow()
    tf2onnx = import_tf2onnx()
    import keras
    import onnx
    import pyarrow as pa
    import pyarrow.parquet as pq

    from focal_graph.keras import SigmoidFocalLoss

    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    features, targets = detection_data(np.random.default_rng(0))
    inputs = keras.Input((HEIGHT, WIDTH, CHANNELS), name="features")
    hidden = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    # RetinaNet's classification head: A * C logits per position, then one row per anchor;
    # the last layer's bias starts at -log((1 - pi) / pi), pi = 0.01, as the paper does
    head = keras.layers.Conv2D(ANCHORS * CLASSES, 3, padding="same",
                               bias_initializer=keras.initializers.Constant(-np.log(99.0)))(hidden)
    logits = keras.layers.Reshape((HEIGHT * WIDTH * ANCHORS, CLASSES), name="logits")(head)
    model = keras.Model(inputs, logits)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=SigmoidFocalLoss(alpha=ALPHA, gamma=GAMMA, ignore_index=IGNORE, normalization="normalized"))
    model.fit(features, targets, batch_size=BATCH, epochs=STEPS * BATCH // SAMPLES, shuffle=False, verbose=0)
    # one batch of everything: Keras's mean of the per-sample terms is the loss over all samples
    keras_loss = model.evaluate(features, targets, batch_size=SAMPLES, verbose=0)
    model.save(out / "head.keras")
    model = keras.models.load_model(out / "head.keras")  # the loss is registered: it loads back

    @tf.function(input_signature=[tf.TensorSpec([None, HEIGHT, WIDTH, CHANNELS], tf.float32, name="features")])
    def serve(features):
        return {"logits": model(features)}

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=17)
    onnx.save(onnx_model, str(out / "head.onnx"))

    predicted = np.asarray(model(features), np.float32)
    np.save(out / "features.npy", features)
    np.save(out / "targets.npy", targets)
    table = pa.table({"logits": _nested(predicted), "targets": _nested(targets)})
    pq.write_table(table, out / "outputs.parquet")
    (out / "keras.json").write_text(json.dumps({"loss": keras_loss}) + "\n")
    print(f"wrote {out}/head.keras, head.onnx, features.npy, targets.npy, outputs.parquet, keras.json "
          f"(Keras loss after {STEPS} steps: {keras_loss:.6g})")


def _nested(array: np.ndarray):
    """(N, anchors, C) float32 as a Parquet column of fixed-size lists of fixed-size lists."""
    import pyarrow as pa

    values = pa.array(array.reshape(-1), pa.float32())
    rows = pa.FixedSizeListArray.from_arrays(values, array.shape[2])
    return pa.FixedSizeListArray.from_arrays(rows, array.shape[1])


def check(out: Path) -> int:
    """Compare every loss figure the commands wrote with the float64 reference; print one line
    each; 0 when all agree within `TOLERANCE`."""
    import onnxruntime

    features, targets = np.load(out / "features.npy"), np.load(out / "targets.npy")
    checks = []

    def agree(what, got, want):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        error = np.abs(got - want) / np.maximum(np.abs(want), 1.0)
        checks.append((what, float(error.max(initial=0.0)), got.shape == want.shape and bool(np.all(error <= TOLERANCE))))

    def session(path):
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    # the trained model's logits, from its ONNX graph
    logits = session(out / "head.onnx").run(["logits"], {"features": features})[0]
    want = reference(targets, logits)
    agree("keras: loss (normalized) after training", json.loads((out / "keras.json").read_text())["loss"], want["normalized"])

    # the exported loss alone, in bare ONNX Runtime, on the model's outputs
    loss = session(out / "loss" / "model.onnx")
    for form, got in zip([o.name for o in loss.get_outputs()], loss.run(None, {"targets": targets, "logits": logits})):
        agree(f"loss/model.onnx: {form}", got, want[form])

    # the model with its loss attached: features and targets in, the losses out
    combined = session(out / "head_with_loss.onnx")
    names = [o.name for o in combined.get_outputs()]
    results = dict(zip(names, combined.run(None, {"features": features, "targets": targets})))
    attached = reference(targets, results["logits"])
    for form in ("loss", "per_sample", "sum", "mean", "normalized", "per_sample_normalized"):
        agree(f"head_with_loss.onnx: focal_{form}", results["focal_" + form], attached[form])

    # eval over the Parquet file of the model's outputs
    summary = json.loads((out / "summary.json").read_text())
    stored = np.asarray(__import__("pyarrow.parquet", fromlist=["read_table"]).read_table(out / "outputs.parquet")
                        .column("logits").to_pylist(), np.float32)
    evaluated = reference(targets, stored)
    agree("eval: sum", summary["sum"], evaluated["sum"])
    agree("eval: mean per position", summary["mean_per_position"], evaluated["mean"])
    agree("eval: normalized", summary["normalized"], evaluated["normalized"])
    agree("eval: mean per-sample normalized", summary["mean_per_sample_normalized"], evaluated["per_sample_normalized"].mean())
    agree("eval: positives", summary["positives"], evaluated["positives"])
    agree("eval: ignored positions", summary["ignored_positions"], int((targets == IGNORE).sum()))

    for what, error, passed in checks:
        print(f"{'agree' if passed else 'DIFFER'}  {what}  (largest difference {error:.2e})")
    failed = [what for what, _, passed in checks if not passed]
    print(f"{len(checks) - len(failed)} of {len(checks)} figures agree with the float64 reference within {TOLERANCE:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("train", "check"):
        sys.exit("usage: examples/detection.py train|check OUT_DIR")
    directory = Path(sys.argv[2])
    if sys.argv[1] == "train":
        train(directory)
    else:
        sys.exit(check(directory))
