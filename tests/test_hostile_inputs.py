"""Inputs from the third adversarial round (issue 21, items 4 to 9): each is refused in one line
naming its flag, exit 2, nothing written, and no command hangs or runs out of its memory bound."""

import os
import subprocess
import sys

import pytest

from exporting import ROOT, one_line_error


def run_cli_within(seconds, *args):
    """The command line in a fresh process, killed after ``seconds`` (a hang fails the test)."""
    code = "import sys\nfrom export.cli import main\nsys.exit(main(sys.argv[1:]))"
    try:
        return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT, timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"focalgraph {' '.join(map(str, args))} was still running after {seconds} s")


# --- item 8: a FIFO given as an input file --------------------------------------------------------


@pytest.mark.parametrize("flag", ["--spec", "--keras"])
def test_a_fifo_as_the_spec_or_keras_file_is_refused_without_waiting_for_a_writer(tmp_path, flag):
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    result = run_cli_within(60, "export", flag, fifo, "--format", "onnx", "--no-validate", "--out", tmp_path / "out")
    line = one_line_error(result, "export")
    assert f"{flag}: {fifo} is not a regular file" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fifo"]
