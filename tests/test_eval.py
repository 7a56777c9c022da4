"""`focalgraph eval` and `export.runtime.LossSession`: ONNX Runtime alone, streamed, checked."""

import concurrent.futures
import multiprocessing
import pickle
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import reference
from exporting import BLOCK_TENSORFLOW, exported, load_json, one_line_error, run_cli, run_main
from export.errors import UsageError
from export.evaluation import evaluate
from export.runtime import BatchLoss, LossSession
from focal_graph.spec import FocalSpec

C = 7


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "sparse"
    exported(out, FocalSpec(variant="sparse_softmax", ignore_index=-1, alpha=0.5), validate=False)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=(1000, C)) * 3).astype(np.float32)
    labels = rng.integers(0, C, 1000)
    labels[::17] = -1  # ignored rows
    np.save(root / "logits.npy", logits)
    np.save(root / "labels.npy", labels)
    return root, logits, labels


def expected_losses(logits, labels):
    return reference.sparse_softmax_focal(labels, logits, gamma=2.0, alpha=0.5, ignore_index=-1)


def test_losses_and_summary_match_the_formula(sparse, data, tmp_path):
    root, logits, labels = data
    summary = evaluate(sparse, predictions=root / "logits.npy", labels=root / "labels.npy", out=tmp_path / "losses.npy",
                       summary=tmp_path / "summary.json", batch_size=128, provider="cpu", top_k=5)
    want = expected_losses(logits, labels)
    got = np.load(tmp_path / "losses.npy")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert load_json(tmp_path / "summary.json") == summary
    assert summary["count"] == 1000 and summary["ignored_positions"] == int((labels == -1).sum())
    assert summary["sum"] == pytest.approx(want.sum(), rel=1e-5)
    assert summary["mean"] == pytest.approx(want.mean(), rel=1e-5)
    for entry in summary["per_class"]:
        members = labels == entry["class"]
        assert entry["count"] == members.sum()
        assert entry["mean_loss"] == pytest.approx(want[members].mean(), rel=1e-5)
    assert [h["row"] for h in summary["hardest"]] == list(np.argsort(-want, kind="stable")[:5])


