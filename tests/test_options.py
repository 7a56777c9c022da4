"""Issue 11's options against float64 numpy transcriptions of their papers' formulas, written here:

- ``poly_epsilon``: Poly-1 focal loss, Leng et al., "PolyLoss", ICLR 2022:
  ``FL + epsilon * (1 - p_t)**(gamma + 1)``, the added term not weighted by alpha (the paper's code);
- ``gamma_negative``, ``probability_margin``: the asymmetric loss, Ridnik et al., ICCV 2021:
  ``L+ = (1 - p)**gamma_+ (-log p)``, ``L- = p_m**gamma_- (-log(1 - p_m))``, ``p_m = max(p - m, 0)``;
- ``weights``: ``w * loss``, and the mean ``sum(w loss) / sum(w)``;
- ``axis``: the class axis anywhere but the batch's: the same values as a transpose to classes-last.

The focal losses (FL) themselves are `reference`'s float64 transcriptions.
"""

import numpy as np
import pytest
import tensorflow as tf

import focal_graph as fg
import reference
from focal_graph.graph import SpecLoss
from focal_graph.spec import FocalSpec

RTOL = 1e-5


def log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def poly_term(one_minus_p_t, gamma, epsilon):
    return epsilon * one_minus_p_t ** (np.asarray(gamma, np.float64) + 1.0)


def asymmetric(targets, logits, gamma, gamma_negative, margin, alpha=None):
    """Ridnik et al.'s L+ and L-, weighted by the targets (and alpha's balance), float64."""
    y, x = np.asarray(targets, np.float64), np.asarray(logits, np.float64)
    log_p, log_q = log_sigmoid(x), log_sigmoid(-x)
    p, q = np.exp(log_p), np.exp(log_q)
    positive = q ** gamma * -log_p
    p_m = np.maximum(p - margin, 0.0)
    # 1 - p_m = q + m above the margin: log1p(-p_m) for small p_m, log(q + m) where p is near 1
    # (1 - p rounds to 0 in float64 from x = 37 on)
    with np.errstate(divide="ignore"):
        log_one_minus_p_m = np.where(p_m < 0.5, np.log1p(-np.minimum(p_m, 0.5)), np.log(np.minimum(q + margin, 1.0)))
    negative = p_m ** gamma_negative * -log_one_minus_p_m
    a_positive, a_negative = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)
    return y * a_positive * positive + (1 - y) * a_negative * negative


# --- Poly-1 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [1.0, -1.0, 2.5])
def test_poly1_sparse_softmax_adds_epsilon_times_one_minus_p_t_to_the_gamma_plus_one(rng, epsilon):
    logits = (rng.normal(size=(7, 5)) * 3).astype(np.float32)
    labels = rng.integers(0, 5, size=7)
    alpha = [0.25, 1.0, 0.5, 2.0, 1.0]
    got = fg.sparse_softmax_focal_loss(labels, logits, gamma=2.0, alpha=alpha, poly_epsilon=epsilon).numpy()
    log_p_t = np.take_along_axis(reference.log_softmax(logits.astype(np.float64)), labels[:, None], -1)[:, 0]
    want = reference.sparse_softmax_focal(labels, logits, gamma=2.0, alpha=alpha) + poly_term(-np.expm1(log_p_t), 2.0, epsilon)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)


def test_poly1_softmax_with_soft_targets_takes_p_t_as_the_targets_mix(rng):
    logits = (rng.normal(size=(6, 4)) * 2).astype(np.float32)
    targets = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    got = fg.softmax_focal_loss(targets, logits, gamma=1.5, alpha=0.25, poly_epsilon=1.0).numpy()
    p = np.exp(reference.log_softmax(logits.astype(np.float64)))
    p_t = (targets.astype(np.float64) * p).sum(-1)
    want = reference.softmax_focal(targets, logits, gamma=1.5, alpha=0.25) + poly_term(1.0 - p_t, 1.5, 1.0)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)


