"""What focal_graph does for the three seed snippets, shown on their own data.

Run with `make demo`. Prints seed 001's published table next to the multi_category preset, the
30-logit example where Keras's clipped focal loss is wrong, and every preset and variant traced
once with unknown dimensions and run on several shapes.
"""

import json
from pathlib import Path

from export.quiet import import_tensorflow

import_tensorflow()  # first, with TensorFlow's start-up notices hidden

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import focal_graph as fg  # noqa: E402
from focal_graph import presets  # noqa: E402

SEED001 = json.loads((Path(__file__).parents[1] / "tests" / "data" / "seed001.json").read_text())


def seed001_table():
    print("Seed 001: presets.multi_category([100, 200, 50, 10]) on the seed's own y_true / y_pred")
    loss = presets.multi_category(SEED001["class_counts"])(
        np.eye(4, dtype=np.float32)[SEED001["labels"]], np.asarray(SEED001["predictions"], np.float32)
    ).numpy()[:, 0]
    print(f"  {'seed printed':>14} {'focal_graph':>14}")
    for printed, ours in zip(SEED001["printed_loss"], loss):
        print(f"  {printed:14.8f} {ours:14.8f}")
    largest = np.max(np.abs(loss - SEED001["printed_loss"]))
    print(f"  largest difference: {largest:.1e}\n")


def clipping_example():
    print("5 classes, alpha 0.25, the true class 30 logits below the other four")
    logits = np.array([[-30.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    exact = 0.25 * (30.0 + np.log(4.0 + np.exp(-30.0)))
    ours = fg.sparse_softmax_focal_loss([0], logits, alpha=0.25).numpy()[0]
    clipped = keras.losses.CategoricalFocalCrossentropy(alpha=0.25, from_logits=True, reduction=None)(
        np.eye(5, dtype=np.float32)[[0]], logits
    ).numpy()[0]
    print(f"  exact (float64): {exact:.4f}   focal_graph: {ours:.4f}   Keras CategoricalFocalCrossentropy: {clipped:.4f}\n")


def dynamic_graphs():
    print("Every preset and variant: one trace with unknown dimensions, several shapes")
    specs = [
        presets.multilabel_lsr([5, 10, 20, 40]).spec,
        presets.multi_category([100, 200, 50, 10]).spec,
        fg.FocalSpec(**{**presets.sparse_softmax([1.0, 2.0, 0.5, 1.0]).spec.to_dict(), "rank": 3}),
        fg.FocalSpec(variant="sparse_softmax", ignore_index=-1, rank=3),
        fg.FocalSpec(variant="softmax", label_smoothing=0.1, rank=4),
        fg.FocalSpec(variant="sigmoid", alpha=0.25, rank=3, reduction="mean"),
    ]
    rng = np.random.default_rng(0)
    for spec in specs:
        graph = fg.build_graph(spec)
        labels_spec, predictions_spec = graph.input_signature
        shapes = []
        for batch in ((3,) + (2,) * (spec.rank - 2), (1,) * (spec.rank - 1), (0,) + (5,) * (spec.rank - 2)):
            shape = batch + (4,)
            predictions = rng.normal(size=shape).astype(np.float32)
            if not spec.from_logits:
                predictions = tf.nn.softmax(predictions).numpy()
            if labels_spec.dtype.is_integer:
                y_true = rng.integers(0, 4, size=batch)
            else:
                y_true = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=batch)]
            loss = graph(tf.constant(y_true, labels_spec.dtype), tf.constant(predictions))
            shapes.append(f"{shape} -> {tuple(loss.shape)}")
        print(f"  {spec.name:24} {predictions_spec.shape}: " + ", ".join(shapes))
        print(f"  {'':24} traced {graph.experimental_get_tracing_count()} time(s)")


if __name__ == "__main__":
    seed001_table()
    clipping_example()
    dynamic_graphs()
