"""The README's two opening commands exist, and its end-to-end example runs as written."""

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from exporting import ROOT, exported
from export.exporter import default_specs

README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make artifacts", "make test"]


@pytest.mark.slow
def test_end_to_end_example_runs(tmp_path):
    section = README[README.index("## Using the artifacts"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    lines = [line for line in block.strip().splitlines() if line.strip()]
    assert [line.split()[1] for line in lines[1:]] == ["eval", "attach", "embed", "run"]
    # the example reads artifacts/variant-sparse-softmax and writes under /tmp/focalgraph-example
    exported(tmp_path / "artifacts" / "variant-sparse-softmax", default_specs()["variant-sparse-softmax"], validate=False)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the commands call .venv/bin/..., as a newcomer would
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    work = tmp_path / "example-output"
    script = "\n".join(lines).replace("/tmp/focalgraph-example", str(work))
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env=environment, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    losses = np.load(work / "losses.npy")
    run = np.load(work / "run" / "per_sample_loss.npy")
    assert losses.shape == (1000,)
    np.testing.assert_allclose(run, losses, rtol=1e-5, atol=1e-6)  # embed's TF loss = eval's ORT loss
    assert (work / "mlp_with_loss.onnx").is_file()
