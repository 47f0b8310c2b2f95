"""What a backend can check before a job is recorded: a submit that cannot run here fails at once,
says what to do, and leaves no job behind to be relaunched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.jobs import ROOT, trainer_env
from tests.fixtures.s3 import free_ports


def test_the_docker_backend_without_an_engine_is_refused_at_submit(runner_home: Path):
    (port,) = free_ports(1)  # nothing listens there
    done = subprocess.run([sys.executable, "-m", "runner", "submit", "jobs/quickstart.yaml", "--backend", "docker"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=trainer_env(RUNNER_HOME=str(runner_home), DOCKER_HOST=f"tcp://127.0.0.1:{port}"))
    assert done.returncode != 0
    assert f"cannot reach a Docker engine at DOCKER_HOST=tcp://127.0.0.1:{port}" in done.stderr, done.stderr
    assert "Nothing was launched" in done.stderr
    assert not runner_home.exists(), "no job was recorded, so `watch` has nothing to relaunch"
