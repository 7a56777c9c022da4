"""`focalgraph export`: every preset and a matrix of variants x ranks x dtypes x reductions.

Each export runs its own validation (ONNX Runtime against the SavedModel). The tests check that
report, and then check the numbers independently: the ONNX file in a plain InferenceSession
against the stored TensorFlow outputs (numpy's assert_allclose, not export.compare), and those
TensorFlow outputs against the float64 numpy transcription of the formula.
"""

import itertools

import numpy as np
import onnx
import onnxruntime
import pytest

import reference
from exporting import FORMS, assert_close, exported, load_json
from exporting import reference as read_reference
from export import artifact
from export.exporter import default_specs
from focal_graph.spec import FocalSpec

pytestmark = pytest.mark.slow

VARIANT_OPTIONS = {
    "sparse_softmax": dict(gamma=2.0, alpha=0.25, ignore_index=-1),
    "softmax": dict(gamma=1.5, label_smoothing=0.1),
    "sigmoid": dict(gamma=2.0, alpha=0.25),
}
REDUCTIONS = ("none", "sum", "mean")
# every variant x rank x dtype; the spec's own reduction cycles, as every artifact carries all forms
MATRIX = [
    FocalSpec(variant=variant, rank=rank, dtype=dtype, reduction=REDUCTIONS[i % 3], **VARIANT_OPTIONS[variant])
    for i, (variant, rank, dtype) in enumerate(itertools.product(VARIANT_OPTIONS, (2, 3, 4, 5), ("float32", "float16")))
]
# float16 results are rounded to 11 bits; float32 is the 1e-5
TOLERANCE = {"float32": dict(rtol=1e-5, atol=1e-5), "float16": dict(rtol=2e-3, atol=1e-3)}


def numpy_forms(spec, inputs):
    """The four forms from the float64 formula (tests/reference.py), for the matrix's specs."""
    with np.errstate(invalid="ignore", over="ignore"):  # the non-finite cases
        return _numpy_forms(spec, inputs)


def _numpy_forms(spec, inputs):
    y_true, predictions = (np.asarray(v) for v in inputs.values())
    options = {key: value for key, value in VARIANT_OPTIONS[spec.variant].items()}
    if spec.variant == "sparse_softmax":
        loss = reference.sparse_softmax_focal(y_true, predictions, **options)
        return reference.forms(loss, counted=y_true != options["ignore_index"])
    function = reference.softmax_focal if spec.variant == "softmax" else reference.sigmoid_focal
    return reference.forms(function(y_true, predictions, **options))


def bare_session_outputs(directory, inputs):
    session = onnxruntime.InferenceSession(str(directory / artifact.ONNX), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, inputs)))


@pytest.mark.parametrize("spec", MATRIX, ids=lambda s: f"{s.variant}-rank{s.rank}-{s.dtype}-{s.reduction}")
def test_variant_matrix_onnx_matches_tensorflow_and_the_formula(tmp_path, spec):
    out = tmp_path / "artifact"
    result = exported(out, spec)
    assert result.validation["passed"]
    assert result.validation["onnxruntime"]["provider"] == "CPUExecutionProvider"
    if spec.dtype == "float32":
        assert result.validation["tolerance"] == {"atol": 1e-5, "rtol": 1e-5}
    cases, tensorflow = read_reference(out)
    shapes = [case.shape for case in cases]
    assert any(0 in shape[:-1] for shape in shapes) and any(1 in shape[:-1] for shape in shapes)
    realistic = [case for case in cases if "loss" not in case.forms]
    assert [case.name.split()[0] for case in realistic] == ["realistic"]  # validated at export, reductions only
    for case in cases:
        if case in realistic:
            continue  # 16M elements: its reductions against float64 are tests/test_reductions.py's
        onnx_runtime = bare_session_outputs(out, case.inputs)
        want = numpy_forms(spec, case.inputs)
        for form in FORMS:
            what = f"{case.name} {form}"
            # the unreduced loss keeps the predictions' dtype; reductions of 16-bit losses are float32
            dtype = spec.dtype if form == "loss" or spec.dtype != "float16" else "float32"
            assert onnx_runtime[form].shape == tensorflow[case.name][form].shape, what
            assert onnx_runtime[form].dtype == np.dtype(dtype), what
            assert tensorflow[case.name][form].dtype == np.dtype(dtype), what
            assert_close(onnx_runtime[form], tensorflow[case.name][form], **TOLERANCE[spec.dtype], what=what)
            with np.errstate(over="ignore"):  # a float16 loss can overflow: inf on both sides
                expected = np.asarray(want[form]).astype(dtype)
            got = tensorflow[case.name][form]
            if case.name.startswith("non-finite"):
                # NaN or inf for NaN/inf predictions: which of the two is IEEE's call (0 * inf), but
                # a finite number where the formula gives none, or the reverse, is a failure
                np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected), err_msg=what)
                got, expected = got[np.isfinite(got)], expected[np.isfinite(expected)]
            assert_close(got, expected, **TOLERANCE[spec.dtype], what=what)


@pytest.mark.parametrize("name", [n for n in default_specs() if n.startswith("preset-")])
def test_preset_exports_with_every_file_and_a_passing_report(tmp_path, name):
    spec = default_specs()[name]
    out = tmp_path / name
    exported(out, spec)
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"spec.json", "model.onnx", "reference.npz", "validation.json", "manifest.json",
            "saved_model/saved_model.pb"} <= names
    assert (out / "spec.json").read_text() == spec.to_json()
    assert load_json(out / "validation.json")["passed"]
    manifest = load_json(out / "manifest.json")
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert {"focalgraph", "tensorflow", "tf2onnx", "onnx", "numpy"} <= set(manifest["versions"])
    assert manifest["created"].endswith("+00:00")


