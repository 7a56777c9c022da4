"""A small Keras classifier to try `focalgraph attach` and `embed` on (the README's end-to-end example).

    .venv/bin/python examples/make_model.py OUT_DIR

writes OUT_DIR/mlp.onnx (tf2onnx; outputs `logits` and `probabilities`), OUT_DIR/mlp_savedmodel
(Keras's `model.export`; output `output_0`, the logits), and OUT_DIR/features.npy,
OUT_DIR/labels.npy, OUT_DIR/logits.npy: 1000 samples of 8 features, labels in [0, 10), and the
model's logits for them.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from export.quiet import import_tensorflow, import_tf2onnx  # noqa: E402

CLASSES = 10


def main(out: Path) -> None:
    tf = import_tensorflow()
    tf2onnx = import_tf2onnx()
    import keras
    import numpy as np
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,), name="features"), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(CLASSES)])
    model.export(str(out / "mlp_savedmodel"), format="tf_saved_model", verbose=False)

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="features")])
    def serve(features):
        logits = model(features)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=17)
    onnx.save(onnx_model, str(out / "mlp.onnx"))
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1000, 8)).astype(np.float32)
    np.save(out / "features.npy", features)
    np.save(out / "labels.npy", rng.integers(0, CLASSES, 1000))
    np.save(out / "logits.npy", np.asarray(model(features)))
    print(f"wrote {out}/mlp.onnx, {out}/mlp_savedmodel, features.npy, labels.npy, logits.npy")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/focalgraph-example"))
