"""A segmentation model, (N, H, W, C) logits with ignore label 255, from training to ONNX evaluation;
and the same for a channels-first (N, C, H, W) ONNX model.

    .venv/bin/python examples/segmentation.py OUT_DIR           # train, save, convert, write outputs
    .venv/bin/python examples/segmentation.py --check OUT_DIR   # after focalgraph export/attach/eval
    .venv/bin/python examples/segmentation.py --channels-first OUT_DIR          # the (N, C, H, W) model
    .venv/bin/python examples/segmentation.py --channels-first --check OUT_DIR  # its check

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

``--channels-first`` writes, instead of training anything, an ONNX model laid out as a PyTorch
export would be (no TensorFlow involved): input ``image`` (batch, 3, height, width), a 3x3
convolution of stride 2 and padding 1 to 16 channels, a ReLU, a 1x1 convolution to C=4 classes,
output ``logits`` (batch, 4, height/2, width/2), batch, height and width dynamic. Its weights are
fixed random numbers (seed 0), not trained: the loss's numbers do not care. OUT_DIR then holds
segmenter.onnx, outputs.parquet (``logits`` a (4, H/2, W/2) map per row, ``labels`` (H/2, W/2)
with 255 on the border), images.npy (N, 3, H, W) and masks.npy. Its loss is exported with
``--axis 1`` and attaches to the (N, C, H, W) output directly; the check takes the classes-last
transpose of the logits itself and also recomputes the model's logits in float64 from its weights.
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

    write_outputs(out, logits, masks, images)
    losses = ", ".join(f"{value:.4f}" for value in history.history["loss"])
    print(f"trained 3 epochs (loss {losses}); wrote {out}/segmenter.keras, segmenter.onnx, outputs.parquet, "
          "images.npy, masks.npy")


def write_outputs(out: Path, logits, masks, images) -> None:
    """The model's logits and the masks as outputs.parquet (N-D rows as fixed-size lists nested
    once per axis after the first), and the images and masks as .npy for the check."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def nested(array):
        column = pa.array(np.ascontiguousarray(array).ravel())
        for width in reversed(array.shape[1:]):
            column = pa.FixedSizeListArray.from_arrays(column, width)
        return column

    pq.write_table(pa.table({"logits": nested(logits), "labels": nested(masks)}), out / "outputs.parquet")
    np.save(out / "images.npy", images)
    np.save(out / "masks.npy", masks)


def pixel_losses(logits, labels) -> np.ndarray:
    """Float64, from the formula (independent of focalgraph): -(1 - p_t)^gamma log p_t for each
    pixel, log p_t from a log-softmax over the classes; ignored pixels 0."""
    z = np.asarray(logits, np.float64)
    log_p = z - z.max(axis=-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=-1, keepdims=True))
    kept = labels != IGNORE
    log_p_t = np.take_along_axis(log_p, np.where(kept, labels, 0)[..., None], axis=-1)[..., 0]
    return np.where(kept, -(-np.expm1(log_p_t)) ** GAMMA * log_p_t, 0.0)


