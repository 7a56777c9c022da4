"""Keep TensorFlow's and ONNX Runtime's start-up log noise away from the user.

TensorFlow's oneDNN and CUDA notices and absl's "All log messages before absl::InitializeLog()"
line are written by C++ straight to file descriptor 2 and ignore TF_CPP_MIN_LOG_LEVEL and the
absl/glog variables (measured with TF 2.21), so the only way to hide them is to point fd 2
elsewhere while they are printed. ``--verbose`` turns all of this off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

_verbose = False
TENSORFLOW_SIDE = "focalgraph's TensorFlow side (export, validation against TensorFlow, embed, bench, Keras losses)"


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = bool(verbose)


def verbose() -> bool:
    return _verbose


@contextlib.contextmanager
def silenced_stderr() -> Iterator[None]:
    """Send file descriptor 2 (C++ and Python alike) to /dev/null inside the block, unless verbose."""
    if _verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow():
    """``import tensorflow`` with its start-up noise silenced (unless verbose); returns the module."""
    if not _verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from export.extras import require

    with silenced_stderr():
        tf = require("tensorflow", TENSORFLOW_SIDE)
        tf.zeros(())  # creates the devices now: the CUDA probe logs cuInit errors (E level) here
    if not _verbose:
        tf.get_logger().setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


def import_tf2onnx():
    """``import tf2onnx`` with its INFO logging turned down (unless verbose)."""
    from export.extras import require

    import_tensorflow()
    with silenced_stderr():
        tf2onnx = require("tf2onnx", TENSORFLOW_SIDE)
    if not _verbose:
        tf2onnx.logging.set_level(logging.ERROR)
        logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    return tf2onnx