def test_poly1_sigmoid_adds_its_term_unbalanced_by_alpha(rng):
    logits = (rng.normal(size=(6, 4)) * 4).astype(np.float32)
    targets = rng.uniform(size=(6, 4)).astype(np.float32)
    got = fg.sigmoid_focal_loss(targets, logits, gamma=2.0, alpha=0.25, poly_epsilon=-0.5).numpy()
    y, x = targets.astype(np.float64), logits.astype(np.float64)
    one_minus_p_t = y * np.exp(log_sigmoid(-x)) + (1 - y) * np.exp(log_sigmoid(x))
    want = reference.sigmoid_focal(targets, logits, gamma=2.0, alpha=0.25) + poly_term(one_minus_p_t, 2.0, -0.5)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7)


def test_poly1_at_epsilon_minus_one_stays_non_negative(rng):
    """FL >= (1 - p_t)**(gamma + 1), so FL - (1 - p_t)**(gamma + 1) >= 0 (the docstring's bound)."""
    logits = (rng.normal(size=(200, 6)) * 5).astype(np.float32)
    labels = rng.integers(0, 6, size=200)
    got = fg.sparse_softmax_focal_loss(labels, logits, poly_epsilon=-1.0).numpy()
    assert (got >= 0).all()


# --- asymmetric loss --------------------------------------------------------------------------


LOGITS = np.concatenate([np.arange(-8000, 8001) / 100.0, [5.128, 12.0, 16.0, 17.0, 30.0, -17.0, -30.0]]).astype(np.float32)


def extreme_grid():
    logits = np.repeat(LOGITS[:, None], 3, axis=1)
    targets = np.broadcast_to(np.array([0.0, 1.0, 0.3], np.float32), logits.shape).copy()
    return targets, logits


def assert_asymmetric_exact(got, targets, logits, gamma, gamma_negative, margin, alpha=None, what=""):
    """Relative error within RTOL where the loss is above 1e-30; below a margin's edge, p_m = p - m
    inherits p's float32 rounding amplified by p / p_m (the problem's own condition), so the
    bound there grows by (gamma_negative + 1) * 16 float32 epsilons * p / p_m."""
    margin32 = float(np.float32(margin))  # the graph's constant
    want = asymmetric(targets, logits, gamma, gamma_negative, margin32, alpha)
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), what
    p = np.exp(log_sigmoid(logits))
    p_m = np.maximum(p - margin32, 0.0)
    condition = np.where(p_m > 0, p / np.where(p_m > 0, p_m, 1.0), 1.0)
    bound = RTOL + (gamma_negative + 1) * 16 * 2.0**-24 * condition * (np.asarray(targets) < 1)
    counted = want > 1e-30
    relative = np.abs(got - want)[counted] / want[counted]
    worst = int(np.argmax(relative / bound[counted]))
    assert relative[worst] <= bound[counted][worst], (
        f"{what}: relative error {relative[worst]:.2e} at logit {np.broadcast_to(logits, want.shape)[counted][worst]}")
    assert (got[~counted] <= 1e-29).all(), what


@pytest.mark.parametrize("margin", [0.0, 0.05])
@pytest.mark.parametrize("gamma_negative", [4.0, 0.5])
def test_asymmetric_loss_matches_float64_for_every_logit(margin, gamma_negative):
    targets, logits = extreme_grid()
    got = fg.sigmoid_focal_loss(targets, logits, gamma=1.0, gamma_negative=gamma_negative,
                                probability_margin=margin).numpy()
    assert_asymmetric_exact(got, targets, logits, 1.0, gamma_negative, margin, what=f"margin {margin}")


@pytest.mark.slow
def test_exported_asymmetric_loss_matches_float64_for_every_logit_in_onnxruntime():
    import onnxruntime

    from export.onnx_conversion import convert

    spec = FocalSpec(variant="sigmoid", gamma=1.0, gamma_negative=4.0, probability_margin=0.05)
    session = onnxruntime.InferenceSession(convert(spec).SerializeToString(), providers=["CPUExecutionProvider"])
    targets, logits = extreme_grid()
    (got,) = session.run(["loss"], {"targets": targets, "logits": logits})
    assert_asymmetric_exact(got, targets, logits, 1.0, 4.0, 0.05, what="ONNX Runtime")


