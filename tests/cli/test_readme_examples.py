"""The README's worked examples, typed as a user would: every `$ graphsurg ...` command of a section
runs in a fresh directory that sees the bundled models, and prints exactly the lines shown under it."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GRAPHSURG = Path(sys.executable).with_name("graphsurg")


@dataclass
class Step:
    argv: list[str]
    shown: list[str]  # the output lines the README prints under the command


def session(section: str) -> list[Step]:
    """The commands of a README section's shell blocks with the output shown after each."""
    text = (ROOT / "README.md").read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    steps: list[Step] = []
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        lines = iter(block.splitlines())
        for line in lines:
            if line.startswith("$ "):
                command = line[2:]
                while command.endswith("\\"):
                    command = command[:-1] + next(lines).strip()
                steps.append(Step(shlex.split(command), []))
            elif line.strip() and steps:
                steps[-1].shown.append(line.rstrip())
    return steps


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "models").symlink_to(ROOT / "models")
    return tmp_path


def test_grafting_example_prints_what_the_readme_shows(workdir):
    if not GRAPHSURG.exists():
        pytest.skip("graphsurg is not installed as a console script in this interpreter's environment")
    steps = session("Grafting, widening, head swap")
    assert [step.argv[:2] for step in steps] == [["graphsurg", "apply"], ["graphsurg", "eval"],
                                                 ["graphsurg", "apply"], ["graphsurg", "apply"]]
    for step in steps:
        done = subprocess.run([str(GRAPHSURG), *step.argv[1:]], cwd=workdir, capture_output=True, text=True,
                              timeout=120)
        printed = [line.rstrip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        refused = bool(step.shown) and step.shown[0].startswith("graphsurg: error:")
        assert done.returncode == (2 if refused else 0), done.stderr
        assert sorted(printed) == sorted(step.shown), shlex.join(step.argv)