@pytest.mark.parametrize("batch_size", [1, 999, 1000, 5000])
def test_batch_size_does_not_change_the_losses(sparse, data, tmp_path, batch_size):
    root, logits, labels = data
    evaluate(sparse, predictions=root / "logits.npy", labels=root / "labels.npy", out=tmp_path / "l.npy",
             batch_size=batch_size, provider="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "l.npy"), expected_losses(logits, labels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["npz", "parquet-list", "parquet-fixed-size-list"])
def test_npz_and_parquet_give_the_same_losses(sparse, data, tmp_path, layout):
    root, logits, labels = data
    if layout == "npz":
        np.savez(tmp_path / "d.npz", logits=logits, labels=labels)
        predictions, label_file = f"{tmp_path / 'd.npz'}:logits", f"{tmp_path / 'd.npz'}:labels"
    else:
        values = pa.array(logits.ravel())
        column = (pa.FixedSizeListArray.from_arrays(values, C) if layout.endswith("fixed-size-list")
                  else pa.ListArray.from_arrays(pa.array(np.arange(0, logits.size + 1, C, dtype=np.int32)), values))
        # small row groups: the two columns arrive in chunks that do not line up with the batches
        pq.write_table(pa.table({"logits": column, "labels": labels}), tmp_path / "d.parquet", row_group_size=333)
        predictions, label_file = f"{tmp_path / 'd.parquet'}:logits", f"{tmp_path / 'd.parquet'}:labels"
    evaluate(sparse, predictions=predictions, labels=label_file, out=tmp_path / "l.npy", batch_size=256, provider="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "l.npy"), expected_losses(logits, labels), rtol=1e-5, atol=1e-6)


def test_multi_label_per_class_is_each_classs_own_loss_split_into_positives_and_negatives(tmp_path):
    spec = FocalSpec(variant="sigmoid", alpha=0.25)
    exported(tmp_path / "sigmoid", spec, format="onnx", validate=False)
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(300, 4)) * 3).astype(np.float32)
    targets = (rng.uniform(size=(300, 4)) < 0.3).astype(np.float32)
    np.save(tmp_path / "x.npy", logits)
    np.save(tmp_path / "y.npy", targets)
    summary = evaluate(tmp_path / "sigmoid", predictions=tmp_path / "x.npy", labels=tmp_path / "y.npy", provider="cpu",
                       batch_size=64)
    # float64, from the paper: -alpha_t (1 - p_t)^gamma log p_t, log p_t = -softplus(-z) for positives
    z = logits.astype(np.float64)
    log_p_t = np.where(targets == 1, -np.logaddexp(0, -z), -np.logaddexp(0, z))
    alpha_t = np.where(targets == 1, 0.25, 0.75)
    own = -alpha_t * (-np.expm1(log_p_t)) ** 2 * log_p_t  # (300, 4): each class's own loss
    assert summary["per_class_by"] == "each class's own loss; positives are target > 0.5"
    for entry in summary["per_class"]:
        c = entry["class"]
        positive = targets[:, c] == 1
        assert entry["count"] == 300
        assert entry["mean_loss"] == pytest.approx(own[:, c].mean(), rel=1e-5)
        assert entry["positives"]["count"] == positive.sum()
        assert entry["positives"]["mean_loss"] == pytest.approx(own[positive, c].mean(), rel=1e-5)
        assert entry["negatives"]["count"] == (~positive).sum()
        assert entry["negatives"]["mean_loss"] == pytest.approx(own[~positive, c].mean(), rel=1e-5)
        # the old figure, the whole row's loss over the rows where c is positive, is far from it
        assert own[positive].sum(axis=1).mean() > 2 * own[positive, c].mean()


def bad(root, tmp_path, logits, labels, case):
    """Write the inputs of one bad-data case; returns (predictions, labels, expected message)."""
    x, y = root / "logits.npy", root / "labels.npy"
    if case == "row-count":
        np.save(tmp_path / "y.npy", labels[:999])
        return x, tmp_path / "y.npy", "--labels: 999 rows; --predictions has 1000"
    if case == "float-labels":
        np.save(tmp_path / "y.npy", labels.astype(np.float32))
        return x, tmp_path / "y.npy", "--labels: dtype float32; expected integer class indices"
    if case == "integer-predictions":
        np.save(tmp_path / "x.npy", logits.astype(np.int32))
        return tmp_path / "x.npy", y, "--predictions: dtype int32"
    if case == "nan":
        broken = logits.copy()
        broken[612, 3] = np.nan
        np.save(tmp_path / "x.npy", broken)
        return tmp_path / "x.npy", y, "--predictions: row 612 contains NaN"
    if case == "label-out-of-range":
        broken = labels.copy()
        broken[455] = C
        np.save(tmp_path / "y.npy", broken)
        return x, tmp_path / "y.npy", f"--labels: row 455 has label {C}; expected a class in [0, {C}) or ignore_index=-1"
    if case == "truncated":
        (tmp_path / "x.npy").write_bytes(x.read_bytes()[:-100])
        return tmp_path / "x.npy", y, "is truncated"
    if case == "corrupt-parquet":
        (tmp_path / "x.parquet").write_bytes(b"PAR1 this is not parquet")
        return tmp_path / "x.parquet", y, "is not a readable Parquet file"
    if case == "corrupt-npz":
        (tmp_path / "x.npz").write_bytes(b"PK\x03\x04 truncated zip")
        return tmp_path / "x.npz", y, "is not a readable .npz file"
    raise AssertionError(case)