def test_asymmetric_loss_with_alpha_and_class_weight(rng):
    logits = (rng.normal(size=(8, 3)) * 3).astype(np.float32)
    targets = (rng.uniform(size=(8, 3)) < 0.4).astype(np.float32)
    weight = [0.5, 1.0, 2.0]
    got = fg.sigmoid_focal_loss(targets, logits, gamma=0.0, alpha=0.25, class_weight=weight, gamma_negative=4.0,
                                probability_margin=0.05).numpy()
    want = asymmetric(targets, logits, 0.0, 4.0, float(np.float32(0.05)), alpha=0.25) * np.array(weight)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7)


def test_asymmetric_defaults_give_todays_loss_exactly(rng):
    logits = (rng.normal(size=(8, 3)) * 3).astype(np.float32)
    targets = rng.uniform(size=(8, 3)).astype(np.float32)
    today = fg.sigmoid_focal_loss(targets, logits, gamma=2.0, alpha=0.25).numpy()
    spelled_out = fg.sigmoid_focal_loss(targets, logits, gamma=2.0, alpha=0.25, gamma_negative=2.0,
                                        probability_margin=0.0).numpy()
    np.testing.assert_array_equal(spelled_out, today)


def test_asymmetric_margin_gradient_is_finite_and_zero_below_the_margin():
    logits = tf.Variable([[-10.0, -3.0, 0.0, 3.0]])
    targets = tf.zeros_like(logits)
    with tf.GradientTape() as tape:
        loss = fg.sigmoid_focal_loss(targets, logits, gamma_negative=0.5, probability_margin=0.1)
    gradient = tape.gradient(loss, logits).numpy()
    assert np.isfinite(gradient).all()
    assert gradient[0, 0] == 0.0 and gradient[0, 1] == 0.0  # p = 4.5e-5 and 0.047: below the margin
    assert gradient[0, 3] > 0


# --- weights ----------------------------------------------------------------------------------


def test_weights_multiply_the_loss_and_the_mean_divides_by_their_sum(rng):
    logits = (rng.normal(size=(5, 3, 4)) * 2).astype(np.float32)
    labels = rng.integers(0, 4, size=(5, 3))
    labels[0, 0] = -1
    weights = rng.uniform(size=(5, 3)).astype(np.float32)
    weights[1] = 0.0
    spec = FocalSpec(variant="sparse_softmax", ignore_index=-1, weighted=True, rank=3)
    forms = SpecLoss(spec).forms(tf.constant(labels), tf.constant(logits), tf.constant(weights))
    loss = np.nan_to_num(reference.sparse_softmax_focal(labels, logits, ignore_index=-1)) * weights
    counted = labels != -1
    np.testing.assert_allclose(forms["loss"].numpy(), loss, rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(forms["sum"].numpy(), loss.sum(), rtol=RTOL)
    np.testing.assert_allclose(forms["mean"].numpy(), loss[counted].sum() / weights[counted].sum(), rtol=RTOL)


def test_weighted_mean_of_all_zero_weights_is_zero(rng):
    logits = rng.normal(size=(4, 3)).astype(np.float32)
    targets = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    spec = FocalSpec(variant="softmax", weighted=True)
    forms = SpecLoss(spec).forms(tf.constant(targets), tf.constant(logits), tf.zeros(4))
    assert forms["mean"].numpy() == 0.0 and forms["sum"].numpy() == 0.0


def test_negative_or_misshapen_weights_raise_eagerly_naming_weights():
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"weights: -1\.0 at index \(1,\)"):
        fg.sparse_softmax_focal_loss([0, 1], logits, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="weights: expected the unreduced loss's shape"):
        fg.sigmoid_focal_loss(np.zeros((2, 3)), logits, weights=np.ones(2))


def test_negative_weights_give_nan_inside_graphs():
    spec = FocalSpec(variant="sigmoid", weighted=True)
    graph = fg.build_graph(spec)
    loss = graph(tf.zeros((2, 3)), tf.zeros((2, 3)), tf.constant([[1.0, -1.0, 0.0], [1.0, 1.0, np.nan]])).numpy()
    assert np.isnan(loss[0, 1]) and np.isnan(loss[1, 2]) and loss[0, 2] == 0.0 and np.isfinite(loss[0, 0])


