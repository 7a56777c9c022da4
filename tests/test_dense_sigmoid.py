"""Dense detection with the sigmoid loss: ignored elements (``ignore_index``, RetinaNet's -1) and
RetinaNet's normalisation by positives (``normalized``, ``per_sample_normalized``), in the
library, Keras, the exported ONNX graph (bare onnxruntime), the spec, the CLI and eval's summary.

References: `reference.sigmoid_focal` (the paper's formula in float64, logaddexp) for the element
loss, and the reductions written out here in float64.
"""

import numpy as np
import onnxruntime
import pytest

import reference
from exporting import run_cli

IGNORE = -1
ALPHA, GAMMA = 0.25, 2.0
FORMS = ("loss", "per_sample", "sum", "mean", "normalized", "per_sample_normalized")
# (N, anchors, C), (N, H, W, A*C), (N, D, H, W, C): sample 0 has no positive, sample 1 is ignored
# throughout, the others have positives, ignored anchors (whole rows) and single ignored elements
SHAPES = {3: (5, 12, 3), 4: (4, 3, 4, 6), 5: (4, 2, 3, 2, 4)}


def dense_targets(rng, shape):
    targets = (rng.uniform(size=shape) < 0.1).astype(np.float32)
    targets[rng.uniform(size=shape[:-1]) < 0.2] = IGNORE  # anchors between the IoU thresholds
    targets[rng.uniform(size=shape) < 0.05] = IGNORE
    targets[0] = np.where(targets[0] == 1, 0, targets[0])
    targets[1] = IGNORE
    targets[2].flat[0] = 1.0
    return targets


def expected_forms(targets, logits, ignore_index=IGNORE):
    """float64: the element loss, 0 where ignored; the sums; the counted positions; positives are
    targets > 0.5 at counted positions; each normaliser is max(1, positives)."""
    targets = np.asarray(targets, np.float64)
    ignored = targets == ignore_index
    with np.errstate(invalid="ignore"):
        loss = reference.sigmoid_focal(np.where(ignored, 0.0, targets), logits, gamma=GAMMA, alpha=ALPHA)
    loss = np.where(ignored, 0.0, loss)
    axes = tuple(range(1, loss.ndim))
    per_sample = loss.sum(axis=axes)
    positives = ((targets > 0.5) & ~ignored).sum(axis=axes)
    return {
        "loss": loss,
        "per_sample": per_sample,
        "sum": loss.sum(),
        "mean": loss.sum() / max(int((~ignored).sum()), 1),
        "normalized": loss.sum() / max(int(positives.sum()), 1),
        "per_sample_normalized": per_sample / np.maximum(positives, 1),
    }


def dense_inputs(rng, rank):
    shape = SHAPES[rank]
    targets = dense_targets(rng, shape)
    logits = (rng.normal(size=shape) * 4).astype(np.float32)
    # non-finite logits where the target is ignored: the loss there is still exactly 0
    ignored = np.argwhere(targets == IGNORE)
    for index, value in zip(ignored[::7], (np.nan, np.inf, -np.inf)):
        logits[tuple(index)] = value
    return targets, logits


def assert_forms(got, want, what):
    for form in FORMS:
        assert np.asarray(got[form]).dtype == np.float32, f"{what} {form}"
        np.testing.assert_allclose(np.asarray(got[form], np.float64), want[form], rtol=2e-6, atol=1e-7,
                                   err_msg=f"{what} {form}")


