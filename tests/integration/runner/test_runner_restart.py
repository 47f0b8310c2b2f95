"""The runner dies at the worst moments; the next `watch` adopts what runs and never starts a
second trainer for the same attempt."""

from __future__ import annotations

import os
import time
from pathlib import Path

from runner import proc
from runner.backends.base import LaunchRequest
from runner.backends.local import LocalBackend
from runner.spec import load_job
from runner.state import State
from tests.fixtures.jobs import make_job, wait_for

JOB = {"train": {"max_steps": 200, "threads": 1, "logging": {"heartbeat_seconds": 0.2, "every_steps": 5}}}


def test_runner_killed_mid_job_then_watch_adopts_the_running_trainer(runner, tmp_path: Path):
    job = make_job(tmp_path / "job", JOB)
    submit = runner.start("submit", str(job))
    job_id = wait_for(runner.job_ids, timeout=60, what="the job row")[0]
    wait_for(lambda: runner.running_step(job_id, 1, 20), timeout=300, what="attempt 1 at step 20")
    trainer = runner.trainer(f"{job_id}-1")

    # While the submitting runner supervises the job, a `watch` leaves it alone.
    bystander = runner.run("watch", timeout=120)
    assert bystander.returncode == 0, bystander.stderr
    assert f"{job_id} is supervised by runner process {submit.pid}" in bystander.stdout

    submit.kill()
    submit.wait(timeout=30)
    assert proc.is_alive(*trainer), "the trainer outlives the runner that launched it"
    assert runner.job(job_id)["supervised_by"] is None

    watch = runner.run("watch", timeout=600)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    record = runner.job(job_id)
    assert record["state"] == "done"
    assert [a["id"] for a in record["attempts"]] == [f"{job_id}-1"], "no second attempt was launched"
    assert runner.trainer(f"{job_id}-1") == trainer, "the first trainer finished the job"
    assert sorted(os.listdir(runner.home / "attempts")) == [f"{job_id}-1"]
    kinds = [e["kind"] for e in record["events"]]
    assert "supervising" in kinds and "relaunched" not in kinds and kinds[-1] == "done"
    assert (Path(record["run_uri"]) / "final" / "model.safetensors").exists()
    assert "supervises the job; attempt 1 is running" in watch.stdout


def _intent_only(runner, tmp_path: Path) -> tuple[str, str, Path]:
    """The database as a runner leaves it when killed right after recording its intent to launch."""
    job = make_job(tmp_path / "job", JOB)
    spec = load_job(job)
    state = State(runner.home / "state.db")
    row = state.create_job(id="quickstart-intent", name=spec.name, job_file=str(spec.path), job_sha256=spec.sha256,
                           spec=spec.spec, workdir=str(tmp_path), backend="local",
                           run_uri=str(runner.home / "runs" / "quickstart-intent"), max_steps=200)
    attempt = state.add_attempt(row.id, backend="local", gpu=None, gpu_count=1, spot=False, start_step=0)
    state.close()
    return row.id, attempt.id, job


def test_killed_after_recording_intent_before_launching(runner, tmp_path: Path):
    job_id, attempt_id, _job = _intent_only(runner, tmp_path)
    watch = runner.run("watch", timeout=600)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    record = runner.job(job_id)
    assert record["state"] == "done"
    assert [a["id"] for a in record["attempts"]] == [attempt_id], "the recorded attempt was launched, once"
    assert [e["kind"] for e in record["events"]].count("launched") == 1


def test_killed_after_launching_before_recording_it(runner, tmp_path: Path):
    job_id, attempt_id, job = _intent_only(runner, tmp_path)
    backend = LocalBackend(runner.home / "attempts")
    launched = backend.launch(LaunchRequest(attempt_id=attempt_id, job_id=job_id, job_file=job,
                                            run_uri=str(runner.home / "runs" / job_id), workdir=tmp_path, env={}))
    first = runner.trainer(attempt_id)
    assert proc.is_alive(*first)
    # Launching the same attempt again, from another runner, finds it.
    again = LocalBackend(runner.home / "attempts").launch(LaunchRequest(
        attempt_id=attempt_id, job_id=job_id, job_file=job, run_uri=str(runner.home / "runs" / job_id),
        workdir=tmp_path, env={}))
    assert again.adopted and again.handle["pid"] == launched.handle["pid"]
    # The runner died before anything about the launch was written down (only the attempt's lock,
    # held by the running wrapper, says it runs).
    for record in ("launch.json", "wrapper.json"):
        (runner.home / "attempts" / attempt_id / record).unlink()

    watch = runner.run("watch", timeout=600)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    record = runner.job(job_id)
    assert record["state"] == "done"
    assert [a["id"] for a in record["attempts"]] == [attempt_id]
    assert runner.trainer(attempt_id) == first, "the running trainer was adopted, not started again"
    assert "adopted" in [e["kind"] for e in record["events"]]
    assert record["attempts"][0]["handle"]["pid"] == launched.handle["pid"]
    deadline = time.monotonic() + 30
    while backend.poll(launched.handle).state == "running" and time.monotonic() < deadline:
        time.sleep(0.1)  # reap our child (the wrapper) so nothing is left behind