# --- axis -------------------------------------------------------------------------------------

AXIS_SPECS = {
    "sparse_softmax": dict(variant="sparse_softmax", ignore_index=-1, poly_epsilon=0.5, weighted=True),
    "softmax": dict(variant="softmax", label_smoothing=0.1, poly_epsilon=1.0, weighted=True),
    "sigmoid": dict(variant="sigmoid", alpha=0.25, gamma_negative=3.0, probability_margin=0.05, weighted=True),
}


def channels_first_inputs(spec, rng, rank):
    """Inputs in (N, C, ...) layout for ``spec`` (axis 1), and the same moved to classes-last."""
    shape = (3, 4) + (2,) * (rank - 2)
    logits = (rng.normal(size=shape) * 3).astype(np.float32)
    without = shape[:1] + shape[2:]
    if spec.sparse:
        y_true = rng.integers(-1, 4, size=without)
        y_last = y_true
    else:
        y_true = (rng.uniform(size=shape) < 0.4).astype(np.float32)
        y_last = np.moveaxis(y_true, 1, -1)
    loss_shape = shape if spec.loss_shape == "classes" else without
    weights = rng.uniform(size=loss_shape).astype(np.float32)
    w_last = np.moveaxis(weights, 1, -1) if spec.loss_shape == "classes" else weights
    return (y_true, logits, weights), (y_last, np.moveaxis(logits, 1, -1), w_last)


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("variant", sorted(AXIS_SPECS))
def test_axis_one_gives_the_values_of_a_transpose_to_classes_last(rng, variant, rank):
    first = FocalSpec(**AXIS_SPECS[variant], axis=1, rank=rank)
    last = FocalSpec(**AXIS_SPECS[variant], rank=rank)
    channels_first, classes_last = channels_first_inputs(first, rng, rank)
    got = fg.build_graph(first).python_function.forms(*map(tf.constant, channels_first))
    want = SpecLoss(last).forms(*map(tf.constant, classes_last))
    expected_loss = want["loss"].numpy()
    if first.loss_shape == "classes":
        expected_loss = np.moveaxis(expected_loss, -1, 1)
    np.testing.assert_allclose(got["loss"].numpy(), expected_loss, rtol=1e-6, atol=1e-7)
    for form in ("per_sample", "sum", "mean"):
        np.testing.assert_allclose(got[form].numpy(), want[form].numpy(), rtol=1e-6, atol=1e-7)


def reference_forms(variant, y_true, logits, weights):
    """float64 forms of `AXIS_SPECS`' losses on classes-last inputs, from the formulas above."""
    x = np.asarray(logits, np.float64)
    if variant == "sparse_softmax":
        log_p_t = np.take_along_axis(reference.log_softmax(x), np.maximum(y_true, 0)[..., None], -1)[..., 0]
        loss = reference.sparse_softmax_focal(y_true, x, ignore_index=-1) + poly_term(-np.expm1(log_p_t), 2.0, 0.5)
        loss = np.where(y_true == -1, 0.0, loss)
        counted = y_true != -1
    elif variant == "softmax":
        smoothed = y_true * 0.9 + 0.1 / x.shape[-1]
        p_t = (smoothed * np.exp(reference.log_softmax(x))).sum(-1)
        loss = reference.softmax_focal(y_true, x, label_smoothing=0.1) + poly_term(1.0 - p_t, 2.0, 1.0)
        counted = np.ones(loss.shape, bool)
    else:
        loss = asymmetric(y_true, x, 2.0, 3.0, float(np.float32(0.05)), alpha=0.25)
        counted = np.ones(loss.shape, bool)
    loss = loss * weights
    return {"loss": loss, "per_sample": loss.reshape(len(loss), -1).sum(-1), "sum": loss.sum(),
            "mean": loss[counted].sum() / weights[counted].sum()}


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("variant", sorted(AXIS_SPECS))
def test_options_together_match_float64_at_every_rank(rng, variant, rank):
    spec = FocalSpec(**AXIS_SPECS[variant], rank=rank)
    _, classes_last = channels_first_inputs(spec, rng, rank)
    got = SpecLoss(spec).forms(*map(tf.constant, classes_last))
    want = reference_forms(variant, *classes_last)
    for form in ("loss", "per_sample", "sum", "mean"):
        np.testing.assert_allclose(got[form].numpy(), want[form], rtol=RTOL, atol=1e-6, err_msg=form)