@pytest.mark.parametrize("rank", [3, 4, 5])
def test_ignored_elements_and_both_normalizations_match_float64_in_tensorflow_and_onnxruntime(rank, rng):
    from export.onnx_conversion import convert
    from focal_graph.graph import SpecLoss
    from focal_graph.spec import FocalSpec

    spec = FocalSpec(variant="sigmoid", alpha=ALPHA, gamma=GAMMA, ignore_index=IGNORE, rank=rank)
    targets, logits = dense_inputs(rng, rank)
    want = expected_forms(targets, logits)
    assert want["per_sample"][0] > 0 and want["per_sample_normalized"][0] == want["per_sample"][0]  # max(1, 0)
    assert want["per_sample"][1] == 0.0

    tensorflow = {form: value.numpy() for form, value in SpecLoss(spec).forms(targets, logits).items()}
    assert_forms(tensorflow, want, "TensorFlow")
    assert np.all(tensorflow["loss"][targets == IGNORE] == 0.0)

    session = onnxruntime.InferenceSession(convert(spec).SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    assert names == list(FORMS)
    runtime = dict(zip(names, session.run(None, {"targets": targets, "logits": logits})))
    assert_forms(runtime, want, "ONNX Runtime")
    assert np.all(runtime["loss"][targets == IGNORE] == 0.0)


def test_an_ignore_index_above_one_is_never_a_positive(rng):
    from focal_graph.graph import SpecLoss
    from focal_graph.spec import FocalSpec

    spec = FocalSpec(variant="sigmoid", alpha=ALPHA, gamma=GAMMA, ignore_index=255, rank=4)
    targets, logits = dense_inputs(rng, 4)
    targets = np.where(targets == IGNORE, 255, targets).astype(np.float32)
    want = expected_forms(targets, logits, ignore_index=255)
    assert_forms({form: value.numpy() for form, value in SpecLoss(spec).forms(targets, logits).items()}, want,
                 "TensorFlow, ignore_index 255")


def test_reduce_loss_normalizes_by_the_positives_at_counted_positions(rng):
    import focal_graph as fg

    targets, logits = dense_inputs(rng, 3)
    want = expected_forms(targets, logits)
    loss = fg.sigmoid_focal_loss(targets, logits, alpha=ALPHA, gamma=GAMMA, ignore_index=IGNORE)
    positives = fg.positive_targets(targets, ignore_index=IGNORE)
    mask = targets != IGNORE
    for reduction in ("sum", "mean", "normalized", "per_sample_normalized"):
        got = fg.reduce_loss(loss, reduction, mask=mask, positives=positives)
        np.testing.assert_allclose(np.asarray(got, np.float64), want[reduction], rtol=2e-6, err_msg=reduction)
    with pytest.raises(ValueError, match="positives"):
        fg.reduce_loss(loss, "normalized")


def test_ignored_elements_have_zero_gradient_and_the_rest_that_of_the_loss(rng):
    import tensorflow as tf

    from focal_graph import sigmoid_focal_loss

    targets = dense_targets(rng, (3, 8, 2))
    logits = tf.constant((rng.normal(size=targets.shape) * 3).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(logits)
        total = tf.reduce_sum(sigmoid_focal_loss(targets, logits, alpha=ALPHA, ignore_index=IGNORE))
    gradient = tape.gradient(total, logits).numpy()
    assert np.all(gradient[targets == IGNORE] == 0.0)
    with tf.GradientTape() as tape:  # the same elements without ignore_index, ignored ones set to 0
        tape.watch(logits)
        counted = sigmoid_focal_loss(np.where(targets == IGNORE, 0, targets), logits, alpha=ALPHA)
        total = tf.reduce_sum(tf.where(targets == IGNORE, 0.0, counted))
    np.testing.assert_allclose(gradient, tape.gradient(total, logits).numpy(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("normalization", ["normalized", "per_sample_normalized"])
def test_keras_normalization_is_the_artifacts_figure_under_keras_default_reduction(normalization, rng):
    from focal_graph.graph import SpecLoss
    from focal_graph.keras import SigmoidFocalLoss

    targets, logits = dense_inputs(rng, 3)
    logits = np.where(np.isfinite(logits), logits, 0.0).astype(np.float32)
    want = expected_forms(targets, logits)
    loss = SigmoidFocalLoss(alpha=ALPHA, gamma=GAMMA, ignore_index=IGNORE, normalization=normalization)
    expected = want["normalized"] if normalization == "normalized" else want["per_sample_normalized"].mean()
    assert float(loss(targets, logits)) == pytest.approx(expected, rel=2e-6)
    restored = SigmoidFocalLoss.from_config(loss.get_config())
    assert float(restored(targets, logits)) == pytest.approx(expected, rel=2e-6)
    # the round trip to a spec: the artifact's output of that name, ignore_index included
    spec = loss.spec
    assert (spec.reduction, spec.ignore_index) == (normalization, IGNORE)
    forms = SpecLoss(spec).forms(targets, logits)
    np.testing.assert_allclose(forms[normalization], want[normalization], rtol=2e-6)


def test_keras_ignore_index_leaves_ignored_elements_out_of_kerass_mean(rng):
    from focal_graph.keras import SigmoidFocalLoss

    targets, logits = dense_inputs(rng, 4)
    want = expected_forms(targets, logits)
    assert float(SigmoidFocalLoss(alpha=ALPHA, gamma=GAMMA, ignore_index=IGNORE)(targets, logits)) == pytest.approx(
        want["mean"], rel=2e-6)


def test_keras_normalization_refuses_a_reduction_that_would_report_a_multiple():
    from focal_graph.keras import SigmoidFocalLoss

    with pytest.raises(ValueError, match="^reduction: "):
        SigmoidFocalLoss(ignore_index=IGNORE, normalization="normalized", reduction="sum")
    with pytest.raises(ValueError, match="^normalization: "):
        SigmoidFocalLoss(normalization="positives")


@pytest.mark.parametrize("value", [0, 1])
def test_an_ignore_index_that_is_a_valid_sigmoid_target_is_refused(value):
    import focal_graph as fg
    from focal_graph.keras import SigmoidFocalLoss

    for make in (lambda: fg.FocalSpec(variant="sigmoid", ignore_index=value),
                 lambda: fg.sigmoid_focal_loss(np.zeros((2, 3)), np.zeros((2, 3)), ignore_index=value),
                 lambda: SigmoidFocalLoss(ignore_index=value)):
        with pytest.raises(ValueError, match=f"^ignore_index: {value} is a valid sigmoid target"):
            make()


def test_the_cli_refuses_a_sigmoid_ignore_index_of_0_in_one_line(tmp_path):
    result = run_cli("export", "--variant", "sigmoid", "--ignore-index", "0", "--out", tmp_path / "loss")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ignore-index: 0 is a valid sigmoid target" in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "loss").exists() and list(tmp_path.iterdir()) == []


def test_eval_summary_normalizations_match_float64_and_merge_exactly(rng):
    from export.summary import LossSummary
    from focal_graph.spec import FocalSpec

    spec = FocalSpec(variant="sigmoid", alpha=ALPHA, ignore_index=IGNORE, rank=3)
    targets, logits = dense_inputs(rng, 3)
    targets = np.concatenate([targets] * 4)
    forms = expected_forms(targets[:5], logits)
    losses = np.concatenate([forms["per_sample"]] * 4)  # any per-sample losses
    elements = np.concatenate([forms["loss"]] * 4)
    whole = LossSummary(spec, targets.shape[1:], top_k=3)
    whole.add(losses, targets, elements=elements)
    parts = []
    for start in (0, 3, 11, 12):  # uneven batches, merged in another order
        stop = {0: 3, 3: 11, 11: 12, 12: 20}[start]
        part = LossSummary(spec, targets.shape[1:], top_k=3)
        part.add(losses[start:stop], targets[start:stop], elements=elements[start:stop], first_row=start)
        parts.append(LossSummary.from_bytes(part.to_bytes()))
    merged = parts[3].merge(parts[1]).merge(parts[0].merge(parts[2]))
    assert merged.as_dict() == whole.as_dict()

    summary = whole.as_dict()
    ignored = targets == IGNORE
    positives = ((targets > 0.5) & ~ignored).sum(axis=(1, 2))
    assert summary["positives"] == positives.sum()
    assert summary["ignored_positions"] == ignored.sum()
    assert summary["normalized"] == pytest.approx(losses.sum() / positives.sum(), rel=1e-15)
    assert summary["mean_per_sample_normalized"] == pytest.approx((losses / np.maximum(positives, 1)).mean(), rel=1e-15)
    assert summary["mean_per_position"] == pytest.approx(losses.sum() / (~ignored).sum(), rel=1e-15)
    # each class's own loss, ignored elements in neither its positives nor its negatives
    for c, entry in enumerate(summary["per_class"]):
        kept = ~ignored[..., c]
        assert entry["positives"]["count"] == ((targets[..., c] > 0.5) & kept).sum()
        assert entry["negatives"]["count"] == ((targets[..., c] <= 0.5) & kept).sum()
        assert entry["count"] == kept.sum()
        assert entry["sum"] == pytest.approx(elements[..., c][kept].sum(), rel=1e-12)


def test_eval_refuses_a_sigmoid_target_outside_0_1_that_is_not_ignore_index():
    from export.batches import checked_labels
    from export.errors import UsageError
    from focal_graph.spec import FocalSpec

    spec = FocalSpec(variant="sigmoid", ignore_index=IGNORE, rank=3)
    targets = np.zeros((3, 2, 2), np.float32)
    targets[0, 0, 0] = IGNORE
    assert checked_labels(spec, targets, 0, 2) is not None
    targets[2, 1, 1] = -2
    with pytest.raises(UsageError, match="row 2 has a target outside"):
        checked_labels(spec, targets, 0, 2)


@pytest.mark.parametrize("reduction", ["normalized", "per_sample_normalized"])
def test_a_sigmoid_specs_own_reduction_may_be_normalized(reduction, rng):
    import focal_graph as fg

    spec = fg.FocalSpec(variant="sigmoid", alpha=ALPHA, gamma=GAMMA, ignore_index=IGNORE, rank=3, reduction=reduction)
    targets, logits = dense_inputs(rng, 3)
    got = fg.build_graph(spec)(targets, logits).numpy()
    np.testing.assert_allclose(got, expected_forms(targets, logits)[reduction], rtol=2e-6)
    assert fg.FocalSpec.from_json(spec.to_json()) == spec


def test_only_the_sigmoid_variant_reduces_by_positives():
    import focal_graph as fg

    with pytest.raises(ValueError, match="^reduction: expected one of none, sum, mean, got 'normalized'"):
        fg.FocalSpec(variant="softmax", reduction="normalized")
