"""export.compare's verdicts and export.cases's inputs: numpy only, no backend."""

import numpy as np
import pytest

from export.cases import default_shapes, dimension_names, generate, parse_shapes
from export.compare import compare
from export.errors import UsageError
from focal_graph.spec import MAX_RANK, FocalSpec


def verdict(expected, actual, atol=1e-5, rtol=1e-5):
    (result,) = compare({"c": {"loss": np.asarray(expected)}}, {"c": {"loss": np.asarray(actual)}},
                        atol=atol, rtol=rtol, cases=["c"], outputs=["loss"])
    return result


def test_an_element_fails_only_beyond_both_tolerances():
    # 1000 vs 1000.005: abs 5e-3 > atol but rel 5e-6 <= rtol -> passes
    # 0 vs 2e-6: rel inf > rtol but abs 2e-6 <= atol -> passes
    assert verdict([1000.0, 0.0], [1000.005, 2e-6]).passed
    failed = verdict([1.0, 0.0], [1.001, 2e-6])
    assert not failed.passed and failed.failures == 1 and failed.worst["index"] == [0]


def test_required_tolerances_are_the_smallest_that_pass():
    expected, actual = [1.0, 100.0], [1.125, 100.5]  # errors exact in binary: abs 0.125, 0.5; rel 0.125, 0.005
    result = verdict(expected, actual, atol=1e-5, rtol=1e-5)
    assert result.required_atol == 0.5  # at rtol 1e-5 both elements need atol; the larger is 0.5
    assert result.required_rtol == 0.125  # at atol 1e-5 both need rtol; the larger is 0.125
    assert verdict(expected, actual, atol=0.5, rtol=1e-5).passed
    assert not verdict(expected, actual, atol=0.49, rtol=1e-5).passed
    assert verdict(expected, actual, atol=1e-5, rtol=0.125).passed
    assert not verdict(expected, actual, atol=1e-5, rtol=0.12).passed
    assert (result.max_abs_error, result.max_rel_error) == (0.5, 0.125)


def test_nan_matches_only_nan_and_inf_only_the_same_inf():
    assert verdict([np.nan, np.inf, -np.inf], [np.nan, np.inf, -np.inf]).passed
    assert not verdict([np.nan], [0.0]).passed
    assert not verdict([0.0], [np.nan]).passed
    assert not verdict([np.inf], [-np.inf]).passed
    assert not verdict([np.inf], [1e30]).passed


def test_shape_and_dtype_mismatches_fail_with_a_reason():
    result = verdict(np.zeros(3, np.float32), np.zeros(4, np.float32))
    assert not result.passed and "shape" in result.problems[0]
    result = verdict(np.zeros(3, np.float32), np.zeros(3, np.float64))
    assert not result.passed and "dtype" in result.problems[0]


def test_an_output_with_no_element_compared_fails():
    result = verdict(np.zeros((0, 3)), np.zeros((0, 3)))
    assert not result.passed and result.elements == 0 and "no element compared" in result.problems[0]


def test_an_empty_case_among_others_passes():
    expected = {"empty": {"loss": np.zeros((0, 3))}, "full": {"loss": np.ones(3)}}
    (result,) = compare(expected, expected, atol=0, rtol=0, cases=["empty", "full"], outputs=["loss"])
    assert result.passed and result.elements == 3


def test_worst_names_a_failing_element_not_merely_the_largest_error():
    result = verdict([1e6, 1.0], [1e6 + 1, 1.1])  # 1e6+1 passes on rtol; 1.1 fails
    assert not result.passed and result.worst["index"] == [1] and result.worst["failing"]


def test_dimension_names_mean_something():
    assert dimension_names(FocalSpec(variant="softmax")) == ("N", "C")
    assert dimension_names(FocalSpec(variant="softmax", rank=3)) == ("N", "T", "C")
    assert dimension_names(FocalSpec(variant="softmax", rank=4)) == ("N", "H", "W", "C")
    assert dimension_names(FocalSpec(variant="softmax", rank=5)) == ("N", "D", "H", "W", "C")
    assert dimension_names(FocalSpec(variant="softmax", rank=6)) == ("N", "d1", "d2", "d3", "d4", "C")


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_default_shapes_take_every_batch_dimension_to_0_and_1(rank):
    shapes = default_shapes(FocalSpec(variant="sparse_softmax", rank=rank))
    for axis in range(rank - 1):
        sizes = {shape[axis] for shape in shapes}
        assert {0, 1} <= sizes and len(sizes) >= 3
    assert {1, 2} <= {shape[-1] for shape in shapes}  # a dynamic C varies too, but never to 0