def test_axis_fixes_the_class_dimension_of_the_signature_where_it_sits():
    spec = FocalSpec(variant="sparse_softmax", axis=1, rank=4, num_classes=19)
    labels, logits = fg.input_signature(spec)
    assert logits.shape.as_list() == [None, 19, None, None] and labels.shape.as_list() == [None, None, None]


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, message", [
    (dict(variant="softmax", axis=4, rank=4), "axis: expected the class axis of rank-4 predictions"),
    (dict(variant="softmax", axis=0), "axis: expected the class axis"),
    (dict(variant="softmax", axis=-3), "axis: expected the class axis"),
    (dict(variant="softmax", axis=1.0), "axis: expected an integer"),
    (dict(variant="softmax", poly_epsilon=-1.5), "poly_epsilon: expected a finite number >= -1"),
    (dict(variant="softmax", poly_epsilon="1"), "poly_epsilon: expected a number"),
    (dict(variant="sigmoid", probability_margin=1.0), r"probability_margin: expected a number in \[0, 1\)"),
    (dict(variant="sigmoid", probability_margin=-0.1), "probability_margin"),
    (dict(variant="sigmoid", gamma_negative=-1.0), r"gamma_negative: expected values in \[0, inf\)"),
    (dict(variant="sigmoid", gamma=[1.0, 2.0], gamma_negative=[1.0, 2.0, 3.0]), "gamma_negative: expected 2 values"),
    (dict(variant="sigmoid", weighted=1), "weighted: expected true or false"),
    (dict(variant="softmax", gamma_negative=1.0), "gamma_negative: does not apply to variant 'softmax'"),
    (dict(variant="sparse_softmax", probability_margin=0.1), "probability_margin: does not apply"),
    (dict(preset="sparse_softmax", alpha=[1.0, 1.0], axis=1), "axis: does not apply to preset"),
    (dict(preset="multi_category", class_counts=[1, 2], weighted=True), "weighted: does not apply to preset"),
])
def test_new_fields_are_validated_on_construction(fields, message):
    with pytest.raises(ValueError, match=message):
        FocalSpec(**fields)


def test_defaults_are_explicit_and_round_trip():
    spec = FocalSpec(variant="sigmoid", gamma=[1.0, 3.0])
    assert (spec.axis, spec.poly_epsilon, spec.weighted, spec.probability_margin) == (-1, 0.0, False, 0.0)
    assert spec.gamma_negative == (1.0, 3.0)
    assert FocalSpec.from_json(spec.to_json()) == spec
    assert FocalSpec(variant="softmax").gamma_negative is None


def test_library_functions_validate_the_new_arguments():
    logits = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="axis: expected the class axis of rank-3"):
        fg.softmax_focal_loss(np.zeros_like(logits), logits, axis=3)
    with pytest.raises(ValueError, match="poly_epsilon"):
        fg.sparse_softmax_focal_loss(np.zeros((2, 3)), logits, poly_epsilon=-2.0)
    with pytest.raises(ValueError, match="probability_margin"):
        fg.sigmoid_focal_loss(np.zeros_like(logits), logits, probability_margin=1.0)
    with pytest.raises(ValueError, match="gamma_negative"):
        fg.sigmoid_focal_loss(np.zeros_like(logits), logits, gamma_negative=-0.5)


# --- Keras, command line, exported ONNX in bare onnxruntime -----------------------------------


