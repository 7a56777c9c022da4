"""Keras round trip: `FocalSpec.from_keras` gives the loss Keras computes, and `export --keras`
exports the loss a saved model was compiled with.

References: Keras's own value of each loss (its reduction applied), and for the one place where
Keras and the spec differ on purpose (Keras clips a softmax of logits) a float64 transcription of
the formula (tests/reference.py).
"""

import dataclasses
import json
import warnings

import keras
import numpy as np
import pytest

import reference
from exporting import one_line_error, run_main, snapshot
from export.exporter import export
from export.options import spec_from_options
from export.runtime import LossSession
from focal_graph import keras as focal_keras
from focal_graph.graph import SpecLoss
from focal_graph.keras_specs import UntranslatedWarning
from focal_graph.spec import FocalSpec

NUM_CLASSES = 4
COUNTS = [60, 80, 50, 66]
# float32-exact per-class values: Keras turns a Python list into a float32 constant even in a
# float64 loss, which would otherwise differ from the spec's float64 values in the 8th digit
ALPHAS = [0.125, 0.25, 0.5, 0.75]

# name -> (the loss, what y_true is, what y_pred is)
FOCALGRAPH_LOSSES = {
    "sparse_softmax": (lambda: focal_keras.SparseSoftmaxFocalLoss(gamma=1.5, alpha=ALPHAS, ignore_index=-1), "labels", "logits"),
    "sparse_softmax_sum": (lambda: focal_keras.SparseSoftmaxFocalLoss(ignore_index=-1, reduction="sum"), "labels", "logits"),
    "softmax_probabilities": (lambda: focal_keras.SoftmaxFocalLoss(alpha=0.25, label_smoothing=0.1, from_logits=False,
                                                                   epsilon=1e-4), "one_hot", "probabilities"),
    "sigmoid_none": (lambda: focal_keras.SigmoidFocalLoss(alpha=0.25, class_weight=[1, 2, 3, 4], reduction=None),
                     "multi_hot", "logits"),
    "sigmoid_weighted_mean": (lambda: focal_keras.SigmoidFocalLoss(gamma=[0.5, 1, 2, 3], reduction="mean_with_sample_weight"),
                              "multi_hot", "logits"),
    "multilabel_lsr": (lambda: focal_keras.MultilabelLSRFocalLoss(COUNTS, epsilon=0.2), "multi_hot", "sigmoid"),
    "multi_category": (lambda: focal_keras.MultiCategoryFocalLoss(COUNTS, gamma=1.0, reduction="sum"), "one_hot", "probabilities"),
    "focal_spec": (lambda: focal_keras.FocalSpecLoss(FocalSpec(variant="softmax", class_counts=COUNTS, weighting="effective_number",
                                                                rank=2)), "one_hot", "logits"),
}
KERAS_LOSSES = {
    "categorical_probabilities": (lambda: keras.losses.CategoricalFocalCrossentropy(dtype="float64"), "one_hot", "probabilities"),
    "categorical_logits_sum": (lambda: keras.losses.CategoricalFocalCrossentropy(
        alpha=ALPHAS, gamma=1.5, from_logits=True, label_smoothing=0.1, reduction="sum", dtype="float64"), "one_hot", "logits"),
    "categorical_none": (lambda: keras.losses.CategoricalFocalCrossentropy(gamma=3.0, reduction=None, dtype="float64"),
                         "soft", "probabilities"),
    "binary_probabilities": (lambda: keras.losses.BinaryFocalCrossentropy(dtype="float64"), "multi_hot", "sigmoid"),
    "binary_balanced_logits": (lambda: keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.3, gamma=3.0, from_logits=True, label_smoothing=0.2, dtype="float64"),
        "multi_hot", "logits"),
    "binary_alpha_unused": (lambda: keras.losses.BinaryFocalCrossentropy(alpha=0.9, from_logits=True, reduction="mean",
                                                                         dtype="float64"), "soft", "logits"),
}


