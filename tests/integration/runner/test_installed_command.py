"""`pip install -e .` puts a `runner` command on the PATH that is `python -m runner`."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.fixtures.jobs import ROOT

pytestmark = pytest.mark.integration


def test_the_installed_runner_command_is_the_module(runner):
    command = shutil.which("runner")
    assert command, "no `runner` on the PATH: pyproject's [project.scripts] installs it with `pip install -e .`"
    version = subprocess.run([command, "--version"], capture_output=True, text=True, env=runner.env, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("runner "), version.stderr
    plan = subprocess.run([command, "submit", "jobs/quickstart.yaml", "--dry-run", "--json"], capture_output=True,
                          text=True, cwd=ROOT, env=runner.env, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["name"] == "quickstart"