def test_keras_classes_take_the_new_options_and_keep_them_in_their_config(rng):
    from focal_graph.keras import SigmoidFocalLoss, SparseSoftmaxFocalLoss

    logits = (rng.normal(size=(4, 3, 2)) * 3).astype(np.float32)  # (N, C, T)
    targets = (rng.uniform(size=logits.shape) < 0.4).astype(np.float32)
    loss = SigmoidFocalLoss(axis=1, gamma=1.0, gamma_negative=4.0, probability_margin=0.05, poly_epsilon=1.0)
    restored = SigmoidFocalLoss.from_config(loss.get_config())
    y, x = np.moveaxis(targets, 1, -1), np.moveaxis(logits, 1, -1)
    one_minus_p_t = y * np.exp(log_sigmoid(-x)) + (1 - y) * np.exp(log_sigmoid(x))
    want = asymmetric(y, x, 1.0, 4.0, float(np.float32(0.05))) + poly_term(one_minus_p_t, 1.0, 1.0)
    np.testing.assert_allclose(restored(targets, logits).numpy(), want.mean(), rtol=RTOL)

    labels = rng.integers(0, 3, size=(4, 1, 2))  # Keras's (N, 1, T) labels, channels-first
    sparse = SparseSoftmaxFocalLoss(axis=1, poly_epsilon=2.0)
    log_p_t = np.take_along_axis(reference.log_softmax(x.astype(np.float64)), labels[:, 0, :, None], -1)[..., 0]
    want = reference.sparse_softmax_focal(labels[:, 0], x) + poly_term(-np.expm1(log_p_t), 2.0, 2.0)
    np.testing.assert_allclose(sparse(labels, logits).numpy(), want.mean(), rtol=RTOL)


def test_export_flags_name_the_fields():
    """The command line's flags reach the spec (parsed as `focalgraph export` parses them)."""
    from export.cli import export_command
    from export.options import SPEC_OPTIONS, spec_from_options

    context = export_command.make_context("export", [
        "--variant", "sigmoid", "--rank", "4", "--axis", "1", "--poly-epsilon", "0.5", "--gamma-negative", "4",
        "--probability-margin", "0.05", "--weighted", "--out", "unused"])
    options = {name: value for name, value in context.params.items() if name in SPEC_OPTIONS}
    spec = spec_from_options(variant=context.params["variant"], **options)
    assert (spec.axis, spec.poly_epsilon, spec.gamma_negative, spec.probability_margin, spec.weighted) == (
        1, 0.5, 4.0, 0.05, True)


def test_a_new_gamma_on_a_spec_file_moves_a_symmetric_gamma_negative_along(tmp_path):
    from export.options import spec_from_options

    symmetric, asymmetric_spec = tmp_path / "symmetric.json", tmp_path / "asymmetric.json"
    symmetric.write_text(FocalSpec(variant="sigmoid").to_json())
    asymmetric_spec.write_text(FocalSpec(variant="sigmoid", gamma_negative=4.0).to_json())
    assert spec_from_options(spec=str(symmetric), gamma=1.0).gamma_negative == 1.0
    assert spec_from_options(spec=str(asymmetric_spec), gamma=1.0).gamma_negative == 4.0


@pytest.mark.parametrize("flags, message", [
    (("--variant", "softmax", "--axis", "0"), "--axis: expected the class axis"),
    (("--variant", "softmax", "--poly-epsilon", "-2"), "--poly-epsilon: expected a finite number >= -1"),
    (("--variant", "sigmoid", "--probability-margin", "1"), r"--probability-margin: expected a number in \[0, 1\)"),
    (("--variant", "sigmoid", "--gamma-negative", "-1"), "--gamma-negative: expected values"),
    (("--variant", "softmax", "--gamma-negative", "1"), "--gamma-negative: does not apply to variant 'softmax'"),
])
def test_bad_new_flags_are_one_line_exit_2_and_nothing_written(tmp_path, flags, message):
    import re

    from exporting import one_line_error, run_main

    result = run_main("export", *flags, "--out", tmp_path / "loss")
    assert re.search(message, one_line_error(result, "export"))
    assert not (tmp_path / "loss").exists()


@pytest.fixture(scope="module")
def weighted_channels_first_artifact(tmp_path_factory):
    """A weighted (N, C, H, W) asymmetric Poly-1 sigmoid artifact, ONNX only and not validated."""
    from exporting import exported

    out = tmp_path_factory.mktemp("weighted") / "loss"
    exported(out, FocalSpec(variant="sigmoid", rank=4, axis=1, alpha=0.25, gamma_negative=4.0, probability_margin=0.05,
                            poly_epsilon=-0.5, weighted=True), format="onnx", validate=False)
    return out


