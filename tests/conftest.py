import os
import zlib

# Before TensorFlow is imported anywhere in the test process.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "focalgraph",
    deadline=None,  # the first call of a TF op is slow; time is not what these tests check
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("focalgraph")


@pytest.fixture
def rng(request):
    # One stream per test, stable across runs and independent of test order. crc32, not hash():
    # str hashes change with every process (PYTHONHASHSEED), which made the data differ per run.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def onnx_artifact(tmp_path_factory):
    """A small sparse-softmax artifact, ONNX only (no SavedModel, not validated: quick to make).
    Tests that change it work on a copy."""
    from export.exporter import export
    from focal_graph.spec import FocalSpec

    out = tmp_path_factory.mktemp("onnx-artifact") / "sparse"
    export(out, spec=FocalSpec(variant="sparse_softmax", ignore_index=-1), format="onnx", validate=False, provider="cpu")
    return out
