"""Class weights from counts."""

import numpy as np

import focal_graph as fg
import reference


def test_inverse_frequency_is_the_seeds_normalisation():
    counts = [100, 200, 50, 10]
    np.testing.assert_allclose(fg.class_weights(counts), reference.inverse_frequency(counts), rtol=1e-15)
    # hand check: 1/n normalised, (0.01, 0.005, 0.02, 0.1) / 0.135
    np.testing.assert_allclose(fg.class_weights(counts), np.array([0.01, 0.005, 0.02, 0.1]) / 0.135, rtol=1e-12)
    assert np.isclose(fg.class_weights(counts).sum(), 1.0)


def test_effective_number_matches_cui_et_al():
    counts = [5000, 500, 50, 5, 1]
    for beta in (0.0, 0.9, 0.999, 0.9999):
        got = fg.class_weights(counts, "effective_number", beta=beta)
        np.testing.assert_allclose(got, reference.effective_number(counts, beta), rtol=1e-9)
        assert np.isclose(got.sum(), len(counts))


def test_effective_number_with_beta_zero_is_uniform():
    np.testing.assert_allclose(fg.class_weights([1, 10, 100], "effective_number", beta=0.0), [1.0, 1.0, 1.0])


def test_effective_number_tends_to_inverse_frequency_as_beta_goes_to_one():
    counts = [3, 30, 300]
    nearly_one = fg.class_weights(counts, "effective_number", beta=1 - 1e-12)
    inverse = fg.class_weights(counts)
    np.testing.assert_allclose(nearly_one / nearly_one.sum(), inverse, rtol=1e-6)
