"""Running the README's command blocks as written, in a scratch copy of the repository layout."""

import os
import re
import subprocess

from exporting import ROOT


def readme_lines(heading, first_line):
    """The README's ```sh block that starts with ``first_line``, after ``heading``."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(heading):]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    block = next(block for block in blocks if block.startswith(first_line))
    return [line for line in block.strip().splitlines() if line.strip()]


def scratch_checkout(directory):
    """``directory`` laid out as the repository's root for the README's commands: its .venv and
    examples/ are the project's (the commands call .venv/bin/..., as a newcomer would)."""
    for name in (".venv", "examples"):
        (directory / name).symlink_to(ROOT / name)
    return directory


def run_lines(lines, cwd, replacements):
    """Each line in bash from ``cwd`` (whose .venv is the project's), paths replaced."""
    results = []
    for line in lines:
        for old, new in replacements.items():
            line = line.replace(old, str(new))
        results.append(subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=600,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)}))
    return results
