"""`export.summary`: partial results whose merge is exact, so any split and order gives one answer."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from export.summary import ExactSums, LossSummary, merge_all
from focal_graph.spec import FocalSpec

C = 4
SPARSE = FocalSpec(variant="sparse_softmax", ignore_index=-1)

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
# losses as they come: >= 0, from subnormal to large, with float32-sized ones and exact ties
losses = st.one_of(st.floats(min_value=0, max_value=1e6, width=32), st.floats(min_value=0, max_value=1e300),
                   st.sampled_from([0.0, 5e-324, 1.0, 2.5]))


def exact(values) -> float:
    """The correctly rounded sum: Fractions hold every float64 exactly."""
    return float(sum((Fraction(v) for v in values), Fraction(0)))


def split(values, cuts):
    bounds = sorted({min(c, len(values)) for c in cuts} | {0, len(values)})
    return [values[a:b] for a, b in zip(bounds, bounds[1:])]


@given(st.lists(finite.filter(lambda v: abs(v) < 1e307), max_size=60), st.lists(st.integers(0, 60), max_size=6),
       st.randoms(use_true_random=False))
def test_exact_sums_are_correctly_rounded_whatever_the_split_and_merge_order(values, cuts, random):
    parts = []
    for chunk in split(values, cuts):
        part = ExactSums(1)
        part.add(np.zeros(len(chunk), np.int64), np.array(chunk, np.float64))
        parts.append(part)
    random.shuffle(parts)
    merged = ExactSums(1)
    for part in parts:
        merged = part.merge(merged) if random.random() < 0.5 else merged.merge(part)
    assert merged.floats()[0] == exact(values)


@given(st.lists(st.tuples(st.integers(0, C - 1), finite.filter(lambda v: abs(v) < 1e300)), max_size=80))
def test_keyed_sums_are_exact_per_key(pairs):
    sums = ExactSums(C)
    sums.add(np.array([k for k, _ in pairs], np.int64), np.array([v for _, v in pairs], np.float64))
    assert sums.floats() == [exact([v for k, v in pairs if k == key]) for key in range(C)]


@given(st.lists(st.tuples(st.integers(0, C - 1), st.floats(width=32, allow_nan=False, allow_infinity=False)), max_size=80))
def test_float32_values_sum_exactly_as_their_float64_values(pairs):
    keys = np.array([k for k, _ in pairs], np.int64)
    values = np.array([v for _, v in pairs], np.float32)
    single, double = ExactSums(C), ExactSums(C)
    single.add(keys, values)
    double.add(keys, values.astype(np.float64))
    assert single.integers() == double.integers() == [
        int(sum((Fraction(float(v)) for k, v in pairs if k == key), Fraction(0)) * 2 ** 1074) for key in range(C)]


@pytest.mark.parametrize("pending_limit", [None, 5])
@given(st.lists(st.tuples(st.integers(0, C - 1), st.floats(width=32, allow_nan=False, allow_infinity=False)), max_size=80),
       st.lists(st.integers(0, 80), max_size=6), st.randoms(use_true_random=False))
def test_float32_sums_kept_pending_across_batches_and_merges_stay_exact(pending_limit, pairs, cuts, random):
    """float32 sums wait in float64 bins per (key, exponent) across adds and merges; some parts
    are flushed into the limbs (read) and some not, and a small limit forces flushes midway."""
    import export.summary as summary

    limit = summary._PENDING_LIMIT
    summary._PENDING_LIMIT = pending_limit or limit
    try:
        parts = []
        for chunk in split(pairs, cuts):
            part = ExactSums(C)
            for half in (chunk[:len(chunk) // 2], chunk[len(chunk) // 2:]):
                part.add(np.array([k for k, _ in half], np.int64), np.array([v for _, v in half], np.float32))
            if random.random() < 0.5:
                part.limbs  # noqa: B018  (into the limbs now)
            parts.append(part)
        random.shuffle(parts)
        merged = ExactSums(C)
        for part in parts:
            merged = part.merge(merged) if random.random() < 0.5 else merged.absorb(part)
    finally:
        summary._PENDING_LIMIT = limit
    assert merged.integers() == [
        int(sum((Fraction(float(v)) for k, v in pairs if k == key), Fraction(0)) * 2 ** 1074) for key in range(C)]


def test_a_sum_that_cancels_is_exactly_zero_and_tiny_terms_survive():
    sums = ExactSums(1)
    sums.add(np.zeros(4, np.int64), np.array([1e300, 5e-324, -1e300, 5e-324]))
    assert sums.floats() == [1e-323]
    big = ExactSums(1)
    big.add(np.zeros(2, np.int64), np.array([1.7e308, 1.7e308]))
    assert big.floats() == [float("inf")]


def summary_of(rows, labels, losses, top_k=3):
    summary = LossSummary(SPARSE, (C,), top_k)
    summary.add(np.array(losses, np.float64), np.array(labels, np.int64), first_row=rows)
    return summary


batches = st.lists(st.tuples(st.integers(-1, C - 1), losses), min_size=1, max_size=40)


@given(batches, st.lists(st.integers(0, 40), max_size=5), st.randoms(use_true_random=False))
def test_merge_is_order_independent_and_equals_the_whole(rows, cuts, random):
    labels, values = [r[0] for r in rows], [r[1] for r in rows]
    whole = summary_of(0, labels, values).as_dict()
    parts, start = [], 0
    for chunk in split(list(range(len(rows))), cuts):
        parts.append(summary_of(start, [labels[i] for i in chunk], [values[i] for i in chunk]))
        start += len(chunk)
    random.shuffle(parts)
    while len(parts) > 1:  # a random merge tree: associativity and commutativity both exercised
        i = random.randrange(len(parts) - 1)
        parts[i:i + 2] = [parts[i].merge(parts[i + 1]) if random.random() < 0.5 else parts[i + 1].merge(parts[i])]
    assert parts[0].as_dict() == whole
    counted = [(lab, v) for lab, v in zip(labels, values) if lab != -1]
    assert whole["sum"] == exact(values)
    assert whole["ignored_positions"] == labels.count(-1)
    for entry in whole["per_class"]:
        members = [v for lab, v in counted if lab == entry["class"]]
        assert entry["count"] == len(members)
        mean = sum((Fraction(v) for v in members), Fraction(0)) / len(members) if members else None
        assert entry["mean_loss"] == (float(mean) if members else None)  # rounded once
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))[:3]
    assert [(h["row"], h["loss"]) for h in whole["hardest"]] == [(i, values[i]) for i in order]


def test_partial_summaries_round_trip_through_bytes_without_pickle():
    summary = LossSummary(SPARSE, (C,), 2)
    summary.add(np.array([0.5, 2.0, 1e-30]), np.array([0, 3, -1]), first_row=None, ids=["a", "b", "c"])
    again = LossSummary.from_bytes(summary.to_bytes())
    assert again.as_dict() == summary.as_dict()
    assert [h["id"] for h in again.as_dict()["hardest"]] == ["b", "a"]
    assert merge_all([again, summary]).as_dict()["count"] == 6


def test_summaries_of_different_losses_do_not_merge():
    with pytest.raises(ValueError, match="another loss"):
        LossSummary(SPARSE, (C,), 2).merge(LossSummary(FocalSpec(variant="sparse_softmax"), (C,), 2))
    with pytest.raises(ValueError, match="ragged rows across batches"):
        LossSummary(SPARSE, (C,), 2).merge(LossSummary(SPARSE, (C + 1,), 2))


SIGMOID_4D = FocalSpec(variant="sigmoid", rank=4)


@given(st.lists(st.tuples(st.lists(losses, min_size=2 * 3 * C, max_size=2 * 3 * C),
                          st.lists(st.booleans(), min_size=2 * 3 * C, max_size=2 * 3 * C)), min_size=1, max_size=6),
       st.randoms(use_true_random=False))
def test_sigmoid_per_class_figures_of_nhwc_rows_merge_exactly(rows, random):
    elements = np.array([r[0] for r in rows], np.float64).reshape(-1, 2, 3, C)
    targets = np.array([r[1] for r in rows], np.float64).reshape(-1, 2, 3, C)

    def summary(rows_):
        part = LossSummary(SIGMOID_4D, (2, 3, C), 2)
        part.add(elements[rows_].sum(axis=(1, 2, 3)), targets[rows_], elements=elements[rows_], first_row=int(rows_[0]))
        return part

    whole = summary(np.arange(len(rows))).as_dict()
    parts = [LossSummary.from_bytes(summary(np.array([i])).to_bytes()) for i in range(len(rows))]  # as workers ship them
    random.shuffle(parts)
    assert merge_all(parts).as_dict() == whole
    for entry in whole["per_class"]:
        c = entry["class"]
        for name, chosen in (("positives", targets[..., c] == 1), ("negatives", targets[..., c] == 0)):
            values = elements[..., c][chosen].tolist()
            assert entry[name]["count"] == len(values) and entry[name]["sum"] == exact(values)
        assert entry["count"] == elements[..., c].size and entry["sum"] == exact(elements[..., c].ravel().tolist())


def test_rank_4_sparse_summary_counts_pixels_by_label_and_needs_the_element_losses():
    spec = FocalSpec(variant="sparse_softmax", rank=4, ignore_index=255)
    labels = np.array([[[0, 255], [2, 2]]])
    elements = np.array([[[0.5, 0.0], [1.0, 2.0]]])
    summary = LossSummary(spec, (2, 2, C), 0)
    with pytest.raises(ValueError, match="elements: the unreduced loss is needed"):
        summary.add(elements.sum(axis=(1, 2)), labels)
    summary.add(elements.sum(axis=(1, 2)), labels, elements=elements)
    result = summary.as_dict()
    assert [(e["count"], e["mean_loss"]) for e in result["per_class"]] == [(1, 0.5), (0, None), (2, 1.5), (0, None)]
    assert result["ignored_positions"] == 1 and result["mean_per_position"] == 3.5 / 3


def test_plot_of_a_thousand_sigmoid_classes_shows_the_hardest_with_their_positives():
    from export.summary import MAX_BARS, plot_per_class, plotted_classes

    rng = np.random.default_rng(0)
    targets = (rng.uniform(size=(50, 1000)) < 0.1).astype(np.float64)
    elements = rng.uniform(size=(50, 1000))
    summary = LossSummary(FocalSpec(variant="sigmoid"), (1000,), 0)
    summary.add(elements.sum(axis=1), targets, elements=elements)
    result = summary.as_dict()
    png = plot_per_class({**result, "spec": "variant:sigmoid"})
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"focalgraph eval --plot" in png
    own_means = elements.mean(axis=0)
    hardest = np.argsort(-own_means, kind="stable")[:MAX_BARS]
    assert [e["class"] for e in plotted_classes(result)] == hardest.tolist() and MAX_BARS == 40