def check(out: Path, channels_first: bool = False) -> int:
    """Every loss number export, attach and eval wrote against `pixel_losses` (on the classes-last
    transpose of (N, C, H, W) logits with ``channels_first``); 0 when all agree."""
    import onnxruntime
    import pyarrow.parquet as pq

    from export.batches import column_array

    def classes_last(logits):
        return np.moveaxis(logits, 1, -1) if channels_first else logits

    table = pq.read_table(out / "outputs.parquet")
    logits, labels = column_array(table["logits"], "logits"), column_array(table["labels"], "labels")
    images, masks = np.load(out / "images.npy"), np.load(out / "masks.npy")
    figures = {}  # name: (focalgraph's numbers, the reference)
    if channels_first:
        if logits.ndim != 4 or logits.shape[1] != CLASSES:
            print(f"FAIL the Parquet's logits are {logits.shape}, not (N, {CLASSES}, H, W)")
            return 1
        figures["model's logits (ONNX Runtime) = float64 numpy convolutions"] = (
            logits, model_logits_float64(out, images))
    pixel = pixel_losses(classes_last(logits), labels)
    per_image = pixel.sum(axis=(1, 2))
    kept = labels != IGNORE
    summary = json.loads((out / "summary.json").read_text())
    figures.update({
        "eval per-image losses (--out)": (np.load(out / "per_image.npy"), per_image),
        "eval sum": (summary["sum"], per_image.sum()),
        "eval mean per image": (summary["mean"], per_image.mean()),
        "eval mean per pixel": (summary["mean_per_position"], pixel.sum() / kept.sum()),
        "eval ignored pixels": (summary["ignored_positions"], (~kept).sum()),
    })
    for entry in summary["per_class"]:
        members = labels == entry["class"]
        figures[f"eval class {entry['class']} pixels"] = (entry["count"], members.sum())
        if members.any():
            figures[f"eval class {entry['class']} mean loss"] = (entry["mean_loss"], pixel[members].mean())
    # the model with its loss attached, run on the images themselves
    session = onnxruntime.InferenceSession(str(out / "segmenter_with_loss.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"image": images, "labels": masks})))
    attached = pixel_losses(classes_last(got["logits"]), masks)
    figures["attached model's logits = the Parquet's"] = (got["logits"], logits)
    figures["attached focal_loss (per pixel, (N, H, W))"] = (got["focal_loss"], attached)
    figures["attached focal_per_sample"] = (got["focal_per_sample"], attached.sum(axis=(1, 2)))
    figures["attached focal_sum"] = (got["focal_sum"], attached.sum())
    figures["attached focal_mean (per kept pixel)"] = (got["focal_mean"], attached.sum() / (masks != IGNORE).sum())
    return report(figures)


def channels_first_model(out: Path) -> None:
    """The (N, C, H, W) model, built with onnx.helper from fixed random weights, and its outputs."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weights = {"w1": rng.normal(scale=0.5, size=(16, 3, 3, 3)), "b1": rng.normal(scale=0.1, size=16),
               "w2": rng.normal(scale=0.5, size=(CLASSES, 16, 1, 1)), "b2": rng.normal(scale=0.1, size=CLASSES)}
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["hidden"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["hidden"], ["active"]),
             helper.make_node("Conv", ["active", "w2", "b2"], ["logits"], kernel_shape=[1, 1])]
    graph = helper.make_graph(
        nodes, "segmenter",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES, "out_height", "out_width"])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out / "segmenter.onnx"))

    images = rng.normal(size=(IMAGES, 3, SIZE, SIZE)).astype(np.float32)
    small = images[:, :, ::2, ::2]  # the same mask rule as the trained model's, channels on axis 1
    masks = np.where(small.max(1) > 0.5, small.argmax(1), 3).astype(np.int64)
    masks[:, 0, :] = IGNORE
    masks[:, :, -1] = IGNORE
    session = onnxruntime.InferenceSession(str(out / "segmenter.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": images})[0]

    write_outputs(out, logits, masks, images)
    print(f"built an (N, 3, H, W) -> (N, {CLASSES}, H/2, W/2) ONNX model with fixed random weights (untrained); "
          f"logits {logits.shape}; wrote {out}/segmenter.onnx, outputs.parquet, images.npy, masks.npy")


def model_logits_float64(out: Path, images) -> np.ndarray:
    """The channels-first model's logits in float64 numpy from its stored weights (independent of
    ONNX Runtime): 3x3 convolution, stride 2, padding 1; ReLU; 1x1 convolution."""
    import onnx
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t).astype(np.float64)
               for t in onnx.load(str(out / "segmenter.onnx")).graph.initializer}
    x = np.pad(np.asarray(images, np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]  # N, 3, H/2, W/2, 3, 3
    hidden = np.einsum("nchwij,kcij->nkhw", windows, weights["w1"]) + weights["b1"][:, None, None]
    hidden = np.maximum(hidden, 0.0)
    return np.einsum("nchw,kc->nkhw", hidden, weights["w2"][:, :, 0, 0]) + weights["b2"][:, None, None]


def report(figures) -> int:
    failed = 0
    for name, (value, want) in figures.items():
        value, want = np.asarray(value, np.float64), np.asarray(want, np.float64)
        ok = value.shape == want.shape
        error = np.abs(value - want) if ok else np.full(1, np.inf)
        ok = ok and bool(np.all(error <= TOLERANCE * np.maximum(np.abs(want), 1.0)))
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: largest difference {float(error.max(initial=0)):.2e}")
    print(f"{len(figures) - failed} of {len(figures)} figures agree with float64 numpy within {TOLERANCE:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    channels_first = "--channels-first" in arguments
    checking = "--check" in arguments
    places = [argument for argument in arguments if argument not in ("--channels-first", "--check")]
    out = Path(places[0] if places else "/tmp/focalgraph-segmentation" + ("-nchw" if channels_first else ""))
    if checking:
        sys.exit(check(out, channels_first))
    (channels_first_model if channels_first else train)(out)
