"""The presets' math: the seed snippets as compositions of the variant functions.

Named by the catalogue (`focal_graph.catalogue`) as the presets' functions; `focal_graph.presets`
builds their specs.
"""

from __future__ import annotations

import tensorflow as tf

from focal_graph.focal import predictions_in_compute_dtype, sigmoid_focal_loss, softmax_focal_loss
from focal_graph.params import KERAS_EPSILON  # K.epsilon() inside seed 000's K.categorical_crossentropy
from focal_graph.reduction import reduce_classes


def multilabel_lsr_loss(targets, probabilities, *, gamma, class_weight, label_smoothing, epsilon):
    """Seed 000 (`focal_graph.presets.multilabel_lsr`, whose docstring gives the formula); shape (...)."""
    probabilities, out_dtype = predictions_in_compute_dtype("probabilities", probabilities)
    focal = sigmoid_focal_loss(
        targets, probabilities, gamma=gamma, alpha=1.0, class_weight=class_weight, from_logits=False, epsilon=epsilon
    )
    uniform = tf.ones_like(probabilities) / tf.cast(tf.shape(probabilities)[-1], probabilities.dtype)
    smoothing = softmax_focal_loss(uniform, probabilities, gamma=0.0, from_logits=False, epsilon=KERAS_EPSILON)
    loss = (1.0 - label_smoothing) * reduce_classes(tf.reduce_mean, focal) + label_smoothing * smoothing
    return tf.cast(loss, out_dtype)


def multi_category_loss(targets, probabilities, *, gamma, class_weight, epsilon):
    """Seed 001 (`focal_graph.presets.multi_category`, whose docstring gives the formula); shape (..., 1)."""
    probabilities, out_dtype = predictions_in_compute_dtype("probabilities", probabilities)
    focal = sigmoid_focal_loss(
        targets, probabilities, gamma=gamma, class_weight=class_weight, from_logits=False, epsilon=epsilon
    )
    return tf.cast(reduce_classes(tf.reduce_sum, focal, keepdims=True), out_dtype)
