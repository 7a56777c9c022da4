"""Loose types are refused, naming the argument (issue 10, item 6): numpy reads True as 1, "2" and
b"2" as 2, and 2.7 as a size 2; a float32 constant of 1e300 is inf. Messages show values as
Python writes them (-1.0, not np.float64(-1.0))."""

import numpy as np
import pytest

import focal_graph as fg
from export.cases import parse_shapes
from export.errors import UsageError
from export.validation import validate
from focal_graph.spec import FocalSpec


@pytest.mark.parametrize("gamma", ["2", True, b"2", np.True_, [1.0, "2"], [True, 2.0], {}])
def test_gamma_that_is_not_a_number_is_refused(gamma):
    with pytest.raises(ValueError, match=r"^gamma: expected a number or a list of numbers, got "):
        FocalSpec(variant="softmax", gamma=gamma)


@pytest.mark.parametrize("counts", [[True, 2], ["3", 4], [b"3", 4], np.array([True, False])])
def test_class_counts_that_are_not_numbers_are_refused(counts):
    with pytest.raises(ValueError, match=r"^class_counts: expected a list of positive numbers, got "):
        FocalSpec(variant="softmax", class_counts=counts)
    with pytest.raises(ValueError, match=r"^class_counts: "):
        fg.class_weights(counts)


@pytest.mark.parametrize(
    "fields, message",
    [(dict(alpha=1e300), "alpha: 1e+300 is beyond float32's range"),
     (dict(class_weight=[1.0, 1e39]), "class_weight: 1e+39 for class 1 is beyond float32's range"),
     (dict(gamma=3.5e38), "gamma: 3.5e+38 is beyond float32's range"),
     (dict(class_counts=[1e308, 1e308]), "class_counts: counts from 1e+308 to 1e+308 give class weights that are not"),
     (dict(class_counts=[1e-300, 1e300]), "class_counts: counts from 1e-300 to 1e+300 give class weights that are not")],
)
def test_values_that_would_be_inf_or_nan_in_the_graph_are_refused(fields, message):
    with pytest.raises(ValueError, match="^" + message.replace("+", r"\+")):
        FocalSpec(variant="softmax", **fields)


def test_the_largest_float32_itself_is_accepted():
    assert FocalSpec(variant="softmax", alpha=float(np.finfo(np.float32).max)).alpha == float(np.finfo(np.float32).max)


@pytest.mark.parametrize(
    "fields, shown",
    [(dict(gamma=np.float64(-1.0)), "got -1.0"),
     (dict(alpha=[np.float32(0.5), np.float64(-1.0)]), "got -1.0 for class 1"),
     (dict(class_counts=[np.float64(-1.0), 2]), "got -1.0 for class 0"),
     (dict(rank=np.int64(1)), "got 1"),
     (dict(label_smoothing=np.float64(2.0)), "got 2.0"),
     (dict(reduction=np.str_("average")), "got 'average'")],
)
def test_messages_show_plain_python_values(fields, shown):
    with pytest.raises(ValueError) as raised:
        FocalSpec(variant="softmax", **fields)
    assert str(raised.value).endswith(shown) and "np." not in str(raised.value), str(raised.value)


def test_numeric_arrays_and_numpy_scalars_are_still_numbers():
    spec = FocalSpec(variant="softmax", gamma=np.array([1.0, 2.0]), alpha=np.float32(0.5), class_counts=np.array([3, 4]))
    assert spec.gamma == (1.0, 2.0) and spec.alpha == 0.5 and spec.class_counts == (3, 4)


@pytest.mark.parametrize("shapes", [[(2.7, 3.2)], [(True, 3)], [(2, np.float64(3.0))], [3]])
def test_shapes_that_are_not_integers_are_refused_not_truncated(shapes):
    with pytest.raises(UsageError, match="^--shapes: "):
        parse_shapes(FocalSpec(variant="softmax"), shapes)


def test_validate_refuses_fractional_shapes(onnx_artifact):
    with pytest.raises(UsageError, match=r"^--shapes: sizes are integers, got 2\.7"):
        validate(onnx_artifact, shapes=[(2.7, 3.2)], provider="cpu")


@pytest.mark.parametrize("gamma", ["2", True, b"2"])
def test_the_loss_functions_refuse_them_too(gamma):
    pytest.importorskip("tensorflow")
    with pytest.raises(ValueError, match=r"^gamma: expected a number"):
        fg.sparse_softmax_focal_loss(np.array([0, 1]), np.zeros((2, 3), np.float32), gamma=gamma)
