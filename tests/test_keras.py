"""Keras wrappers: a tiny model trains with each, saves to .keras and loads to the same loss."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import focal_graph as fg
from focal_graph import keras as focal_keras
from focal_graph import presets

NUM_CLASSES = 4


def separable_data(rng, samples=256):
    centres = rng.normal(size=(NUM_CLASSES, 8)) * 3
    labels = rng.integers(0, NUM_CLASSES, size=samples)
    features = (centres[labels] + rng.normal(size=(samples, 8)) * 0.5).astype(np.float32)
    return features, labels


def model(output_activation=None):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(NUM_CLASSES, activation=output_activation)])


COUNTS = [60, 80, 50, 66]
CASES = {
    "sparse_softmax": (lambda: focal_keras.SparseSoftmaxFocalLoss(gamma=2.0, alpha=[0.5, 1.0, 1.5, 1.0]), None, "labels"),
    "sparse_softmax_ignore": (lambda: focal_keras.SparseSoftmaxFocalLoss(ignore_index=-1), None, "labels_with_ignored"),
    "softmax": (lambda: focal_keras.SoftmaxFocalLoss(gamma=2.0, alpha=0.25, label_smoothing=0.1), None, "one_hot"),
    "sigmoid": (lambda: focal_keras.SigmoidFocalLoss(gamma=2.0, alpha=0.25), None, "one_hot"),
    "multilabel_lsr": (lambda: focal_keras.MultilabelLSRFocalLoss(COUNTS, gamma=2.0, epsilon=0.1), "sigmoid", "one_hot"),
    "multi_category": (lambda: focal_keras.MultiCategoryFocalLoss(COUNTS, gamma=2.0), "softmax", "one_hot"),
    "spec": (lambda: focal_keras.FocalSpecLoss(fg.FocalSpec(variant="sigmoid", class_counts=COUNTS, weighting="effective_number")), None, "one_hot"),
}


def targets(kind, labels):
    if kind == "labels":
        return labels
    if kind == "labels_with_ignored":
        return np.where(np.arange(len(labels)) % 5 == 0, -1, labels)
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_model_trains_saves_and_loads_with_the_loss(rng, tmp_path, case):
    make_loss, activation, kind = CASES[case]
    features, labels = separable_data(rng)
    y = targets(kind, labels)
    net = model(activation)
    net.compile(optimizer=keras.optimizers.Adam(0.05), loss=make_loss())
    history = net.fit(features, y, epochs=6, batch_size=32, verbose=0).history["loss"]
    # seed 000's smoothing term has a floor of e * log(C) at uniform outputs, so the loss cannot
    # halve for every case; what the model learnt is the check that it trained
    assert history[-1] < 0.95 * history[0], history
    outputs = net.predict(features, verbose=0)
    if case == "multilabel_lsr":
        # seed 000 scores positive classes only: it learns to raise them (see the preset's docstring)
        assert np.mean(outputs[np.arange(len(labels)), labels]) > 0.9
    else:
        assert np.mean(np.argmax(outputs, axis=-1) == labels) > 0.9

    before = net.evaluate(features, y, verbose=0)
    path = tmp_path / "model.keras"
    net.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is type(net.loss)
    assert loaded.loss.get_config() == net.loss.get_config()
    np.testing.assert_allclose(loaded.evaluate(features, y, verbose=0), before, rtol=1e-6)


def test_keras_mean_leaves_ignored_positions_out(rng):
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    labels = np.array([0, -1, 2, 1, -1, 0], np.float32)
    got = focal_keras.SparseSoftmaxFocalLoss(ignore_index=-1)(labels, logits)
    per_position = fg.sparse_softmax_focal_loss(labels.astype(np.int64), logits, ignore_index=-1).numpy()
    np.testing.assert_allclose(got.numpy(), per_position[labels != -1].mean(), rtol=1e-6)


def test_sparse_loss_accepts_keras_column_labels(rng):
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=5)
    column = focal_keras.SparseSoftmaxFocalLoss(reduction=None)(labels[:, None].astype(np.float32), logits)
    np.testing.assert_allclose(column.numpy(), fg.sparse_softmax_focal_loss(labels, logits).numpy(), rtol=1e-6)


def test_sparse_keras_loss_is_the_seed_002_preset(rng):
    logits = rng.normal(size=(7, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=7)
    alpha = [0.25, 1.0, 2.0, 0.5]
    keras_value = focal_keras.SparseSoftmaxFocalLoss(alpha=alpha, gamma=2.0)(labels, logits)
    np.testing.assert_allclose(keras_value.numpy(), presets.sparse_softmax(alpha)(labels, logits).numpy(), rtol=1e-6)


def test_preset_keras_losses_return_the_seeds_per_sample_shapes(rng):
    probabilities = tf.nn.softmax(rng.normal(size=(5, 4))).numpy()
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=5)]
    assert focal_keras.MultiCategoryFocalLoss(COUNTS).call(tf.constant(y), tf.constant(probabilities)).shape == (5, 1)
    assert focal_keras.MultilabelLSRFocalLoss(COUNTS).call(tf.constant(y), tf.constant(probabilities)).shape == (5,)


@pytest.mark.parametrize("activation, loss, kind", [
    ("softmax", focal_keras.SparseSoftmaxFocalLoss(), "labels"),
    ("softmax", focal_keras.SoftmaxFocalLoss(), "one_hot"),
    ("sigmoid", focal_keras.SigmoidFocalLoss(), "one_hot"),
    ("softmax", focal_keras.FocalSpecLoss(fg.FocalSpec(variant="sparse_softmax")), "labels"),
])
def test_warns_like_keras_when_logits_are_an_activations_output(rng, activation, loss, kind):
    """Keras's own cross-entropies warn when from_logits=True meets a softmax or sigmoid output;
    a model compiled that way trains on a plausible but wrong loss."""
    features, labels = separable_data(rng, samples=32)
    network = model(output_activation=activation)
    network.compile(optimizer="sgd", loss=loss)
    with pytest.warns(UserWarning, match=r"from_logits=True, but y_pred was produced by a (Softmax|Sigmoid) activation"):
        network.fit(features, targets(kind, labels), epochs=1, verbose=0)


def test_no_warning_for_logits_or_with_from_logits_false(rng, recwarn):
    features, labels = separable_data(rng, samples=32)
    for activation, loss in ((None, focal_keras.SparseSoftmaxFocalLoss()),
                             ("softmax", focal_keras.SparseSoftmaxFocalLoss(from_logits=False))):
        network = model(output_activation=activation)
        network.compile(optimizer="sgd", loss=loss)
        network.fit(features, labels, epochs=1, verbose=0)
    assert not [w for w in recwarn if "from_logits" in str(w.message)]
