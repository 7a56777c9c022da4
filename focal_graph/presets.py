"""Presets: the three seed snippets, as specs (their math, compositions of the variant functions,
is in `focal_graph.compositions`).

Each constructor returns a `SpecLoss`: a callable ``loss(y_true, y_pred)`` like the seeds' inner
functions, with a ``.spec`` (a `FocalSpec`) that `build_graph` and the exporter take.
"""

from __future__ import annotations

import numpy as np

from focal_graph.graph import SpecLoss
from focal_graph.spec import FocalSpec

def multilabel_lsr(class_counts, gamma=2.0, epsilon=None):
    """Seed 000: multi-label focal loss on probabilities, class weights from counts, plus LSR.

    Per sample n (the vector the seed's Keras loss returns before Keras averages it), with
    ``w_c`` the inverse-frequency weights and ``e = epsilon``::

        loss_n = (1 - e) * mean_c[ y_nc * w_c * (1 - p_nc)**gamma * -log p_nc ]
                 + e * -(1/C) sum_c log(p_nc / sum_k p_nk)

    Args:
        class_counts: training samples per class, shape (C,).
        gamma: focusing parameter.
        epsilon: weight ``e`` of the label-smoothing-regularisation (LSR) term; the seed's ``e``
            (None: the seed's own, `focal_graph.catalogue.SEED_000_LSR_WEIGHT`). Stored in the
            spec as ``label_smoothing``, which is what it is.

    Fixed from the seed: it reduces the focal term over the whole batch (``tf.reduce_mean`` with
    no axis) before adding the per-sample LSR term, so every sample carried the batch's focal
    loss. Here the focal term is reduced over classes only: each entry is that sample's own loss,
    and the batch mean (what Keras reports) is unchanged. It also shadowed ``sum`` (a NameError as
    written). Kept on purpose, as the seed builds it twice (its ``one_minus_p`` and its ``alpha``
    are both zero where the target is 0): the focal term counts positive classes only, so negative
    classes enter only through the LSR term, which pulls every p towards the same value. With
    sigmoid outputs nothing pushes a negative class down: use the ``sigmoid`` variant for a
    focal loss that does. Also kept: p is clipped at 1e-8 in the focal term and at Keras's 1e-7 in the
    LSR term, and the LSR term normalises p to sum 1, as K.categorical_crossentropy does.
    """
    return _spec_loss(
        FocalSpec(preset="multilabel_lsr", class_counts=_counts(class_counts), gamma=gamma, label_smoothing=epsilon)
    )


def multi_category(class_counts, gamma=2.0):
    """Seed 001: per-class binary focal loss on probabilities, weighted by class, output (N, 1).

    ``loss_n = sum_c w_c * (1 - pt_nc)**gamma * -log pt_nc`` with ``pt = y p + (1 - y)(1 - p)``,
    ``p`` clipped to [1e-7, 1 - 1e-7] and ``w_c`` the inverse-frequency weights; shape (..., 1)
    (the seed's ``matmul`` with a (C, 1) weight column). Its formula is kept: every class,
    positive or negative, contributes as a binary problem. Generalised from the seed: the counts
    are an argument instead of a global, and any rank >= 2 works.
    """
    return _spec_loss(FocalSpec(preset="multi_category", class_counts=_counts(class_counts), gamma=gamma))


def sparse_softmax(alpha, gamma=2.0):
    """Seed 002: softmax focal loss from logits with sparse labels, the scalar mean.

    ``mean over positions of -alpha[label] * (1 - p_t)**gamma * log p_t``, for logits (N, C),
    (N, P, C) or any rank, every dimension unknown at trace time. ``alpha`` is one weight per
    class; the seed's (C, 1) column ``[[1], [1], ...]`` is accepted too.

    Fixed from the seed: ``tf.range(0, logits.shape[0])`` failed when the batch dimension was
    unknown; ``tf.gather`` on the (C, 1) alpha gave an (N, 1) column that broadcast against the
    (N,) loss to (N, N), so any non-uniform alpha returned mean(alpha_t) * mean(loss) instead of
    mean(alpha_t * loss); and the clip of p to [1e-7, 1 - 1e-7] capped the loss at 16.1 * alpha
    with zero gradient for confidently wrong logits (here log p_t = z_t - logsumexp(z), exact).
    """
    alpha_values = np.asarray(alpha, dtype=np.float64)
    if alpha_values.ndim == 2 and alpha_values.shape[1] == 1:
        alpha_values = alpha_values[:, 0]
    alpha = tuple(float(a) for a in alpha_values) if alpha_values.ndim == 1 else alpha
    return _spec_loss(FocalSpec(preset="sparse_softmax", alpha=alpha, gamma=gamma))


def _counts(class_counts):
    values = np.asarray(class_counts)
    return tuple(values.tolist()) if values.ndim == 1 else class_counts


def _spec_loss(spec):
    return SpecLoss(spec)
