"""Inputs from the third adversarial round (issue 21, items 4 to 9): each is refused in one line
naming its flag, exit 2, nothing written, and no command hangs or runs out of its memory bound."""

import os
import struct
import subprocess
import sys
import zipfile

import pytest

from exporting import ROOT, one_line_error, run_main


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


# --- item 7: tracebacks that became one line ---------------------------------------------------


def keras_archive(path, *, method=None, encrypted=False):
    """A zip holding a config.json, with its compression method or encryption flag rewritten in
    both the local and the central header (zipfile cannot write either)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", '{"class_name": "Sequential", "config": {"layers": []}}')
    data = bytearray(path.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    if method is not None:
        struct.pack_into("<H", data, local + 8, method)
        struct.pack_into("<H", data, central + 10, method)
    if encrypted:
        for offset in (local + 6, central + 8):
            struct.pack_into("<H", data, offset, struct.unpack_from("<H", data, offset)[0] | 0x1)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage, named", [({"method": 9}, "config.json uses zip compression method 9"),
                                           ({"encrypted": True}, "config.json is encrypted")],
                         ids=["deflate64", "encrypted"])
def test_a_keras_config_zipfile_cannot_read_is_one_line(tmp_path, damage, named):
    model = keras_archive(tmp_path / "model.keras", **damage)
    line = one_line_error(run_main("export", "--keras", model, "--out", tmp_path / "out"), "export")
    assert f"--keras: {model}: {named}" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]