def test_seed001_table_through_the_exported_onnx(tmp_path):
    """The published table of seed 001, reproduced by the exported preset in ONNX Runtime."""
    data = load_json(reference.__file__.replace("reference.py", "data/seed001.json"))
    out = tmp_path / "seed001"
    exported(out, default_specs()["preset-multi-category"])
    inputs = {"targets": np.eye(4, dtype=np.float32)[data["labels"]],
              "probabilities": np.asarray(data["predictions"], np.float32)}
    got = bare_session_outputs(out, inputs)["loss"]
    np.testing.assert_allclose(got[:, 0], data["printed_loss"], rtol=1e-6, atol=1e-7)  # printed to 8 decimals


def test_onnx_dimensions_are_named_and_shared_between_inputs_and_outputs(tmp_path):
    spec = FocalSpec(variant="sigmoid", rank=4)
    exported(tmp_path / "a", spec, validate=False)
    model = onnx.load(str(tmp_path / "a" / artifact.ONNX))

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    values = {v.name: dims(v) for v in list(model.graph.input) + list(model.graph.output)}
    assert values == {
        "targets": ["N", "H", "W", "C"], "logits": ["N", "H", "W", "C"],
        "loss": ["N", "H", "W", "C"], "per_sample": ["N"], "sum": [], "mean": [],
        "normalized": [], "per_sample_normalized": ["N"],  # the sigmoid variant's (issue 12)
    }


def test_fixed_class_count_stays_a_number(tmp_path):
    exported(tmp_path / "a", FocalSpec(variant="sparse_softmax", num_classes=7, rank=3), validate=False)
    model = onnx.load(str(tmp_path / "a" / artifact.ONNX))
    logits = next(v for v in model.graph.input if v.name == "logits")
    assert [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == ["N", "T", 7]


def test_onnx_metadata_carries_the_spec_and_versions(tmp_path):
    spec = FocalSpec(variant="softmax", alpha=0.5)
    exported(tmp_path / "a", spec, validate=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "a" / artifact.ONNX), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert FocalSpec.from_json(metadata["focalgraph.spec"]) == spec
    assert metadata["focalgraph.focalgraph"] and metadata["focalgraph.tf2onnx"] and metadata["focalgraph.tensorflow"]
    assert metadata["focalgraph.opset"] == "17"


@pytest.mark.parametrize("opset", [13, 18])
def test_opset_is_the_one_asked_for(tmp_path, opset):
    result = exported(tmp_path / "a", FocalSpec(variant="sparse_softmax", rank=3), opset=opset)
    model = onnx.load(str(tmp_path / "a" / artifact.ONNX))
    assert {entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")} == {opset}
    assert result.validation["passed"]


def test_onnx_only_export_validates_against_the_rebuilt_graph(tmp_path):
    result = exported(tmp_path / "a", FocalSpec(variant="softmax"), format="onnx")
    assert not (tmp_path / "a" / artifact.SAVED_MODEL).exists()
    assert result.validation["passed"] and "spec's graph" in result.validation["reference"]


def test_savedmodel_only_export_has_no_onnx_and_no_report(tmp_path):
    result = exported(tmp_path / "a", FocalSpec(variant="softmax"), format="savedmodel")
    assert result.validation is None
    assert not (tmp_path / "a" / artifact.ONNX).exists() and (tmp_path / "a" / artifact.REFERENCE).is_file()


def test_export_from_a_spec_file_with_an_override(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(FocalSpec(variant="sparse_softmax", gamma=2.0, ignore_index=-1).to_json())
    from export.exporter import export

    result = export(tmp_path / "a", spec=str(path), gamma=0.5, provider="cpu")
    assert result.spec == FocalSpec(variant="sparse_softmax", gamma=0.5, ignore_index=-1)
    assert FocalSpec.from_json((tmp_path / "a" / "spec.json").read_text()).gamma == 0.5


def test_savedmodel_without_xla_validates_too_and_the_manifest_says_which(tmp_path):
    result = exported(tmp_path / "plain", FocalSpec(variant="sparse_softmax", ignore_index=-1), xla=False)
    assert result.validation["passed"]
    assert load_json(tmp_path / "plain" / "manifest.json")["saved_model_xla"] is False


def test_sigmoid_onnx_has_no_softplus_or_sigmoid_and_matches_the_formula(tmp_path):
    """ONNX Runtime 1.31's CPU Softplus is slow (120-170 ms per 16.4M elements) and its Sigmoid
    returns 0 below x = -17; the sigmoid loss's ONNX graph has neither, and matches the float64
    formula at logits where softplus matters most."""
    spec = FocalSpec(variant="sigmoid", alpha=0.25)
    exported(tmp_path / "a", spec, validate=False)
    model = onnx.load(str(tmp_path / "a" / artifact.ONNX))
    assert not {"Softplus", "Sigmoid"} & {node.op_type for node in model.graph.node}
    logits = np.array([[-100.0, -17.0, -1.0, 0.0, 1.0, 17.0, 100.0]] * 2, np.float32)
    targets = np.array([[1.0] * 7, [0.0] * 7], np.float32)
    got = bare_session_outputs(tmp_path / "a", {"targets": targets, "logits": logits})["loss"]
    want = reference.sigmoid_focal(targets, logits, gamma=2.0, alpha=0.25)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-30)