def inputs(rng, y_kind, prediction_kind, shape=(6, NUM_CLASSES), dtype=np.float32):
    logits = rng.normal(size=shape) * 2.0
    labels = rng.integers(0, NUM_CLASSES, size=shape[:-1])
    y_true = {
        "labels": np.where(np.arange(labels.size).reshape(labels.shape) % 4 == 1, -1, labels),
        "one_hot": np.eye(NUM_CLASSES)[labels],
        "multi_hot": (rng.random(shape) < 0.4).astype(np.float64),
        "soft": rng.dirichlet(np.ones(NUM_CLASSES), size=shape[:-1]),
    }[y_kind]
    y_pred = {
        "logits": logits,
        "probabilities": np.exp(reference.log_softmax(logits)),
        "sigmoid": 1.0 / (1.0 + np.exp(-logits)),
    }[prediction_kind]
    return (y_true if y_kind == "labels" else y_true.astype(dtype)), y_pred.astype(dtype)


@pytest.mark.parametrize("name", sorted(FOCALGRAPH_LOSSES))
def test_spec_of_a_focalgraph_loss_computes_what_keras_computes(rng, name):
    make_loss, y_kind, prediction_kind = FOCALGRAPH_LOSSES[name]
    loss = make_loss()
    y_true, y_pred = inputs(rng, y_kind, prediction_kind)
    spec = FocalSpec.from_keras(loss)
    assert spec == loss.spec
    np.testing.assert_allclose(SpecLoss(spec)(y_true, y_pred).numpy(), keras.ops.convert_to_numpy(loss(y_true, y_pred)),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(FOCALGRAPH_LOSSES))
def test_spec_of_a_focalgraph_loss_survives_keras_serialisation(name):
    loss = FOCALGRAPH_LOSSES[name][0]()
    restored = keras.losses.deserialize(json.loads(json.dumps(keras.losses.serialize(loss))))
    assert FocalSpec.from_keras(restored) == FocalSpec.from_keras(loss)


def test_reduction_is_what_keras_applies():
    assert focal_keras.SigmoidFocalLoss().spec.reduction == "mean"  # Keras's default, sum_over_batch_size
    assert focal_keras.SigmoidFocalLoss(reduction="sum").spec.reduction == "sum"
    assert focal_keras.SigmoidFocalLoss(reduction=None).spec.reduction == "none"
    # FocalSpecLoss never applied its spec's own reduction; Keras's replaces it
    assert focal_keras.FocalSpecLoss(FocalSpec(variant="sigmoid", reduction="sum")).spec.reduction == "mean"


@pytest.mark.parametrize("name", sorted(KERAS_LOSSES))
def test_spec_of_a_keras_focal_loss_computes_what_keras_computes(rng, name):
    make_loss, y_kind, prediction_kind = KERAS_LOSSES[name]
    loss = make_loss()
    y_true, y_pred = inputs(rng, y_kind, prediction_kind, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntranslatedWarning)  # the clip of logits: inactive on these inputs
        spec = FocalSpec.from_keras(loss)
    assert spec.dtype == "float64"
    np.testing.assert_allclose(SpecLoss(spec)(y_true, y_pred).numpy(), keras.ops.convert_to_numpy(loss(y_true, y_pred)),
                               rtol=1e-10)


def test_keras_focal_loss_by_name_or_function_is_the_class_with_its_defaults():
    for binary in ("binary_focal_crossentropy", "BinaryFocalCrossentropy", keras.losses.binary_focal_crossentropy):
        assert FocalSpec.from_keras(binary) == FocalSpec.from_keras(keras.losses.BinaryFocalCrossentropy())
    for categorical in ("categorical_focal_crossentropy", keras.losses.categorical_focal_crossentropy):
        assert FocalSpec.from_keras(categorical) == FocalSpec.from_keras(keras.losses.CategoricalFocalCrossentropy())
    assert FocalSpec.from_keras("categorical_focal_crossentropy") == FocalSpec(
        variant="softmax", alpha=0.25, gamma=2.0, from_logits=False, epsilon=1e-7, reduction="mean")


def test_probabilities_are_clipped_at_keras_current_epsilon(rng):
    y_true, y_pred = inputs(rng, "one_hot", "probabilities", dtype=np.float64)
    y_pred[:, 0] = 1e-9  # below both clips: the clip decides the loss where the label is 0
    previous = keras.config.epsilon()
    try:
        keras.config.set_epsilon(1e-3)
        loss = keras.losses.CategoricalFocalCrossentropy(dtype="float64")
        spec = FocalSpec.from_keras(loss)
        keras_value = keras.ops.convert_to_numpy(loss(y_true, y_pred))
    finally:
        keras.config.set_epsilon(previous)
    assert spec.epsilon == 1e-3
    np.testing.assert_allclose(SpecLoss(spec)(y_true, y_pred).numpy(), keras_value, rtol=1e-10)


