"""The presets reproduce the three seed snippets (shared/seeds/), bugs fixed as documented."""

import numpy as np
import pytest
import tensorflow as tf

import focal_graph as fg
from focal_graph import presets
import reference

# Seed 001's y_true, y_pred and the loss table it printed (its own run, float32).
SEED001_COUNTS = [100, 200, 50, 10]
SEED001_LABELS = [0, 1, 0, 2, 2, 2, 0, 1]
SEED001_PREDICTIONS = [
    [0.37623284, 0.33230947, 0.0481559, 0.2433018],
    [0.29497108, 0.12360882, 0.20553146, 0.37588864],
    [0.58799838, 0.28331014, 0.07566421, 0.05302727],
    [0.4794889, 0.07500778, 0.41214537, 0.03335796],
    [0.28295068, 0.07871247, 0.16113049, 0.47720636],
    [0.03239087, 0.35946281, 0.28374307, 0.32440325],
    [0.08932401, 0.54083959, 0.23610655, 0.13372985],
    [0.19806993, 0.20598081, 0.29593526, 0.30001401],
]
SEED001_PRINTED = [0.04206767, 0.11250415, 0.00784752, 0.05654315, 0.30171221, 0.12844518, 0.16094631, 0.06586922]


def test_multi_category_reproduces_the_table_seed_001_prints():
    loss = presets.multi_category(SEED001_COUNTS, gamma=2.0)
    y_true = np.eye(4, dtype=np.float32)[SEED001_LABELS]
    got = loss(y_true, np.asarray(SEED001_PREDICTIONS, np.float32))
    assert got.shape == (8, 1)
    # the table is printed to 8 decimals from a float32 computation
    np.testing.assert_allclose(got.numpy()[:, 0], SEED001_PRINTED, rtol=2e-6, atol=2e-8)


def test_multi_category_matches_seed_001_formula_on_random_inputs(rng):
    counts = rng.integers(1, 500, size=6).tolist()
    y_true = np.eye(6, dtype=np.float32)[rng.integers(0, 6, size=32)]
    y_pred = tf.nn.softmax(rng.normal(size=(32, 6)) * 3).numpy().astype(np.float32)
    got = presets.multi_category(counts, gamma=1.5)(y_true, y_pred)
    np.testing.assert_allclose(got.numpy(), reference.seed001(y_true, y_pred, counts, gamma=1.5), rtol=1e-5, atol=1e-7)


def test_multilabel_lsr_batch_mean_matches_seed_000(rng):
    counts = rng.integers(1, 100, size=5).tolist()
    targets = rng.integers(0, 2, size=(12, 5)).astype(np.float32)
    probabilities = tf.sigmoid(rng.normal(size=(12, 5)) * 2).numpy().astype(np.float32)
    got = presets.multilabel_lsr(counts, gamma=2.0, epsilon=0.1)(targets, probabilities)
    seed = reference.seed000(targets, probabilities, counts, gamma=2.0, e=0.1)
    assert got.shape == (12,)
    # Keras averages the per-sample vector: the seed's batch-wide focal term gives the same mean
    np.testing.assert_allclose(np.mean(got.numpy()), np.mean(seed), rtol=1e-5)


def test_multilabel_lsr_per_sample_is_each_samples_own_loss(rng):
    counts = [3, 9, 27]
    targets = rng.integers(0, 2, size=(8, 3)).astype(np.float32)
    probabilities = tf.sigmoid(rng.normal(size=(8, 3))).numpy().astype(np.float32)
    got = presets.multilabel_lsr(counts, gamma=2.0, epsilon=0.2)(targets, probabilities).numpy()
    # one sample at a time through the seed's formula: its batch mean is then that sample's own
    one_by_one = [reference.seed000(targets[i : i + 1], probabilities[i : i + 1], counts, e=0.2)[0] for i in range(8)]
    np.testing.assert_allclose(got, one_by_one, rtol=1e-5)


def test_multilabel_lsr_spec_keeps_the_seeds_constants():
    spec = presets.multilabel_lsr([1, 2, 3], epsilon=0.1).spec
    assert (spec.preset, spec.label_smoothing, spec.epsilon, spec.from_logits) == ("multilabel_lsr", 0.1, 1e-8, False)


@pytest.mark.parametrize("shape", [(10, 4), (3, 5, 4)])
def test_sparse_softmax_matches_seed_002_formula(rng, shape):
    alpha = rng.uniform(0.2, 2.0, size=4)
    logits = (rng.normal(size=shape) * 2).astype(np.float32)
    labels = rng.integers(0, 4, size=shape[:-1])
    seed_alpha = [[a] for a in alpha]  # the seed's (C, 1) column
    got = presets.sparse_softmax(seed_alpha, gamma=2.0)(labels, logits)
    assert got.shape == ()
    np.testing.assert_allclose(got.numpy(), reference.seed002(logits, labels, alpha), rtol=1e-5)


def test_sparse_softmax_with_unit_alpha_and_gamma_zero_is_mean_cross_entropy(rng):
    logits = (rng.normal(size=(6, 5, 3))).astype(np.float32)
    labels = rng.integers(0, 3, size=(6, 5))
    got = presets.sparse_softmax([1, 1, 1], gamma=0.0)(labels, logits)
    want = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def test_sparse_softmax_preset_graph_takes_unknown_batch_and_positions(rng):
    preset = presets.sparse_softmax([0.5, 1.0, 2.0, 1.0])
    graph = fg.build_graph(preset.spec.__class__(**{**preset.spec.to_dict(), "rank": 3}))
    for shape in [(2, 3, 4), (5, 1, 4), (1, 7, 4)]:
        logits = rng.normal(size=shape).astype(np.float32)
        labels = rng.integers(0, 4, size=shape[:-1])
        want = reference.seed002(logits, labels, [0.5, 1.0, 2.0, 1.0])
        np.testing.assert_allclose(graph(tf.constant(labels), tf.constant(logits)).numpy(), want, rtol=1e-5)
