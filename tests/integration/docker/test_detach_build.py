"""A docker job whose image does not build, submitted with --detach: the submit returns as soon as the
job is recorded, the build fails in the background, and `runner logs` shows the build's own error (kept
in the attempt's launch log on this machine); `status` says the job failed, and nothing suggests watching it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.docker import BASE_IMAGE
from tests.fixtures.jobs import copy_project, make_job, trainer_env, wait_for


def test_a_build_that_fails_in_the_background_is_in_the_logs(docker_engine, tmp_path: Path):
    project = copy_project(tmp_path / "project", (".dockerignore", "jobs/data"))
    (project / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
                                        "RUN echo 'boom: the build broke on purpose' && false\n")
    job = make_job(project / "jobs", {"backend": "docker", "image": {"base": BASE_IMAGE},
                                      "retry": {"max_failures": 0},
                                      "train": {"data": {"train": "data/python_reference.txt"}}})
    home = tmp_path / "home"
    env = trainer_env(RUNNER_HOME=str(home), RUNNER_POLL_SECONDS="0.2")

    def runner(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, cwd=project,
                              env=env, timeout=300)

    started = time.monotonic()
    detached = runner("submit", str(job), "--detach")
    assert detached.returncode == 0, detached.stdout + detached.stderr
    assert "recorded; runner process" in detached.stdout and "watch" not in detached.stdout
    assert "building" not in detached.stdout + detached.stderr  # the build is the background's
    job_id = detached.stdout.split()[0]
    wait_for(lambda: '"state": "failed"' in runner("status", job_id, "--json").stdout, timeout=300,
             what="the build to fail in the background")
    assert time.monotonic() - started < 300
    logs = runner("logs", job_id)
    assert logs.returncode == 0, logs.stderr
    assert "attempt 1: launching on the docker backend" in logs.stdout
    assert "boom: the build broke on purpose" in logs.stdout  # the build's own output
    assert "launch failed: building spot-runner:" in logs.stdout
    status = runner("status", job_id)
    assert "failed" in status.stdout and "watch" not in status.stdout
    background = (home / "background" / f"{job_id}.log").read_text()
    assert f"{job_id} failed" in background
