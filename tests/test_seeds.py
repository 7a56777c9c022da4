"""The presets reproduce the three seed snippets (seeds 000-002, snippets copied from blogs), bugs fixed as documented."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import focal_graph as fg
from focal_graph import presets
import reference

# Seed 001's y_true, y_pred and the loss table it printed (its own run, float32).
SEED001 = json.loads((Path(__file__).parent / "data" / "seed001.json").read_text())


def test_multi_category_reproduces_the_table_seed_001_prints():
    loss = presets.multi_category(SEED001["class_counts"], gamma=2.0)
    y_true = np.eye(4, dtype=np.float32)[SEED001["labels"]]
    got = loss(y_true, np.asarray(SEED001["predictions"], np.float32))
    assert got.shape == (8, 1)
    # the table is printed to 8 decimals from a float32 computation
    np.testing.assert_allclose(got.numpy()[:, 0], SEED001["printed_loss"], rtol=2e-6, atol=2e-8)


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


def test_demo_runs_and_reproduces_the_seed_table():
    import subprocess
    import sys

    demo = Path(__file__).parents[1] / "examples" / "seeds.py"
    result = subprocess.run([sys.executable, str(demo)], capture_output=True, text=True, check=True)
    assert "largest difference" in result.stdout and "traced 1 time(s)" in result.stdout
    assert "retracing" not in result.stderr and "oneDNN" not in result.stderr
    largest = float(result.stdout.split("largest difference:")[1].split()[0])
    assert largest < 2e-8
