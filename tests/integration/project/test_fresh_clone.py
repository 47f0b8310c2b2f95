"""A newcomer's first command, as the README gives it, on a fresh clone in a clean virtual environment.

The second README command (set up and run the tests) is what CI runs on its own fresh clone
(`.ci/run` reads it from the README too), so between them both commands are run exactly as written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.jobs import ROOT
from tests.readme_commands import readme_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _clean_env(home: Path, venv: Path) -> dict[str, str]:
    """This shell's environment minus anything of this checkout's own install: the clone must stand alone."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RUNNER_", "RUNPOD_", "PYTHON", "VIRTUAL_ENV", "AWS_"))}
    env.update(HOME=str(home), VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
               XDG_STATE_HOME=str(home / "state"), XDG_CACHE_HOME=str(home / "cache"))
    return env


@pytest.mark.timeout(1800)  # a clean venv installs torch, transformers and the rest before the quickstart runs
def test_the_readme_quickstart_works_on_a_fresh_clone_in_a_clean_venv(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    clone, venv, home = tmp_path / "spot-runner", tmp_path / "venv", tmp_path / "home"
    home.mkdir()
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = _clean_env(home, venv)

    command = readme_command("quickstart")
    quickstart = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True,
                                timeout=1500)
    assert quickstart.returncode == 0, (
        f"`{command}` failed on a fresh clone:\n{quickstart.stdout[-4000:]}\n{quickstart.stderr[-4000:]}")

    # It installed into the clean venv (not this checkout's environment) and the job finished there.
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import runner; print(runner.__file__)"],
                           cwd=home, env=env, capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(clone), where.stdout + where.stderr
    status = subprocess.run([str(venv / "bin" / "python"), "-m", "runner", "status", "quickstart", "--json"],
                            cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    job = json.loads(status.stdout)
    job = job[0] if isinstance(job, list) else job
    assert job["state"] == "done", job
    run_dir = Path(job["run_uri"])
    assert (run_dir / "final").is_dir() and any((run_dir / "final").iterdir()), f"no final weights in {run_dir}"
    assert run_dir.is_relative_to(home), "the quickstart's run should live under the fresh user's state dir"
