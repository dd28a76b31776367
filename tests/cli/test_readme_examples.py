"""The README's worked examples, typed as a user would: every `$ graphsurg ...` command of a section
runs in a fresh directory that sees the bundled models, and prints the lines shown under it (all of
them, or in order with the README's `...` lines standing for lines it leaves out)."""

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
ELLIPSIS = "..."


@dataclass
class Step:
    argv: list[str]
    shown: list[str]  # the output lines the README prints under the command


def session(section: str) -> list[Step]:
    """The `$ graphsurg` commands of a README section's shell blocks with the output shown after each
    (other commands, such as the bench scripts, are shown for their output, not rerun here)."""
    text = (ROOT / "README.md").read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    steps: list[Step] = []
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        lines, current = iter(block.splitlines()), None  # output belongs to a command of its own block
        for line in lines:
            if line.startswith("$ "):
                command = line[2:]
                while command.endswith("\\"):
                    command = command[:-1] + next(lines).strip()
                current = Step(shlex.split(command), [])
                steps.append(current)
            elif line.strip() and current:
                current.shown.append(line.rstrip())
    return [step for step in steps if step.argv[0] == "graphsurg"]


def is_subsequence(wanted: list[str], printed: list[str]) -> bool:
    remaining = iter(printed)
    return all(line in remaining for line in wanted)


def check_prints_what_is_shown(step: Step, printed: list[str]) -> None:
    if ELLIPSIS in (line.strip() for line in step.shown):
        wanted = [line for line in step.shown if line.strip() != ELLIPSIS]
        missing = next((line for line in wanted if line not in printed), "(the order differs)")
        assert is_subsequence(wanted, printed), f"{shlex.join(step.argv)}: not printed: {missing}"
    else:
        # stdout and stderr interleave differently under a pipe than on a terminal
        assert sorted(printed) == sorted(step.shown), shlex.join(step.argv)


# section -> (command, exit code) of each `$` line, in order: a changed README must change this too
SECTIONS = {
    "Grafting, widening, head swap": [("apply", 0), ("eval", 0), ("apply", 0), ("apply", 2)],
    "Excision": [("apply", 0), ("apply", 1)],
    "Diff": [("apply", 0), ("diff", 1)],
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "models").symlink_to(ROOT / "models")
    return tmp_path


@pytest.mark.parametrize("section", SECTIONS)
def test_section_prints_what_the_readme_shows(section, workdir):
    if not GRAPHSURG.exists():
        pytest.skip("graphsurg is not installed as a console script in this interpreter's environment")
    steps = session(section)
    assert [(step.argv[0], step.argv[1]) for step in steps] == [("graphsurg", c) for c, _ in SECTIONS[section]]
    for step, (_, exit_code) in zip(steps, SECTIONS[section], strict=True):
        done = subprocess.run([str(GRAPHSURG), *step.argv[1:]], cwd=workdir, capture_output=True, text=True,
                              timeout=120)
        printed = [line.rstrip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        assert done.returncode == exit_code, done.stderr
        check_prints_what_is_shown(step, printed)
