"""Validation's realistic case: large enough that float32 reductions that drift fail it, with
inputs every machine regenerates identically."""

import numpy as np
import onnx
import pytest

from export.cases import REDUCED_FORMS, load_reference, portable_uniform, realistic_case, realistic_shape
from export.validation import run
from exporting import exported
from focal_graph.spec import FocalSpec

MASK = (1 << 64) - 1


def splitmix64(state: int) -> tuple[int, int]:
    """Steele, Lea and Flood's SplitMix64 (the reference C code's next()), in Python integers."""
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def test_portable_uniform_is_splitmix64_of_the_index():
    """Seed 0, stream 0 is the plain SplitMix64 sequence from state 0 (its first output is the
    published 0xE220A8397B1DCDAF), top 24 bits over 2**24."""
    state, outputs = 0, []
    for _ in range(1000):
        state, value = splitmix64(state)
        outputs.append(value)
    assert outputs[0] == 0xE220A8397B1DCDAF
    got = portable_uniform(1001, seed=0, stream=0)[1:]
    np.testing.assert_array_equal(got, np.array([value >> 40 for value in outputs], np.float64) / 2**24)
    assert got.min() >= 0 and got.max() < 1
    assert np.array_equal(got.astype(np.float32).astype(np.float64), got)  # exact in float32


@pytest.mark.parametrize("spec, shape", [
    (FocalSpec(variant="sparse_softmax"), (16384, 1000)),
    (FocalSpec(variant="sigmoid", rank=3), (64, 256, 1000)),
    (FocalSpec(preset="sparse_softmax", alpha=(1.0, 1.0, 1.0, 1.0)), (16384, 4)),
    (FocalSpec(variant="sparse_softmax", rank=4, ignore_index=255), (16, 32, 32, 1000)),
])
def test_realistic_shape_is_16384_positions_at_the_specs_classes(spec, shape):
    assert realistic_shape(spec) == shape
    case = realistic_case(spec)
    normalized = ("normalized", "per_sample_normalized") if spec.variant == "sigmoid" else ()
    assert case.forms == REDUCED_FORMS + normalized
    assert case.shape == shape
    y_true = case.inputs[spec.input_names[0]]
    if spec.sparse:
        valid = (y_true >= 0) & (y_true < shape[-1])
        assert valid.mean() > 0.85 and (valid | (y_true == spec.ignore_index)).all()


@pytest.mark.slow
def test_a_drifting_float32_sum_fails_validation_at_the_realistic_case(tmp_path):
    """The exported model with its `sum` rewired to one float32 ReduceSum over every element (what
    ONNX Runtime drifted on, 1.6e-3 at 16384 x 1000) passes every small case and fails the
    realistic one; the model as exported passes."""
    spec = FocalSpec(variant="sigmoid", alpha=0.25)
    exported(tmp_path / "loss", spec)
    cases, expected = load_reference(tmp_path / "loss" / "reference.npz", spec, ("loss", "per_sample", "sum", "mean"))
    model = onnx.load(str(tmp_path / "loss" / "model.onnx"))
    for node in model.graph.node:
        node.output[:] = ["exported_sum" if name == "sum" else name for name in node.output]
    model.graph.node.append(onnx.helper.make_node("ReduceSum", ["loss"], ["sum"], keepdims=0, name="naive_sum"))
    onnx.save(model, str(tmp_path / "naive.onnx"))

    report = run(tmp_path / "naive.onnx", spec, cases, expected, provider="cpu", atol=1e-5, rtol=1e-5, source="test")
    verdict = {output["output"]: output for output in report["outputs"]}
    assert not report["passed"]
    assert not verdict["sum"]["passed"] and verdict["sum"]["worst"]["case"].startswith("realistic ")
    assert verdict["sum"]["max_rel_error"] > 1e-4
    assert verdict["loss"]["passed"] and verdict["per_sample"]["passed"]

    exported_report = run(tmp_path / "loss" / "model.onnx", spec, cases, expected, provider="cpu", atol=1e-5, rtol=1e-5,
                          source="test")
    assert exported_report["passed"]


@pytest.mark.parametrize("spec, shape", [
    (FocalSpec(variant="sigmoid", num_classes=20000), (838, 20000)),  # 2**24 // 20000 rows
    (FocalSpec(variant="sparse_softmax", num_classes=1024), (16384, 1024)),  # exactly 2**24: kept
    (FocalSpec(variant="sigmoid", rank=3, num_classes=5000), (13, 256, 5000)),
])
def test_realistic_shape_takes_fewer_rows_where_c_would_pass_2_to_the_24_elements(spec, shape):
    assert realistic_shape(spec) == shape and np.prod(shape) <= 1 << 24


def test_a_reference_written_with_16384_rows_at_a_large_c_still_regenerates(tmp_path):
    """Artifacts exported before the bound name their realistic case at 16384 rows."""
    from export.cases import read_realistic, save_reference

    spec = FocalSpec(variant="sparse_softmax", num_classes=1100)
    legacy = realistic_case(spec, 3, legacy=True)
    assert legacy.name == "realistic 16384x1100 seed 3" and realistic_shape(spec) == (15252, 1100)
    save_reference(tmp_path / "reference.npz", [legacy], {legacy.name: {form: np.float32(1.0) for form in legacy.forms}})
    cases, outputs = read_realistic(tmp_path / "reference.npz", spec, legacy.forms)
    assert [case.name for case in cases] == [legacy.name] and cases[0].shape == (16384, 1100)
    for name, array in legacy.inputs.items():
        np.testing.assert_array_equal(cases[0].inputs[name], array)