def test_keras_clip_of_logits_is_said_in_one_line_and_the_spec_stays_exact():
    loss = keras.losses.CategoricalFocalCrossentropy(from_logits=True, reduction=None, dtype="float64")
    with pytest.warns(UntranslatedWarning, match=r"^from_logits: Keras's CategoricalFocalCrossentropy clips") as caught:
        spec = FocalSpec.from_keras(loss)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    logits = np.array([[-30.0, 0.0, 0.0, 0.0, 0.0]])  # the README's case: the true class far below
    targets = np.array([[1.0, 0.0, 0.0, 0.0, 0.0]])
    exact = reference.softmax_focal(targets, logits, alpha=0.25)
    np.testing.assert_allclose(SpecLoss(spec)(targets, logits).numpy(), exact, rtol=1e-12)
    assert keras.ops.convert_to_numpy(loss(targets, logits))[0] < 0.6 * exact[0]  # Keras's is capped


@pytest.mark.parametrize("loss, named", [
    (keras.losses.BinaryFocalCrossentropy(reduction="sum"), r"^reduction: BinaryFocalCrossentropy\(reduction='sum'\)"),
    (keras.losses.BinaryFocalCrossentropy(reduction=None), r"^reduction: BinaryFocalCrossentropy\(reduction=None\)"),
    (keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=1.5), r"^alpha: expected values in \[0, 1\]"),
    (keras.losses.CategoricalCrossentropy(), r"^loss: CategoricalCrossentropy is not a focal loss"),
    ("mse", r"^loss: 'mse' is not a focal loss"),
    (keras.losses.mean_squared_error, r"^loss: mean_squared_error is not a focal loss"),
], ids=["binary-sum", "binary-none", "alpha-above-1", "cross-entropy", "name", "function"])
def test_what_does_not_translate_is_refused_naming_the_argument(loss, named):
    with pytest.raises(ValueError, match=named):
        FocalSpec.from_keras(loss)


@pytest.mark.parametrize("name", ["CategoricalFocalCrossentropy", "BinaryFocalCrossentropy"])
def test_kerass_class_axis_translates_to_the_specs_axis(rng, name):
    # channels-first (N, C, H, W): Keras's value is the float64 formula on the classes-last transpose
    loss = getattr(keras.losses, name)(axis=1, from_logits=True, dtype="float64", reduction="sum_over_batch_size")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntranslatedWarning)  # Keras's clip of logits: said in its own test
        spec = dataclasses.replace(FocalSpec.from_keras(loss), rank=4)
    assert spec.axis == 1
    logits = rng.normal(size=(2, NUM_CLASSES, 3, 4)) * 3
    if name == "CategoricalFocalCrossentropy":
        targets = np.moveaxis(np.eye(NUM_CLASSES)[rng.integers(0, NUM_CLASSES, size=(2, 3, 4))], -1, 1)
    else:
        targets = (rng.uniform(size=logits.shape) < 0.3).astype(np.float64)
    keras_value = float(keras.ops.convert_to_numpy(loss(targets, logits)))
    np.testing.assert_allclose(float(SpecLoss(spec)(targets, logits)), keras_value, rtol=1e-10)


def test_a_subclass_of_a_keras_focal_loss_is_refused():
    class Doubled(keras.losses.CategoricalFocalCrossentropy):
        def call(self, y_true, y_pred):
            return 2.0 * super().call(y_true, y_pred)

    with pytest.raises(ValueError, match="^loss: Doubled is not a focal loss"):
        FocalSpec.from_keras(Doubled())


# --- export --keras -------------------------------------------------------------------------------

