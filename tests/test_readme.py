"""The README's commands agree with what CI runs and what the tests need."""

from __future__ import annotations

import re

from tests.services import DEBIAN_PACKAGES, REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
CI_RUN = (REPO_ROOT / ".ci" / "run").read_text()


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


def test_readme_test_command_is_what_ci_runs_last() -> None:
    ci_last = [line for line in CI_RUN.splitlines() if line.strip()][-1].strip()
    assert ci_last == "pip install -e '.[test]' && pytest"
    commands = [line for block in _shell_blocks(README) for line in block.splitlines()]
    fresh_clone = "python3 -m venv .venv && . .venv/bin/activate && " + ci_last
    assert fresh_clone in commands


def test_readme_apt_line_names_every_package_the_tests_skip_on() -> None:
    apt_lines = [line for block in _shell_blocks(README) for line in block.splitlines()
                 if "apt-get install" in line]
    assert len(apt_lines) == 1, apt_lines
    listed = set(apt_lines[0].split("apt-get install", 1)[1].split()) - {"-y"}
    assert listed == set(DEBIAN_PACKAGES.values())
    ci_listed = set(re.findall(r"missing\+=\(([\w-]+)\)", CI_RUN))
    assert ci_listed == listed


def test_ci_run_makes_its_own_virtualenv() -> None:
    assert 'python3 -m venv "$venv"' in CI_RUN
    assert 'source "$venv/bin/activate"' in CI_RUN