@pytest.mark.slow
def test_exported_channels_first_weighted_losses_match_float64_in_bare_onnxruntime(rng, weighted_channels_first_artifact):
    """(N, C, H, W) inputs straight into ONNX Runtime: no transpose on the user's side. The
    models are the artifacts' (`export.onnx_conversion.convert`: tf2onnx, dimension names, checks)."""
    import onnxruntime

    from export.onnx_conversion import convert

    sparse_spec = FocalSpec(variant="sparse_softmax", rank=4, axis=1, ignore_index=-1, poly_epsilon=1.0, weighted=True)
    sigmoid_model = (weighted_channels_first_artifact / "model.onnx").read_bytes()
    specs = {"sparse": (sparse_spec, convert(sparse_spec).SerializeToString()),
             "sigmoid": (FocalSpec.from_json((weighted_channels_first_artifact / "spec.json").read_text()), sigmoid_model)}
    logits = (rng.normal(size=(3, 5, 2, 4)) * 3).astype(np.float32)
    x = np.moveaxis(logits, 1, -1).astype(np.float64)
    for name, (spec, model) in specs.items():
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        if spec.sparse:
            y_true = rng.integers(-1, 5, size=(3, 2, 4))
            weights = rng.uniform(size=(3, 2, 4)).astype(np.float32)
            log_p_t = np.take_along_axis(reference.log_softmax(x), np.maximum(y_true, 0)[..., None], -1)[..., 0]
            loss = reference.sparse_softmax_focal(y_true, x, ignore_index=-1) + poly_term(-np.expm1(log_p_t), 2.0, 1.0)
            loss = np.where(y_true == -1, 0.0, loss) * weights
            counted = y_true != -1
            mean = loss[counted].sum() / weights[counted].sum()
        else:
            y_true = (rng.uniform(size=logits.shape) < 0.3).astype(np.float32)
            weights = rng.uniform(size=logits.shape).astype(np.float32)
            y = np.moveaxis(y_true, 1, -1)
            one_minus_p_t = y * np.exp(log_sigmoid(-x)) + (1 - y) * np.exp(log_sigmoid(x))
            loss = asymmetric(y, x, 2.0, 4.0, float(np.float32(0.05)), alpha=0.25) + poly_term(one_minus_p_t, 2.0, -0.5)
            loss = np.moveaxis(loss, -1, 1) * weights
            mean = loss.sum() / weights.sum()
        dims = {value.name: value.shape for value in session.get_inputs() + session.get_outputs()}
        assert dims["logits"] == ["N", "C", "H", "W"] and dims["weights"] == dims["loss"], dims
        inputs = dict(zip(spec.graph_inputs, (y_true, logits, weights)))
        got = dict(zip(["loss", "per_sample", "sum", "mean"], session.run(["loss", "per_sample", "sum", "mean"], inputs)))
        np.testing.assert_allclose(got["loss"], loss, rtol=RTOL, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got["per_sample"], loss.sum(axis=(1, 2) if spec.sparse else (1, 2, 3)), rtol=RTOL)
        np.testing.assert_allclose(got["mean"], mean, rtol=RTOL, err_msg=name)


