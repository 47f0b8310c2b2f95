"""The runner against the RunPod emulator, with the project's own image entrypoint in every pod and
the runs in a real SeaweedFS bucket: everything on loopback.

``runpod_project`` is a copy of the project (code, Dockerfile, the quickstart and its data), so the
"image" the emulator runs cannot change under a test while colleagues edit the working tree; its
``jobs/quickstart.yaml`` is the quickstart with what a RunPod job needs (an image, S3 storage, the
S3 credentials forwarded by name) and a shorter run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.state import State
from tests.fixtures.jobs import copy_project, trainer_env, write_s3_job
from tests.fixtures.runpod_emulator import RunPodEmulator
from tests.fixtures.runpod_pods import Image
from tests.fixtures.s3 import S3Server

IMAGE = "registry.example/spot-runner:emulated"
PROJECT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "runner", "trainer", "jobs/quickstart.yaml",
                 "jobs/data")
#: Long enough to be preempted twice (a test sees the step within ~0.1 s: the heartbeat), checkpoints
#: often; one thread, so that a reference run beside it does not halve its speed on a 2-core machine.
SHORT = {"max_steps": 60, "batch_size": 8, "threads": 1, "eval": {"every_steps": 30, "batches": 2},
         "checkpoint": {"every_steps": 10},
         "logging": {"every_steps": 5, "heartbeat_seconds": 0.1, "sync_seconds": 2, "progress_bar": False}}
#: A run that would go on for a long time: for tests that stop it themselves.
ENDLESS = {"train": {"max_steps": 1_000_000, "eval": {"every_steps": 1_000_000}}}


def write_job(project: Path, s3: S3Server, overrides: dict | None = None, name: str = "quickstart") -> Path:
    return write_s3_job(project / "jobs" / f"{name}.yaml", s3, f"s3://{s3.bucket}/runs",
                        {"image": {"name": IMAGE}, "train": SHORT}, overrides or {})


@pytest.fixture
def runpod_project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project", PROJECT_FILES)


@pytest.fixture
def emulator(tmp_path: Path, runpod_project: Path) -> Iterator[RunPodEmulator]:
    with RunPodEmulator(tmp_path / "emulator", [Image.from_dockerfile(IMAGE, runpod_project)]) as emu:
        yield emu


@dataclass
class Runner:
    """``python -m runner`` as a user runs it from the project, pointed at the emulator and the bucket."""

    project: Path
    home: Path
    env: dict[str, str]
    logs: Path

    def start(self, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"runner-{len(list(self.logs.iterdir()))}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen([sys.executable, "-m", "runner", *args], stdout=log, stderr=subprocess.STDOUT,
                             cwd=self.project, env=self.env)
        p.log_path = Path(log.name)
        return p

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True,
                              cwd=self.project, env=self.env, timeout=timeout)
        (self.logs / f"run-{len(list(self.logs.iterdir()))}.log").write_text(done.stdout + done.stderr)
        return done

    def record(self, job_id: str) -> dict:
        done = self.run("status", job_id, "--json", timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def job_ids(self) -> list[str]:
        if not (self.home / "state.db").exists():
            return []
        state = State(self.home / "state.db")
        try:
            return [j.id for j in state.jobs()]
        finally:
            state.close()


@pytest.fixture
def runner(tmp_path: Path, runpod_project: Path, emulator: RunPodEmulator, s3_bucket: S3Server) -> Iterator[Runner]:
    home = tmp_path / "runner-home"
    env = trainer_env(**{k: v for k, v in s3_bucket.env().items() if k.startswith("AWS_")}, **emulator.env(),
                      RUNNER_HOME=str(home), RUNNER_POLL_SECONDS="0.2", RUNNER_STOP_GRACE_SECONDS="30",
                      RUNNER_RUNPOD_POLL_SECONDS="1")
    env["PYTHONPATH"] = str(runpod_project)
    logs = tmp_path / "runner-logs"
    logs.mkdir()
    yield Runner(runpod_project, home, env, logs)