def test_fixed_class_count_is_never_varied():
    shapes = default_shapes(FocalSpec(variant="sparse_softmax", num_classes=7, rank=3))
    assert {shape[-1] for shape in shapes} == {7}


def test_cases_cover_the_edges_the_spec_has():
    names = [case.name for case in generate(FocalSpec(variant="sparse_softmax", ignore_index=-1))]
    for edge in ("large logits", "ties", "labels 0 and C-1", "ignore_index", "all ignore_index"):
        assert any(name.startswith(edge) for name in names), edge
    names = [case.name for case in generate(FocalSpec(variant="softmax", from_logits=False))]
    assert any(name.startswith("saturated probabilities") for name in names)
    assert any(name.startswith("soft targets") for name in names)


def test_boundary_labels_are_0_and_c_minus_1():
    cases = generate(FocalSpec(variant="sparse_softmax", num_classes=4))
    labels = next(c for c in cases if c.name.startswith("labels 0 and C-1")).inputs["labels"]
    assert set(np.unique(labels)) == {0, 3}


def test_cases_are_reproducible_and_typed():
    spec = FocalSpec(variant="sigmoid", dtype="float16", rank=3)
    first, second = generate(spec), generate(spec)
    assert [c.name for c in first] == [c.name for c in second]
    for a, b in zip(first, second):
        for name in spec.input_names:
            np.testing.assert_array_equal(a.inputs[name], b.inputs[name])
            assert a.inputs[name].dtype == np.float16


def test_edge_cases_are_built_on_the_first_shape_with_no_empty_dimension():
    cases = generate(FocalSpec(variant="softmax"), shapes=[(0, 4), (3, 4)])
    edges = [case for case in cases if not case.name.startswith("random")]
    assert edges and all(case.shape == (3, 4) for case in edges)
    assert [case.name for case in generate(FocalSpec(variant="softmax"), shapes=[(0, 4)])] == ["random 0x4"]


def test_invalid_labels_and_non_finite_predictions_are_cases():
    spec = FocalSpec(variant="sparse_softmax", num_classes=4, ignore_index=-1)
    cases = {case.name.rsplit(" ", 1)[0]: case for case in generate(spec)}
    labels = cases["invalid labels"].inputs["labels"]
    assert {4, -2} <= set(labels.ravel().tolist())
    logits = cases["non-finite predictions at ignore_index"].inputs["logits"]
    labels = cases["non-finite predictions at ignore_index"].inputs["labels"]
    assert (labels[~np.isfinite(logits).all(axis=-1)] == -1).all()
    assert np.isnan(logits).any() and np.isposinf(logits).any() and np.isneginf(logits).any()


def test_large_rank_keeps_cases_small():
    shapes = default_shapes(FocalSpec(variant="softmax", rank=MAX_RANK))
    assert max(int(np.prod(shape)) for shape in shapes) <= 33 * 5


def test_too_large_a_case_is_a_usage_error():
    with pytest.raises(UsageError, match="--shapes: 100000x100000 has 10000000000 elements"):
        parse_shapes(FocalSpec(variant="softmax"), "100000x100000")
    with pytest.raises(UsageError, match="classes"):
        generate(FocalSpec(variant="softmax", num_classes=10**9))


@pytest.mark.parametrize(
    "text, named",
    [("8x10x3", "rank 3"), ("8xten", "sizes joined by x"), ("8x0", "no class"), ("", "at least one"), ("-1x4", "negative"),
     ("8x4,8x4", "given twice")],
)
def test_bad_shapes_name_the_option(text, named):
    with pytest.raises(UsageError, match=named):
        parse_shapes(FocalSpec(variant="softmax"), text)


def test_shapes_must_keep_a_fixed_class_count():
    with pytest.raises(UsageError, match="fixes C=4"):
        parse_shapes(FocalSpec(variant="softmax", num_classes=4), "8x5")
    assert parse_shapes(FocalSpec(variant="softmax", num_classes=4), "8x4, 0x4") == [(8, 4), (0, 4)]
