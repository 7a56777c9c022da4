"""Bad input raises a ValueError that names the argument."""

import numpy as np
import pytest
import tensorflow as tf

import focal_graph as fg
from focal_graph import presets

LOGITS = np.zeros((4, 3), np.float32)
LABELS = np.array([0, 1, 2, 0])
ONE_HOT = np.eye(3, dtype=np.float32)[LABELS]

VARIANTS = {
    "sparse_softmax": lambda **kw: fg.sparse_softmax_focal_loss(LABELS, LOGITS, **kw),
    "softmax": lambda **kw: fg.softmax_focal_loss(ONE_HOT, LOGITS, **kw),
    "sigmoid": lambda **kw: fg.sigmoid_focal_loss(ONE_HOT, LOGITS, **kw),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(gamma=[1.0, 2.0]), "gamma"),  # wrong length
        (dict(gamma=-0.5), "gamma"),
        (dict(gamma=[1.0, -1.0, 2.0]), "gamma"),
        (dict(gamma=float("nan")), "gamma"),
        (dict(alpha=[0.1, 0.2, 0.3, 0.4]), "alpha"),
        (dict(alpha=-1.0), "alpha"),
        (dict(class_weight=[1.0, 2.0]), "class_weight"),
        (dict(class_weight=2.0), "class_weight"),
        (dict(from_logits=False, epsilon=0.0), "epsilon"),
    ],
)
def test_bad_parameter_names_the_argument(variant, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        VARIANTS[variant](**kwargs)


def test_sigmoid_alpha_must_be_a_balance_in_unit_interval():
    with pytest.raises(ValueError, match=r"^alpha: .*\[0, 1\]"):
        fg.sigmoid_focal_loss(ONE_HOT, LOGITS, alpha=1.5)


@pytest.mark.parametrize("variant", ["softmax", "sigmoid"])
def test_bad_label_smoothing(variant):
    with pytest.raises(ValueError, match=r"^label_smoothing: "):
        VARIANTS[variant](label_smoothing=1.5)


def test_targets_and_predictions_of_different_shapes():
    with pytest.raises(ValueError, match=r"^targets: .*\(4, 3\)"):
        fg.softmax_focal_loss(np.zeros((4, 2), np.float32), LOGITS)
    with pytest.raises(ValueError, match=r"^targets: "):
        fg.sigmoid_focal_loss(np.zeros((4, 3, 1), np.float32), LOGITS)
    with pytest.raises(ValueError, match=r"^labels: "):
        fg.sparse_softmax_focal_loss(np.zeros((5,), np.int64), LOGITS)
    with pytest.raises(ValueError, match=r"^labels: "):
        fg.sparse_softmax_focal_loss(LABELS[:, None], LOGITS)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_integer_predictions_are_rejected(variant):
    call = {
        "sparse_softmax": lambda: fg.sparse_softmax_focal_loss(LABELS, LOGITS.astype(np.int32)),
        "softmax": lambda: fg.softmax_focal_loss(ONE_HOT, LOGITS.astype(np.int32)),
        "sigmoid": lambda: fg.sigmoid_focal_loss(ONE_HOT, LOGITS.astype(np.int64)),
    }[variant]
    with pytest.raises(ValueError, match=r"^(logits|y_pred): expected floating-point predictions, got dtype int"):
        call()


def test_rank_one_predictions_are_rejected():
    with pytest.raises(ValueError, match=r"^logits: expected rank >= 2"):
        fg.sparse_softmax_focal_loss(0, np.zeros(3, np.float32))


def test_out_of_range_label_called_eagerly_names_the_value_and_position():
    with pytest.raises(ValueError, match=r"^labels: 3 at index \(2,\) is not a class index in \[0, 3\)"):
        fg.sparse_softmax_focal_loss([0, 1, 3, -1], LOGITS)
    with pytest.raises(ValueError, match=r"^labels: -2 at index \(1,\) .* or ignore_index=-1"):
        fg.sparse_softmax_focal_loss([0, -2, -1, 1], LOGITS, ignore_index=-1)


def test_non_integer_labels_are_rejected():
    with pytest.raises(ValueError, match=r"^labels: "):
        fg.sparse_softmax_focal_loss(tf.constant(["a", "b", "c", "d"]), LOGITS)


@pytest.mark.parametrize("counts", [[10, 0, 5], [10, -1, 5], [], [[1, 2]], [1, float("inf")]])
def test_class_counts_must_be_positive(counts):
    with pytest.raises(ValueError, match=r"^class_counts: "):
        fg.class_weights(counts)
    with pytest.raises(ValueError, match=r"^class_counts: "):
        presets.multi_category(counts)


def test_unknown_reduction():
    with pytest.raises(ValueError, match=r"^reduction: expected one of none, sum, mean"):
        fg.reduce_loss(tf.ones([2]), "average")


@pytest.mark.parametrize("beta", [1.0, -0.1, 2])
def test_effective_number_beta_in_unit_interval(beta):
    with pytest.raises(ValueError, match=r"^beta: "):
        fg.class_weights([1, 2], "effective_number", beta=beta)


def test_unknown_weighting():
    with pytest.raises(ValueError, match=r"^weighting: "):
        fg.class_weights([1, 2], "sqrt")
