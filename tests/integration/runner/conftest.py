"""Real runner processes against a real state database in a temp dir; trainers are real too.

Every test gets its own RUNNER_HOME; whatever a test leaves running is killed when it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner import proc
from runner.state import State
from tests.fixtures.jobs import ROOT, trainer_env
from trainer import contract


class RunnerCli:
    """``python -m runner`` as a user runs it, with this test's state directory."""

    def __init__(self, home: Path, tmp: Path):
        self.home, self.tmp = home, tmp
        self.env = trainer_env(RUNNER_HOME=str(home), RUNNER_POLL_SECONDS="0.2")
        self.started: list[subprocess.Popen] = []
        self._run_uris: dict[str, str] = {}

    def run(self, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, cwd=ROOT,
                              env=env or self.env, timeout=timeout)

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        """A runner in the background, its output in a file (read it with :meth:`output`)."""
        log_path = self.tmp / f"runner-{len(self.started)}.log"
        with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            p = subprocess.Popen([sys.executable, "-m", "runner", *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                 env=env or self.env)
        p.log_path = log_path
        self.started.append(p)
        return p

    @staticmethod
    def output(p: subprocess.Popen) -> str:
        return Path(p.log_path).read_text(errors="replace")

    def job(self, ref: str) -> dict:
        done = self.run("status", ref, "--json", timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def state(self) -> State:
        return State(self.home / "state.db")

    def attempt_dir(self, attempt_id: str) -> Path:
        return self.home / "attempts" / attempt_id

    def trainer(self, attempt_id: str) -> tuple[int, str] | None:
        """(pid, identity) of the trainer process of an attempt, once it has started."""
        try:
            record = json.loads((self.attempt_dir(attempt_id) / "trainer.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return record["pid"], record["ident"]

    def run_status(self, run_uri: str) -> contract.Status | None:
        try:
            return contract.Status.from_json((Path(run_uri) / contract.STATUS).read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def running_step(self, job_id: str, attempt_number: int, at_least: int):
        """Truthy once the job's attempt ``attempt_number`` is training at ``at_least`` steps or more."""
        attempt_id = f"{job_id}-{attempt_number}"
        status = self.run_status(self.job_run_uri(job_id))
        trainer = self.trainer(attempt_id)
        if status and trainer and status.attempt == attempt_id and status.state == contract.RUNNING \
                and status.step >= at_least and proc.is_alive(*trainer):
            return status
        return None

    def job_run_uri(self, job_id: str) -> str:
        if job_id not in self._run_uris:
            state = self.state()
            try:
                self._run_uris[job_id] = state.job(job_id).run_uri
            finally:
                state.close()
        return self._run_uris[job_id]

    def job_ids(self) -> list[str]:
        if not (self.home / "state.db").exists():
            return []
        state = self.state()
        try:
            return [j.id for j in state.jobs()]
        finally:
            state.close()

    def cleanup(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        attempts = self.home / "attempts"
        if not attempts.is_dir():
            return
        for adir in attempts.iterdir():
            for name in ("trainer.json", "launch.json"):
                try:
                    record = json.loads((adir / name).read_text())
                except (FileNotFoundError, ValueError):
                    continue
                if proc.is_alive(record.get("pid"), record.get("ident")):
                    os.kill(record["pid"], signal.SIGKILL)


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "runner-home"
    monkeypatch.setenv("RUNNER_HOME", str(home))
    cli = RunnerCli(home, tmp_path)
    yield cli
    cli.cleanup()