# name -> (the loss, what y_true is, what y_pred is, the model's input shape); no training: the
# compiled loss is what is exported
MODELS = {
    **{name: (make, y_kind, prediction_kind, (8,)) for name, (make, y_kind, prediction_kind) in FOCALGRAPH_LOSSES.items()
       if name in ("sparse_softmax", "softmax_probabilities", "multilabel_lsr", "multi_category", "focal_spec")},
    "sigmoid_rank_3": (lambda: focal_keras.SigmoidFocalLoss(alpha=0.25), "multi_hot", "logits", (5, 8)),
    "keras_categorical": (lambda: keras.losses.CategoricalFocalCrossentropy(alpha=ALPHAS, gamma=1.5), "one_hot", "probabilities", (8,)),
    "keras_binary": (lambda: keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, from_logits=True), "multi_hot",
                     "logits", (8,)),
}


def saved_model(path, loss, input_shape=(8,), outputs=1):
    inputs = keras.Input(input_shape)
    heads = [keras.layers.Dense(NUM_CLASSES, name=f"head_{i}")(inputs) for i in range(outputs)]
    model = keras.Model(inputs, heads if outputs > 1 else heads[0])
    model.compile(optimizer="sgd", loss=loss)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keras-models")
    return {name: saved_model(directory / f"{name}.keras", make(), shape) for name, (make, _, _, shape) in MODELS.items()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_export_keras_exports_the_loss_the_model_was_compiled_with(rng, tmp_path, keras_models, name):
    make_loss, y_kind, prediction_kind, input_shape = MODELS[name]
    loss = make_loss()
    out = tmp_path / "loss"
    spec = export(out, keras=keras_models[name], format="onnx", validate=False, provider="cpu").spec
    assert spec == FocalSpec.from_dict({**FocalSpec.from_keras(loss).to_dict(), "rank": 1 + len(input_shape),
                                        "num_classes": NUM_CLASSES})
    assert FocalSpec.from_json((out / "spec.json").read_text()) == spec
    y_true, y_pred = inputs(rng, y_kind, prediction_kind, shape=(6, *input_shape[:-1], NUM_CLASSES))
    form = {"none": "loss", "sum": "sum", "mean": "mean"}[spec.reduction]
    np.testing.assert_allclose(LossSession(out, provider="cpu").forms(y_true, y_pred)[form],
                               keras.ops.convert_to_numpy(loss(y_true, y_pred)), rtol=2e-6)


def test_export_keras_on_the_command_line_says_keras_clip_in_one_line(tmp_path):
    path = saved_model(tmp_path / "model.keras", keras.losses.CategoricalFocalCrossentropy(from_logits=True))
    result = run_main("export", "--keras", path, "--format", "onnx", "--no-validate", "--provider", "cpu",
                      "--out", tmp_path / "loss")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("focalgraph export: warning: from_logits: Keras's CategoricalFocalCrossentropy clips")
    assert FocalSpec.from_json((tmp_path / "loss" / "spec.json").read_text()).variant == "softmax"


@pytest.mark.parametrize("activation", ["sigmoid", None])
def test_export_keras_says_when_keras_took_the_cross_entropy_from_a_sigmoid_s_logits(tmp_path, activation):
    """Keras's BinaryFocalCrossentropy on a sigmoid activation's output uses the logits behind it:
    a confidently wrong p (logit -30) costs 30 in training, 16.1 in the spec (p clipped at 1e-7)."""
    logits = keras.ops.convert_to_tensor([[-30.0]])
    activated = keras.activations.sigmoid(logits)
    loss = keras.losses.BinaryFocalCrossentropy(gamma=0.0)
    positive = np.ones((1, 1), np.float32)
    assert keras.ops.convert_to_numpy(loss(positive, activated)) == pytest.approx(30.0)
    assert keras.ops.convert_to_numpy(loss(positive, keras.ops.convert_to_numpy(activated))) == pytest.approx(-np.log(1e-7))

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(NUM_CLASSES, activation=activation)])
    model.compile(optimizer="sgd", loss=keras.losses.BinaryFocalCrossentropy())
    model.save(tmp_path / "model.keras")
    result = run_main("export", "--keras", tmp_path / "model.keras", "--format", "onnx", "--no-validate", "--provider", "cpu",
                      "--out", tmp_path / "loss")
    assert result.returncode == 0, result.stderr
    if activation is None:
        assert result.stderr == ""
    else:
        assert result.stderr.strip().splitlines() == [
            "focalgraph export: warning: from_logits: the model's output is a sigmoid activation, and Keras's "
            "BinaryFocalCrossentropy took its cross-entropy from that activation's logits, unclipped; the spec takes the "
            "probabilities, clipped to [1e-07, 1 - 1e-07]: the losses agree while every probability is in that range"]