BAD_CASES = ["row-count", "float-labels", "integer-predictions", "nan", "label-out-of-range", "truncated",
             "corrupt-parquet", "corrupt-npz"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_data_is_one_line_exit_2_and_leaves_no_output(sparse, data, tmp_path, case):
    root, logits, labels = data
    predictions, label_file, message = bad(root, tmp_path, logits, labels, case)
    out, summary = tmp_path / "out" / "losses.npy", tmp_path / "out" / "summary.json"
    out.parent.mkdir()
    result = run_cli("eval", sparse, "--predictions", predictions, "--labels", label_file, "--out", out,
                     "--summary", summary, "--batch-size", "100", "--provider", "cpu")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert list(out.parent.iterdir()) == []


def test_eval_never_imports_tensorflow(sparse, data, tmp_path):
    root, _, _ = data
    report = "import atexit\natexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules))"
    result = run_cli("eval", sparse, "--predictions", root / "logits.npy", "--labels", root / "labels.npy",
                     "--provider", "cpu", python_prelude="import sys\n" + report)
    assert result.returncode == 0, result.stderr
    assert "tensorflow imported: False" in result.stdout
    blocked = run_cli("eval", sparse, "--predictions", root / "logits.npy", "--labels", root / "labels.npy",
                      python_prelude=BLOCK_TENSORFLOW)
    assert blocked.returncode == 0, blocked.stderr


def test_one_session_serves_many_threads(sparse):
    session = LossSession(sparse, provider="cpu")
    rng = np.random.default_rng(3)
    batches = [((rng.normal(size=(257, C)) * 3).astype(np.float32), rng.integers(0, C, 257)) for _ in range(16)]
    sequential = [session(labels, logits) for logits, labels in batches]
    start = threading.Barrier(8)

    def work(i):
        start.wait() if i < 8 else None
        logits, labels = batches[i]
        return session(labels, logits)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        concurrent_results = list(pool.map(work, range(16)))
    for got, want in zip(concurrent_results, sequential):
        np.testing.assert_array_equal(got, want)


def test_batch_loss_pickles_and_maps_in_other_processes(sparse, data):
    _, logits, labels = data
    evaluator = BatchLoss(sparse, provider="cpu")
    clone = pickle.loads(pickle.dumps(evaluator))
    batches = [(labels[i:i + 250], logits[i:i + 250]) for i in range(0, 1000, 250)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        results = list(pool.map(clone, *zip(*batches)))
    np.testing.assert_allclose(np.concatenate(results), expected_losses(logits, labels), rtol=1e-5, atol=1e-6)


def test_bare_onnx_file_reads_its_spec_from_the_metadata(sparse, data):
    _, logits, labels = data
    session = LossSession(sparse / "model.onnx", provider="cpu")
    assert session.spec == FocalSpec(variant="sparse_softmax", ignore_index=-1, alpha=0.5)
    np.testing.assert_allclose(session(labels, logits), expected_losses(logits, labels), rtol=1e-5, atol=1e-6)


def test_damaged_artifact_is_refused(sparse, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sparse, copy)
    (copy / "spec.json").write_text("{}")
    with pytest.raises(Exception, match="spec.json"):
        LossSession(copy)
    with pytest.raises(UsageError, match="no such artifact"):
        LossSession(tmp_path / "missing")


@pytest.mark.parametrize("case", ["inf", "beyond-float32"])
def test_infinite_predictions_are_refused_naming_the_row(sparse, data, tmp_path, case):
    root, logits, _ = data
    broken = logits.astype(np.float64)
    broken[7, 2] = np.inf if case == "inf" else 1e39  # 1e39 overflows float32
    np.save(tmp_path / "x.npy", broken)
    with pytest.raises(UsageError, match="--predictions: row 7 contains an infinite value"):
        evaluate(sparse, predictions=tmp_path / "x.npy", labels=root / "labels.npy", provider="cpu")


def test_probabilities_outside_0_1_are_refused(tmp_path):
    exported(tmp_path / "probs", FocalSpec(variant="softmax", from_logits=False), validate=False)
    rng = np.random.default_rng(2)
    np.save(tmp_path / "x.npy", rng.normal(size=(20, 3)).astype(np.float32))  # logits, not probabilities
    np.save(tmp_path / "y.npy", np.eye(3, dtype=np.float32)[rng.integers(0, 3, 20)])
    with pytest.raises(UsageError, match="probability outside \\[0, 1\\]"):
        evaluate(tmp_path / "probs", predictions=tmp_path / "x.npy", labels=tmp_path / "y.npy", provider="cpu")


@pytest.mark.parametrize("clash", ["out-is-summary", "out-is-predictions", "summary-is-labels"])
def test_outputs_may_not_overwrite_each_other_or_the_inputs(sparse, data, tmp_path, clash):
    root, _, _ = data
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    x.write_bytes((root / "logits.npy").read_bytes())
    y.write_bytes((root / "labels.npy").read_bytes())
    before = (x.read_bytes(), y.read_bytes())
    out, summary = {"out-is-summary": (tmp_path / "same", tmp_path / "same"), "out-is-predictions": (x, None),
                    "summary-is-labels": (None, y)}[clash]
    with pytest.raises(UsageError, match="is also"):
        evaluate(sparse, predictions=x, labels=y, out=out, summary=summary, provider="cpu")
    assert (x.read_bytes(), y.read_bytes()) == before and not (tmp_path / "same").exists()


def test_mean_per_position_is_the_artifacts_own_mean(sparse, data):
    root, logits, labels = data
    summary = evaluate(sparse, predictions=root / "logits.npy", labels=root / "labels.npy", provider="cpu")
    assert summary["mean_per_position"] == pytest.approx(float(LossSession(sparse, "cpu").forms(labels, logits)["mean"]), rel=1e-5)


@pytest.fixture(scope="module")
def nhwc(tmp_path_factory):
    """A segmentation loss: sparse softmax over (N, H, W, C), ignore label 255 (ONNX only: quick)."""
    out = tmp_path_factory.mktemp("nhwc") / "nhwc"
    exported(out, FocalSpec(variant="sparse_softmax", rank=4, ignore_index=255), format="onnx", validate=False)
    return out


def test_ignored_positions_are_counted_at_every_rank(nhwc, tmp_path):
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
    labels = rng.integers(0, 4, (3, 2, 2))
    labels[0] = 255
    labels[1, 0, 0] = 255
    np.save(tmp_path / "x.npy", logits)
    np.save(tmp_path / "y.npy", labels)
    summary = evaluate(nhwc, predictions=tmp_path / "x.npy", labels=tmp_path / "y.npy", provider="cpu")
    assert summary["ignored_positions"] == 5
    want = reference.sparse_softmax_focal(labels, logits, ignore_index=255)
    assert summary["mean_per_position"] == pytest.approx(want.sum() / (12 - 5), rel=1e-5)


def test_segmentation_per_class_is_the_mean_over_pixels_ignored_pixels_left_out(nhwc, tmp_path):
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(6, 5, 7, 4)) * 3).astype(np.float32)
    labels = rng.integers(0, 3, (6, 5, 7))  # class 3 never appears
    labels[:, 0] = 255
    labels[2] = 255  # an image with every pixel ignored
    np.save(tmp_path / "x.npy", logits)
    np.save(tmp_path / "y.npy", labels)
    summary = evaluate(nhwc, predictions=tmp_path / "x.npy", labels=tmp_path / "y.npy", provider="cpu",
                       out=tmp_path / "per_image.npy", batch_size=4)
    # float64 from the formula: -(1 - p_t)^gamma log p_t per pixel, log p_t from a log-softmax
    z = logits.astype(np.float64)
    log_p = z - z.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    kept = labels != 255
    log_p_t = np.take_along_axis(log_p, np.where(kept, labels, 0)[..., None], -1)[..., 0]
    pixel = np.where(kept, -(-np.expm1(log_p_t)) ** 2 * log_p_t, 0.0)
    assert summary["per_class_by"] == "label" and summary["ignored_positions"] == (~kept).sum()
    for entry in summary["per_class"]:
        members = labels == entry["class"]
        assert entry["count"] == members.sum()
        if members.any():
            assert entry["mean_loss"] == pytest.approx(pixel[members].mean(), rel=1e-5)
        else:
            assert entry["mean_loss"] is None and entry["class"] == 3
    # per-image totals are the per-sample output
    np.testing.assert_allclose(np.load(tmp_path / "per_image.npy"), pixel.sum(axis=(1, 2)), rtol=1e-5)


