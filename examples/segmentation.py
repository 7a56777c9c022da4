"""A segmentation model, (N, H, W, C) logits with ignore label 255, from training to ONNX evaluation.

    .venv/bin/python examples/segmentation.py OUT_DIR           # train, save, convert, write outputs
    .venv/bin/python examples/segmentation.py --check OUT_DIR   # after focalgraph export/attach/eval

The first form trains a tiny fully convolutional Keras model (a 3x3 convolution of stride 2, so
its output is H/2 x W/2, then a 1x1 convolution to C=4 classes) for a few steps with
`focal_graph.keras.SparseSoftmaxFocalLoss(ignore_index=255)`, and writes

- OUT_DIR/segmenter.keras: the trained model;
- OUT_DIR/segmenter.onnx: the model through tf2onnx, input ``image`` (batch, height, width, 3),
  output ``logits`` (batch, height/2, width/2, 4), every dimension but the channels dynamic;
- OUT_DIR/outputs.parquet: one row per image, ``logits`` an (H/2, W/2, 4) map and ``labels`` an
  (H/2, W/2) mask (fixed-size nested lists, what pyarrow makes of N-D numpy arrays), border
  pixels labelled 255; OUT_DIR/images.npy and OUT_DIR/masks.npy the same images and masks.

Then `focalgraph export`, `attach` and `eval` (the README's "Segmentation" commands) make the
loss artifact, the model with its loss attached and the evaluation. ``--check`` recomputes every
loss number they wrote, in float64 numpy from the formula, -(1 - p_t)^gamma log p_t per pixel,
ignored pixels 0, and exits 1 unless each agrees within 1e-5 (relative, or absolute near 0).
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CLASSES = 4
IGNORE = 255
GAMMA = 2.0
IMAGES, SIZE = 24, 16  # 24 images of 16 x 16 pixels: logits maps of 8 x 8
TOLERANCE = 1e-5


def train(out: Path) -> None:
    from export.quiet import import_tensorflow, import_tf2onnx

    tf = import_tensorflow()
    tf2onnx = import_tf2onnx()
    import keras
    import onnx
    import pyarrow as pa
    import pyarrow.parquet as pq

    from focal_graph.keras import SparseSoftmaxFocalLoss

    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(IMAGES, SIZE, SIZE, 3)).astype(np.float32)
    # a learnable mask: the class of a pixel is which of the image's 3 channels is largest, or 3
    # where none is above 0.5, taken at the output's resolution (every other pixel)
    small = images[:, ::2, ::2]
    masks = np.where(small.max(-1) > 0.5, small.argmax(-1), 3).astype(np.int64)
    masks[:, 0, :] = IGNORE  # the top border is not annotated
    masks[:, :, -1] = IGNORE

    model = keras.Sequential([
        keras.Input((None, None, 3), name="image"),
        keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(CLASSES, 1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=SparseSoftmaxFocalLoss(gamma=GAMMA, ignore_index=IGNORE))
    history = model.fit(images, masks, batch_size=8, epochs=3, verbose=0)
    model.save(out / "segmenter.keras")

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="image")])
    def serve(image):
        return {"logits": model(image)}

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=17)
    onnx.save(onnx_model, str(out / "segmenter.onnx"))

    logits = np.asarray(model(images))

    def nested(array):  # (N, ...) as fixed-size lists nested once per axis after the first
        column = pa.array(np.ascontiguousarray(array).ravel())
        for width in reversed(array.shape[1:]):
            column = pa.FixedSizeListArray.from_arrays(column, width)
        return column

    pq.write_table(pa.table({"logits": nested(logits), "labels": nested(masks)}), out / "outputs.parquet")
    np.save(out / "images.npy", images)
    np.save(out / "masks.npy", masks)
    losses = ", ".join(f"{value:.4f}" for value in history.history["loss"])
    print(f"trained 3 epochs (loss {losses}); wrote {out}/segmenter.keras, segmenter.onnx, outputs.parquet, "
          "images.npy, masks.npy")


def pixel_losses(logits, labels) -> np.ndarray:
    """Float64, from the formula (independent of focalgraph): -(1 - p_t)^gamma log p_t for each
    pixel, log p_t from a log-softmax over the classes; ignored pixels 0."""
    z = np.asarray(logits, np.float64)
    log_p = z - z.max(axis=-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=-1, keepdims=True))
    kept = labels != IGNORE
    log_p_t = np.take_along_axis(log_p, np.where(kept, labels, 0)[..., None], axis=-1)[..., 0]
    return np.where(kept, -(-np.expm1(log_p_t)) ** GAMMA * log_p_t, 0.0)


def check(out: Path) -> int:
    """Every loss number export, attach and eval wrote against `pixel_losses`; 0 when all agree."""
    import onnxruntime
    import pyarrow.parquet as pq

    from export.batches import column_array

    table = pq.read_table(out / "outputs.parquet")
    logits, labels = column_array(table["logits"], "logits"), column_array(table["labels"], "labels")
    pixel = pixel_losses(logits, labels)
    per_image = pixel.sum(axis=(1, 2))
    kept = labels != IGNORE
    summary = json.loads((out / "summary.json").read_text())
    figures = {  # name: (focalgraph's numbers, the reference)
        "eval per-image losses (--out)": (np.load(out / "per_image.npy"), per_image),
        "eval sum": (summary["sum"], per_image.sum()),
        "eval mean per image": (summary["mean"], per_image.mean()),
        "eval mean per pixel": (summary["mean_per_position"], pixel.sum() / kept.sum()),
        "eval ignored pixels": (summary["ignored_positions"], (~kept).sum()),
    }
    for entry in summary["per_class"]:
        members = labels == entry["class"]
        figures[f"eval class {entry['class']} pixels"] = (entry["count"], members.sum())
        if members.any():
            figures[f"eval class {entry['class']} mean loss"] = (entry["mean_loss"], pixel[members].mean())
    # the model with its loss attached, run on the images themselves
    session = onnxruntime.InferenceSession(str(out / "segmenter_with_loss.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"image": np.load(out / "images.npy"), "labels": np.load(out / "masks.npy")})))
    attached = pixel_losses(got["logits"], np.load(out / "masks.npy"))
    figures["attached model's logits = the Parquet's"] = (got["logits"], logits)
    figures["attached focal_loss (per pixel)"] = (got["focal_loss"], attached)
    figures["attached focal_per_sample"] = (got["focal_per_sample"], attached.sum(axis=(1, 2)))
    figures["attached focal_sum"] = (got["focal_sum"], attached.sum())
    figures["attached focal_mean (per kept pixel)"] = (got["focal_mean"], attached.sum() / kept.sum())
    failed = 0
    for name, (value, want) in figures.items():
        value, want = np.asarray(value, np.float64), np.asarray(want, np.float64)
        error = np.abs(value - want)
        ok = value.shape == want.shape and bool(np.all(error <= TOLERANCE * np.maximum(np.abs(want), 1.0)))
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: largest difference {float(error.max(initial=0)):.2e}")
    print(f"{len(figures) - failed} of {len(figures)} figures agree with float64 numpy within {TOLERANCE:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[:1] == ["--check"]:
        sys.exit(check(Path(arguments[1] if len(arguments) > 1 else "/tmp/focalgraph-segmentation")))
    train(Path(arguments[0] if arguments else "/tmp/focalgraph-segmentation"))
