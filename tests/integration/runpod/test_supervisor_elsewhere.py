"""A job supervised elsewhere: `submit --detach` hands it to a supervisor in a container on the local
Docker engine (host networking; it stands for the always-on machine) and returns. The emulator
preempts the GPU pod twice, the second time while the supervisor has just been SIGKILLed; a new
supervisor, started with `runner supervisor up`, takes the job over from its snapshot once the
dead one's lease has run out. The job finishes byte-identical to an uninterrupted run, never with
two GPU pods at once, and the submitting machine's `status` and `cost` show every attempt and the
dollars, the supervisor's included. A `runner cancel` from the submitting machine stops a job within
30 s. Nothing reaches the supervisor but through the bucket (no port is open on either side)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.spec import Image
from tests.fixtures.docker import BASE_IMAGE, docker_engine  # noqa: F401
from tests.fixtures.jobs import copy_project, wait_for
from tests.integration.runpod.conftest import ENDLESS, PROJECT_FILES, write_job
from tests.integration.runpod.test_quickstart_runpod import Bucket
from trainer import contract

pytestmark = pytest.mark.integration  # and slow: tests/conftest.py SLOW_MODULES

#: What a supervisor elsewhere needs of the test: short leases and quick looks, and a rate for its machine.
SUPERVISOR_ENV = {"RUNNER_SUPERVISOR_LEASE_SECONDS": "4", "RUNNER_SUPERVISOR_CONTROL_SECONDS": "1",
                  "RUNNER_SUPERVISOR_SNAPSHOT_SECONDS": "1", "RUNNER_SUPERVISOR_IDLE_SECONDS": "120",
                  "RUNNER_SUPERVISOR_USD_PER_HOUR": "0.05"}
JOB = {"supervisor": "docker", "backend": "runpod", "resources": {"gpu": "rtx3090"},
       "train": {"max_steps": 120, "eval": {"every_steps": 40}}}


@pytest.fixture
def runpod_project(tmp_path: Path) -> Path:
    """The project as the emulator's pods run it, with what its image's build needs too."""
    return copy_project(tmp_path / "project", (*PROJECT_FILES, "infra/image_requirements.py"))


@pytest.fixture
def supervisor_image(docker_engine, runpod_project: Path) -> str:  # noqa: F811
    """The project's image (this copy's code) on the local engine: what the supervisor container runs."""
    from rich.console import Console

    from runner.backends.docker_image import ensure_image

    job = runpod_project / "jobs" / "quickstart.yaml"
    with open(runpod_project.parent / "build.log", "w") as out:
        return ensure_image(docker_engine, job, Image(base=BASE_IMAGE), out=Console(file=out, width=200)).name


def _container(docker_engine, runner):  # noqa: F811
    from runner.remote.place import supervisor_name

    name = supervisor_name(f"s3://{runner.bucket}/runs")
    try:
        return docker_engine.containers.get(name)
    except Exception:
        return None


def gpu_pods(emulator, job_id: str, live: bool = True) -> list:
    pods = emulator.live_pods() if live else list(emulator.pods.values())
    return [p for p in pods if p.gpu_id is not None and f"-{job_id}-" in p.name]


class MostPods:
    """Samples every 20 ms how many GPU pods of the job are not terminated; ``most`` is the largest count."""

    def __init__(self, emulator, job_id: str):
        import threading

        self.emulator, self.job_id, self.most = emulator, job_id, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(0.02):
            self.most = max(self.most, len(gpu_pods(self.emulator, self.job_id)))

    def stop(self) -> int:
        self.done.set()
        self.thread.join(timeout=5)
        return self.most


@pytest.fixture
def elsewhere(runner, s3_bucket, supervisor_image, docker_engine, tmp_path):  # noqa: F811
    """The runner as the user runs it on the submitting machine, its jobs' supervisor on Docker; the
    supervisor container is removed (its output kept) afterwards."""
    runner.env.update(SUPERVISOR_ENV, RUNNER_SUPERVISOR_IMAGE=supervisor_image)
    runner.bucket = s3_bucket.bucket
    yield runner
    container = _container(docker_engine, runner)
    if container is not None:
        (tmp_path / "supervisor.log").write_bytes(container.logs())
        container.remove(force=True)


def test_preempted_twice_and_supervisor_killed_the_job_finishes_identical_and_is_paid_for(
        elsewhere, emulator, s3_bucket, runpod_project, docker_engine, tmp_path):  # noqa: F811
    runner = elsewhere
    write_job(runpod_project, s3_bucket, JOB)
    bucket = Bucket(s3_bucket)
    reference = subprocess.Popen(
        [sys.executable, "-m", "trainer", "run", "jobs/quickstart.yaml", "--run-uri", f"s3://{s3_bucket.bucket}/reference"],
        cwd=runpod_project, env=runner.env, stdout=open(tmp_path / "reference.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115

    submitted = runner.run("submit", "jobs/quickstart.yaml", "--detach", timeout=180)  # the submitting process exits
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    [job_id] = runner.job_ids()
    assert "handed over to its supervisor on docker" in submitted.stdout
    assert _container(docker_engine, runner).status == "running"
    run_uri = f"s3://{s3_bucket.bucket}/runs/{job_id}"
    most = MostPods(emulator, job_id)

    def training(attempt: int, at_least: int) -> bool:
        status = bucket.status(run_uri)
        return status is not None and status.attempt == f"{job_id}-{attempt}" and \
            status.state == contract.RUNNING and status.step >= at_least

    def pod_of(attempt: int):
        [pod] = [p for p in gpu_pods(emulator, job_id, live=False) if p.name.endswith(f"-{job_id}-{attempt}")]
        return pod

    wait_for(lambda: training(1, 20), timeout=240, what="attempt 1 at step 20")
    emulator.preempt(pod_of(1).id)
    wait_for(lambda: training(2, 45), timeout=240, what="attempt 2 at step 45")

    # The always-on machine loses its supervisor (SIGKILL: no lease given back), and the GPU pod is
    # preempted while no supervisor runs at all.
    _container(docker_engine, runner).kill(signal="SIGKILL")
    emulator.preempt(pod_of(2).id)
    emulator.wait_until(lambda: pod_of(2).status == "EXITED", 60, "attempt 2's pod to be taken away")
    up = runner.run("supervisor", "up", "--on", "docker", timeout=120)
    assert up.returncode == 0 and "started" in up.stdout, up.stdout + up.stderr

    def finished() -> bool:
        return runner.record(job_id)["state"] not in ("pending", "running", "waiting")

    wait_for(finished, timeout=300, interval=1, what="the job to end")
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    assert most.stop() == 1, "two GPU pods of the job were alive at once"

    # On the submitting machine: every attempt, from the supervisors' snapshots.
    record = runner.record(job_id)
    assert record["state"] == "done", record
    attempts = record["attempts"]
    assert [a["outcome"] for a in attempts] == ["interrupted", "interrupted", "done"], attempts
    assert all("Exited by Runpod" in a["detail"] for a in attempts[:2]), attempts
    kinds = [e["kind"] for e in record["events"]]
    assert kinds.count("preempted") == 2 and "handed_over" in kinds and "supervising" in kinds, kinds
    final = bucket.get(f"runs/{job_id}/final/model.safetensors")
    assert final is not None and final == bucket.get("reference/final/model.safetensors")
    for a in attempts:  # one pod per attempt, the one recorded; none left
        [pod] = [p for p in gpu_pods(emulator, job_id, live=False) if p.name.endswith(f"-{a['id']}")]
        assert a["handle"]["pod_id"] == pod.id
    assert len(gpu_pods(emulator, job_id, live=False)) == 3 and emulator.live_pods() == []
    assert emulator.bugs == []

    # Two supervisor processes worked on it (the killed one and its successor), both paid for.
    sessions = {s["session"] for s in record["supervisor_segments"]}
    assert len(sessions) == 2 and all(s["ended"] is not None for s in record["supervisor_segments"]), record
    shown = runner.run("status", job_id)
    assert shown.returncode == 0 and "supervisor $" in shown.stdout, shown.stdout
    assert shown.stdout.count("interrupted") >= 2 and f"{job_id}-3" in json.dumps(record), shown.stdout
    report = runner.run("cost", job_id, "--json")
    assert report.returncode == 0, report.stderr
    cost = json.loads(report.stdout)["jobs"][0]
    pods = [a["handle"]["pod_id"] for a in attempts]
    gpu_usd = sum(emulator.billed_usd(p) for p in pods)
    assert cost["supervisor_usd"] > 0 and cost["supervisor_hours"] > 0
    supervisor_usd = sum(s["usd"] for s in record["supervisor_segments"])
    assert cost["supervisor_usd"] == pytest.approx(supervisor_usd, abs=1e-5)  # each segment's dollars are rounded
    assert cost["usd"] == pytest.approx(gpu_usd + supervisor_usd, abs=0.01)
    text = runner.run("cost", job_id)
    assert "supervisor" in text.stdout, text.stdout
    logs = runner.run("logs", job_id)  # each attempt's pod output, from RunPod
    assert logs.returncode == 0 and logs.stdout.count("── attempt") == 3, logs.stdout[-2000:]

    # Secrets reach the supervisor through its standard input only: none in its container's configuration.
    config = json.dumps(_container(docker_engine, runner).attrs)
    assert s3_bucket.secret_key not in config and emulator.api_key not in config


def test_cancel_and_resume_from_the_submitting_machine(
        elsewhere, emulator, s3_bucket, runpod_project, docker_engine):  # noqa: F811
    runner = elsewhere
    write_job(runpod_project, s3_bucket, {**JOB, **ENDLESS})
    submitted = runner.run("submit", "jobs/quickstart.yaml", "--detach", timeout=180)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    [job_id] = runner.job_ids()
    bucket = Bucket(s3_bucket)
    wait_for(lambda: (s := bucket.status(f"s3://{s3_bucket.bucket}/runs/{job_id}")) is not None and s.step >= 5,
             timeout=240, what="the job to train")

    started = time.monotonic()
    cancelled = runner.run("cancel", job_id, "--json", timeout=120)
    took = time.monotonic() - started
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    assert took < 30, f"cancel took {took:.1f}s"
    assert gpu_pods(emulator, job_id) == []
    status = bucket.status(f"s3://{s3_bucket.bucket}/runs/{job_id}")
    assert status.state == contract.INTERRUPTED and status.last_checkpoint_step is not None

    # resume: the supervisor reopens it and relaunches from the last checkpoint.
    resumed = runner.run("resume", job_id, "--detach", timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    wait_for(lambda: (s := bucket.status(f"s3://{s3_bucket.bucket}/runs/{job_id}")) is not None
             and s.attempt == f"{job_id}-2" and s.step > status.last_checkpoint_step, timeout=240,
             what="attempt 2 to train on from the checkpoint")
    again = runner.run("cancel", job_id, "--json", timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["state"] == "cancelled", again.stdout + again.stderr
    record = runner.record(job_id)
    assert [a["outcome"] for a in record["attempts"]] == ["stopped", "stopped"]
    assert record["attempts"][1]["start_step"] >= status.last_checkpoint_step

    # down: the supervisor gives its leases back and is gone.
    down = runner.run("supervisor", "down", timeout=120)
    assert down.returncode == 0 and "stopped and removed" in down.stdout, down.stdout + down.stderr
    assert _container(docker_engine, runner) is None
    shown = json.loads(runner.run("supervisor", "status", "--json").stdout)
    assert shown["running"] is False and shown["stopped"] is True