def test_odd_files_are_one_line_errors(sparse, data, tmp_path):
    root, logits, labels = data
    (tmp_path / "a.npz").write_bytes((root / "logits.npy").read_bytes())  # an .npy under another name
    with pytest.raises(UsageError, match="not an .npz archive"):
        evaluate(sparse, predictions=tmp_path / "a.npz", labels=root / "labels.npy", provider="cpu")
    column = pa.array([None] + [list(row) for row in logits[1:]], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"logits": column}), tmp_path / "n.parquet")
    with pytest.raises(UsageError, match="null in row 0"):
        evaluate(sparse, predictions=tmp_path / "n.parquet", labels=root / "labels.npy", provider="cpu")
    colon = tmp_path / "run:1.npy"
    colon.write_bytes((root / "logits.npy").read_bytes())
    assert evaluate(sparse, predictions=colon, labels=root / "labels.npy", provider="cpu")["count"] == 1000


def test_loss_session_refuses_labels_that_do_not_match_the_predictions(sparse, data):
    _, logits, labels = data
    with pytest.raises(UsageError, match="labels: shape \\(14,\\); expected \\(7,\\)"):
        LossSession(sparse, "cpu")(labels[:14], logits[:7])


def test_exported_sparse_loss_is_nan_not_a_broadcast_when_batches_differ(sparse, data):
    """ONNX Runtime's GatherND broadcasts labels over a batch it divides; the graph's guard makes that NaN."""
    import onnxruntime

    _, logits, labels = data
    session = onnxruntime.InferenceSession(str(sparse / "model.onnx"), providers=["CPUExecutionProvider"])
    (loss,) = session.run(["loss"], {"labels": np.zeros(14, np.int64), "logits": logits[:7]})
    assert np.isnan(loss).all()