@pytest.mark.slow
def test_eval_feeds_weights_from_a_file_and_refuses_bad_ones(tmp_path, rng, weighted_channels_first_artifact):
    from export.evaluation import evaluate
    from exporting import one_line_error, run_main

    logits = (rng.normal(size=(6, 4, 3, 2)) * 3).astype(np.float32)
    targets = (rng.uniform(size=logits.shape) < 0.3).astype(np.float32)
    weights = rng.uniform(size=logits.shape).astype(np.float32)
    weights[0] = 0.0
    for name, array in (("logits", logits), ("targets", targets), ("weights", weights), ("negative", -weights),
                        ("short", weights[:, :2])):
        np.save(tmp_path / f"{name}.npy", array)
    summary = evaluate(weighted_channels_first_artifact, predictions=tmp_path / "logits.npy",
                       labels=tmp_path / "targets.npy", weights=tmp_path / "weights.npy", out=tmp_path / "out.npy",
                       provider="cpu")
    y, x = np.moveaxis(targets, 1, -1), np.moveaxis(logits, 1, -1)
    one_minus_p_t = y * np.exp(log_sigmoid(-x)) + (1 - y) * np.exp(log_sigmoid(x))
    loss = asymmetric(y, x, 2.0, 4.0, float(np.float32(0.05)), alpha=0.25) + poly_term(one_minus_p_t, 2.0, -0.5)
    loss = np.moveaxis(loss, -1, 1) * weights
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), loss.sum(axis=(1, 2, 3)), rtol=RTOL, atol=1e-6)
    assert summary["count"] == 6

    common = ("eval", weighted_channels_first_artifact, "--predictions", tmp_path / "logits.npy", "--labels",
              tmp_path / "targets.npy", "--provider", "cpu")
    assert "give its weights" in one_line_error(run_main(*common), "eval")
    assert "not a finite number >= 0" in one_line_error(run_main(*common, "--weights", tmp_path / "negative.npy"), "eval")
    assert "expected the loss's (4, 3, 2) per row" in one_line_error(run_main(*common, "--weights", tmp_path / "short.npy"), "eval")


def test_a_weighted_spec_needs_its_weights_and_keras_refuses_it():
    from focal_graph.keras import FocalSpecLoss

    spec = FocalSpec(variant="softmax", weighted=True)
    with pytest.raises(ValueError, match="weights: the spec is weighted"):
        SpecLoss(spec)(np.eye(3, dtype=np.float32), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="weights: the spec is not weighted"):
        SpecLoss(FocalSpec(variant="softmax"))(np.eye(3, dtype=np.float32), np.zeros((3, 3), np.float32), np.ones(3))
    with pytest.raises(ValueError, match="weighted: a Keras loss takes its weights as sample_weight"):
        FocalSpecLoss(spec)


# --- the catalogue ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(__import__("focal_graph.catalogue").catalogue.KINDS))
def test_each_catalogue_record_names_a_function_that_takes_its_arguments(kind):
    import inspect

    from focal_graph.catalogue import KINDS
    from focal_graph.graph import loss_function

    record = KINDS[kind]
    parameters = inspect.signature(loss_function(kind)).parameters
    assert set(record.arguments) <= set(parameters), set(record.arguments) - set(parameters)
    assert set(record.arguments) <= set(record.fields) | {"gamma", "class_weight"}
    assert set(record.required) | set(record.fixed) <= set(record.fields)


@pytest.mark.slow
def test_validate_passes_on_a_weighted_channels_first_artifact(weighted_channels_first_artifact):
    """ONNX Runtime against TensorFlow (the graph rebuilt from spec.json) on generated (N, C, H, W)
    inputs with weights, edge cases included, and the files' consistency (the float64 formula)."""
    from export.validation import validate

    report = validate(weighted_channels_first_artifact, shapes="3x4x2x5,0x4x2x5,2x1x3x1", provider="cpu")
    assert report["passed"], report


def test_asymmetric_graph_with_class_counts_and_per_class_alpha_matches_float64(rng):
    """Inside a graph, per-class constants are symbolic: the asymmetric path takes them as built."""
    spec = FocalSpec(variant="sigmoid", class_counts=[10, 20, 40], alpha=[0.2, 0.3, 0.4], gamma_negative=4.0,
                     probability_margin=0.05)
    logits = (rng.normal(size=(5, 3)) * 3).astype(np.float32)
    targets = (rng.uniform(size=(5, 3)) < 0.4).astype(np.float32)
    got = fg.build_graph(spec)(targets, logits).numpy()
    counts = np.array([10.0, 20.0, 40.0])
    weight = (counts.sum() / counts) / (counts.sum() / counts).sum()  # the seeds' inverse frequency
    alpha = np.array([0.2, 0.3, 0.4])
    want = asymmetric(targets, logits, 2.0, 4.0, float(np.float32(0.05)), alpha=alpha) * weight
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7)