def test_export_keras_reads_the_config_not_the_weights(tmp_path):
    import zipfile

    saved = saved_model(tmp_path / "saved.keras", focal_keras.SigmoidFocalLoss(alpha=0.25))
    without_weights = tmp_path / "without-weights.keras"
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(without_weights, "w") as copy:
        for member in source.namelist():
            if member != "model.weights.h5":
                copy.writestr(member, source.read(member))
    spec = export(tmp_path / "loss", keras=without_weights, format="onnx", validate=False, provider="cpu").spec
    assert spec == FocalSpec(variant="sigmoid", alpha=0.25, num_classes=NUM_CLASSES, reduction="mean")


@pytest.mark.parametrize("case, named", [
    ("with-variant", "--preset/--variant/--spec/--keras: give exactly one"),
    ("not-a-model", "is not a .keras model (not a zip archive)"),
    ("not-focal", "loss: 'mse' is not a focal loss"),
    ("binary-sum", "reduction: BinaryFocalCrossentropy(reduction='sum')"),
    ("uncompiled", "was saved without a compiled loss"),
    ("two-outputs", "has a loss for each of the outputs head_0, head_1"),
])
def test_export_keras_refuses_in_one_line_and_writes_nothing(tmp_path, case, named):
    model = tmp_path / "model.keras"
    extra = []
    if case == "with-variant":
        saved_model(model, focal_keras.SoftmaxFocalLoss())
        extra = ["--variant", "softmax"]
    elif case == "not-a-model":
        model.write_text('{"variant": "softmax"}')
    elif case == "not-focal":
        saved_model(model, "mse")
    elif case == "binary-sum":
        saved_model(model, keras.losses.BinaryFocalCrossentropy(reduction="sum"))
    elif case == "uncompiled":
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(NUM_CLASSES)]).save(model)
    else:
        saved_model(model, [focal_keras.SoftmaxFocalLoss(), focal_keras.SigmoidFocalLoss()], outputs=2)
    before = snapshot(tmp_path)
    result = run_main("export", "--keras", model, *extra, "--out", tmp_path / "loss")
    assert named in one_line_error(result, "export")
    assert snapshot(tmp_path) == before


# --- --weighting names ----------------------------------------------------------------------------

def test_weighting_takes_the_command_line_spelling():
    spec = spec_from_options(variant="softmax", class_counts="10,20,30", weighting="effective-number")
    assert spec == FocalSpec(variant="softmax", class_counts=[10, 20, 30], weighting="effective_number")
    assert spec_from_options(variant="softmax", class_counts="10,20,30", weighting="inverse-frequency").weighting == "inverse_frequency"


def test_unknown_weighting_is_one_line_naming_the_flag(tmp_path):
    result = run_main("export", "--variant", "softmax", "--class-counts", "1,2", "--weighting", "sqrt", "--out", tmp_path / "x")
    assert "--weighting: expected one of inverse-frequency, effective-number, got 'sqrt'" in one_line_error(result, "export")
    assert list(tmp_path.iterdir()) == []


# --- the README's example ---------------------------------------------------------------------------

def test_readme_keras_example_runs_as_written(tmp_path, capsys):
    import re
    import shlex

    from exporting import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("#### From a trained Keras model to an artifact"):]
    python_block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    sh_block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    work = str(tmp_path / "keras-example")
    exec(python_block.replace("/tmp/focalgraph-keras", work), {})
    assert capsys.readouterr().out.split() == ["mean", "0.25"]
    command = shlex.split(sh_block.replace("/tmp/focalgraph-keras", work))
    assert command[0] == ".venv/bin/focalgraph"
    result = run_main(*command[1:])
    assert result.returncode == 0 and "matches TensorFlow" in result.stdout, result.stderr
    spec = FocalSpec.from_json((tmp_path / "keras-example" / "loss" / "spec.json").read_text())
    assert spec == FocalSpec(variant="sparse_softmax", alpha=[0.25, 1.0, 1.0, 1.0], ignore_index=-1, num_classes=4,
                             reduction="mean")