@pytest.mark.parametrize("layout", ["fixed-size-lists", "lists"])
def test_parquet_rows_of_whole_images_are_read_as_n_d_rows(nhwc, tmp_path, layout):
    rng = np.random.default_rng(6)
    logits = (rng.normal(size=(5, 3, 4, 6)) * 2).astype(np.float32)
    labels = rng.integers(0, 6, (5, 3, 4))
    labels[1, 2] = 255
    if layout == "fixed-size-lists":  # what pyarrow makes of an N-D numpy array, one level per axis
        def nested(array):
            column = pa.array(array.ravel())
            for width in reversed(array.shape[1:]):
                column = pa.FixedSizeListArray.from_arrays(column, width)
            return column
        columns = {"logits": nested(logits), "labels": nested(labels)}
    else:  # lists of lists, as from .tolist() rows
        columns = {"logits": pa.array(logits.tolist(), pa.list_(pa.list_(pa.list_(pa.float32())))),
                   "labels": pa.array(labels.tolist())}
    pq.write_table(pa.table(columns), tmp_path / "maps.parquet", row_group_size=2)
    summary = evaluate(nhwc, predictions=f"{tmp_path / 'maps.parquet'}:logits", labels=f"{tmp_path / 'maps.parquet'}:labels",
                       out=tmp_path / "l.npy", batch_size=3, provider="cpu")
    want = reference.sparse_softmax_focal(labels, logits, ignore_index=255)
    np.testing.assert_allclose(np.load(tmp_path / "l.npy"), want.sum(axis=(1, 2)), rtol=1e-5)
    assert summary["ignored_positions"] == 4


