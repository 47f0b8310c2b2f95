"""README.md's two opening commands are what CI and the fresh-clone test run: they must be there, in order,
and be the commands a newcomer needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.readme_commands import README, readme_command

ROOT = README.parent


def test_the_readme_opens_with_the_quickstart_then_the_test_command():
    text = README.read_text(encoding="utf-8")
    quickstart, tests = readme_command("quickstart"), readme_command("test")
    assert text.index(quickstart) < text.index(tests) < text.index("\n## "), "both commands come before any section"
    assert "pip install" in quickstart and "runner submit jobs/quickstart.yaml" in quickstart
    assert "pip install" in tests and tests.rstrip().endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_and_then_the_slow_tests():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "tests/readme_commands.py test" in ci
    readme_at = ci.index("tests/readme_commands.py test")
    # The slow set in two parts that together are all of it: in parallel, then what holds a time budget.
    parallel = ci.index('python -m pytest -m "slow and not serial" -n 2')
    serial = ci.index('python -m pytest -m "slow and serial"')
    assert readme_at < parallel < serial


def test_a_missing_command_is_named(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nRun the quickstart:\n\nno indented command here\n", encoding="utf-8")
    with pytest.raises(LookupError, match="Run the quickstart"):
        readme_command("quickstart", readme)


def test_the_readme_test_command_leaves_the_slow_tests_to_pytest_m_slow():
    """A newcomer's `python -m pytest` must not start the hour of end-to-end runs (the brad pipeline alone
    is minutes); `-m slow` must still find them."""
    import subprocess
    import sys

    slow_file = "tests/integration/runner/test_brad_pipeline.py"
    quick = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", slow_file],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "test_brad_pipeline.py::" not in quick.stdout, quick.stdout
    assert "deselected" in quick.stdout, quick.stdout
    slow = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "-m", "slow",
                           slow_file], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "test_brad_pipeline.py::" in slow.stdout, slow.stdout
