"""Float64 numpy transcriptions of the focal-loss formulas, written from the paper and the seeds.

Independent of focal_graph: nothing here imports it. Used as the reference in the tests.
"""

import numpy as np


def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _per_class_at(value, labels):
    value = np.asarray(value, dtype=np.float64)
    return value if value.ndim == 0 else value[labels]


def sparse_softmax_focal(labels, logits, gamma=2.0, alpha=None, class_weight=None, from_logits=True,
                         ignore_index=None, epsilon=1e-7):
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    num_classes = logits.shape[-1]
    if from_logits:
        log_p = log_softmax(logits)
    else:
        log_p = np.log(np.clip(logits / logits.sum(-1, keepdims=True), epsilon, 1 - epsilon))
    ignored = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, bool)
    valid = (labels >= 0) & (labels < num_classes) & ~ignored
    safe = np.where(valid, labels, 0)
    log_p_t = np.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
    weight = 1.0
    if alpha is not None:
        weight = weight * _per_class_at(alpha, safe)
    if class_weight is not None:
        weight = weight * _per_class_at(class_weight, safe)
    loss = -weight * (-np.expm1(log_p_t)) ** _per_class_at(gamma, safe) * log_p_t
    loss = np.where(valid, loss, np.nan)
    return np.where(ignored, 0.0, loss)


def softmax_focal(targets, y_pred, gamma=2.0, alpha=None, class_weight=None, from_logits=True,
                  label_smoothing=0.0, epsilon=1e-7):
    y_pred = np.asarray(y_pred, np.float64)
    targets = np.asarray(targets, np.float64)
    num_classes = y_pred.shape[-1]
    targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
    if from_logits:
        log_p = log_softmax(y_pred)
    else:
        log_p = np.log(np.clip(y_pred / y_pred.sum(-1, keepdims=True), epsilon, 1 - epsilon))
    per_class = -targets * (-np.expm1(log_p)) ** np.asarray(gamma, np.float64) * log_p
    if alpha is not None:
        per_class = per_class * np.asarray(alpha, np.float64)
    if class_weight is not None:
        per_class = per_class * np.asarray(class_weight, np.float64)
    return per_class.sum(axis=-1)


def sigmoid_focal(targets, y_pred, gamma=2.0, alpha=None, class_weight=None, from_logits=True,
                  label_smoothing=0.0, epsilon=1e-7):
    y_pred = np.asarray(y_pred, np.float64)
    y = np.asarray(targets, np.float64) * (1 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        # log p = -log(1 + e^-x), log(1 - p) = -log(1 + e^x), both without overflow
        log_p = -np.logaddexp(0.0, -y_pred)
        log_q = -np.logaddexp(0.0, y_pred)
    else:
        p = np.clip(y_pred, epsilon, 1 - epsilon)
        log_p, log_q = np.log(p), np.log1p(-p)
    p, q = np.exp(log_p), np.exp(log_q)
    bce = -(y * log_p + (1 - y) * log_q)
    one_minus_p_t = y * q + (1 - y) * p
    loss = one_minus_p_t ** np.asarray(gamma, np.float64) * bce
    if alpha is not None:
        alpha = np.asarray(alpha, np.float64)
        loss = loss * (y * alpha + (1 - y) * (1 - alpha))
    if class_weight is not None:
        loss = loss * np.asarray(class_weight, np.float64)
    return loss


def inverse_frequency(counts):
    """The seeds' weights: [total / n for n in counts], each divided by their sum."""
    counts = [float(c) for c in counts]
    total = sum(counts)
    raw = [total / n for n in counts]
    return np.array([w / sum(raw) for w in raw])


def effective_number(counts, beta):
    """Cui et al. 2019: 1 / E_n with E_n = (1 - beta**n) / (1 - beta), normalised to sum to C."""
    counts = np.asarray(counts, np.float64)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return weights / weights.sum() * len(counts)


def seed000(targets, probabilities, class_counts, gamma=2.0, e=0.1):
    """Seed 000 transcribed as written (with its `sum` shadowing repaired): the per-sample vector
    Keras receives, whose focal part is the mean over the whole batch."""
    y = np.asarray(targets, np.float64)
    p = np.asarray(probabilities, np.float64)
    one_minus_p = np.where(y > 0, y - p, 0.0)
    ft = -(one_minus_p ** gamma) * np.log(np.clip(p, 1e-8, 1.0))
    weights = inverse_frequency(class_counts)
    alpha = np.where(y > 0, weights + np.zeros_like(p), 0.0)
    balanced_fl = np.mean(alpha * ft)
    num_classes = len(class_counts)
    normalised = np.clip(p / p.sum(-1, keepdims=True), 1e-7, 1 - 1e-7)
    uniform_ce = -np.sum(np.ones_like(p) / num_classes * np.log(normalised), axis=-1)
    return (1 - e) * balanced_fl + e * uniform_ce


def seed001(y_true, y_pred, label_num_list, gamma=2.0, epsilon=1e-7):
    """Seed 001 transcribed: output (N, 1)."""
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.clip(np.asarray(y_pred, np.float64), epsilon, 1 - epsilon)
    alpha = inverse_frequency(label_num_list)[:, None]
    pt = y_true * y_pred + (1 - y_true) * (1 - y_pred)
    return ((1 - pt) ** gamma * -np.log(pt)) @ alpha


def seed002(logits, labels, alpha, gamma=2.0, epsilon=1e-7):
    """Seed 002 transcribed with its (N, 1) x (N,) broadcast repaired: the scalar mean."""
    logits = np.asarray(logits, np.float64)
    logits = logits.reshape(-1, logits.shape[-1])
    labels = np.asarray(labels).reshape(-1)
    softmax = np.exp(log_softmax(logits)).reshape(-1)
    prob = softmax[np.arange(logits.shape[0]) * logits.shape[1] + labels]
    prob = np.clip(prob, epsilon, 1 - epsilon)
    alpha_choice = np.asarray(alpha, np.float64).reshape(-1)[labels]
    return -np.mean(alpha_choice * (1 - prob) ** gamma * np.log(prob))


def forms(loss, counted=None):
    """The artifact's four forms of an unreduced loss, in float64: ``counted`` marks the positions
    a mean divides by (default: all)."""
    loss = np.asarray(loss, np.float64)
    count = loss.size if counted is None else int(np.sum(counted))
    return {
        "loss": loss,
        "per_sample": loss.sum(axis=tuple(range(1, loss.ndim))),
        "sum": loss.sum(),
        "mean": loss.sum() / max(count, 1),
    }