def test_parquet_image_rows_of_inconsistent_shape_are_refused_naming_the_flag_and_row(nhwc, tmp_path):
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(5, 3, 4, 6)).tolist()
    logits[3][1] = logits[3][1][:2]  # row 3: one image row of 2 pixels, not 4
    labels = rng.integers(0, 6, (5, 3, 4)).tolist()
    pq.write_table(pa.table({"logits": pa.array(logits), "labels": pa.array(labels)}), tmp_path / "maps.parquet")
    result = run_cli("eval", nhwc, "--predictions", f"{tmp_path / 'maps.parquet'}:logits",
                     "--labels", f"{tmp_path / 'maps.parquet'}:labels", "--out", tmp_path / "l.npy")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--predictions: row 3 has a list of 2 values where row 0 has 4 (ragged rows)" in result.stderr
    assert not (tmp_path / "l.npy").exists()


def test_plot_writes_a_png_and_replaces_an_existing_file_only_with_force(nhwc, tmp_path):
    from export.summary import is_own_plot

    rng = np.random.default_rng(8)
    np.save(tmp_path / "x.npy", rng.normal(size=(4, 3, 3, 5)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 5, (4, 3, 3)))
    arguments = ["eval", nhwc, "--predictions", tmp_path / "x.npy", "--labels", tmp_path / "y.npy"]
    assert run_main(*arguments, "--plot", tmp_path / "classes.png").returncode == 0
    png = (tmp_path / "classes.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and is_own_plot(tmp_path / "classes.png")
    # even its own plot: the PNG's mark is no proof (anyone can copy it), so the one policy holds
    line = one_line_error(run_main(*arguments, "--plot", tmp_path / "classes.png"), "eval")
    assert f"--plot: {tmp_path / 'classes.png'} already exists; pass --force to replace it" in line
    assert run_main(*arguments, "--plot", tmp_path / "classes.png", "--force").returncode == 0
    foreign = tmp_path / "photo.png"
    foreign.write_bytes(png.replace(b"focalgraph eval --plot", b"somebody else's tool"))
    line = one_line_error(run_main(*arguments, "--plot", foreign), "eval")
    assert f"--plot: {foreign} already exists; pass --force to replace it" in line
    assert b"somebody else's tool" in foreign.read_bytes()
    line = one_line_error(run_main(*arguments, "--plot", tmp_path / "classes.pdf", "--out", tmp_path / "l.npy"), "eval")
    assert "--plot: " in line and "expected a .png file name" in line and not (tmp_path / "l.npy").exists()


def test_plot_without_matplotlib_is_one_line_naming_the_extra(nhwc, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 2, 3), np.float32))
    np.save(tmp_path / "y.npy", np.zeros((2, 2, 2), np.int64))
    result = run_cli("eval", nhwc, "--predictions", tmp_path / "x.npy", "--labels", tmp_path / "y.npy",
                     "--out", tmp_path / "l.npy", "--plot", tmp_path / "p.png",
                     python_prelude="import sys\nsys.modules['matplotlib'] = None")
    line = one_line_error(result, "eval")
    assert "eval --plot needs matplotlib" in line and "focalgraph[bench]" in line
    assert not (tmp_path / "l.npy").exists() and not (tmp_path / "p.png").exists()


def test_prefetched_keeps_order_raises_the_readers_error_in_place_and_stops_the_reader():
    import threading

    from export.evaluation import prefetched

    with prefetched(iter(range(50))) as items:
        assert list(items) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise UsageError("--predictions: row 2 is broken")

    seen = []
    with pytest.raises(UsageError, match="row 2 is broken"):
        with prefetched(failing()) as items:
            for item in items:
                seen.append(item)
    assert seen == [1, 2]

    reads = []

    def endless():
        while True:
            reads.append(len(reads))
            yield len(reads)

    with prefetched(endless(), depth=2) as items:
        assert next(items) == 1
    assert not any(thread.name == "focalgraph-eval-reader" for thread in threading.enumerate())
    assert len(reads) <= 5  # the reader stopped a few items ahead, it did not read on
