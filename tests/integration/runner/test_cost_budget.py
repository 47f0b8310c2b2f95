"""Budgets and the checkpoint interval with real trainers under the local backend: a job warned at 80%
and stopped at 100% of its budget with an emergency checkpoint, then resumed with a larger budget; a
job with ``every_minutes: auto`` that is killed without warning and relaunched with the interval its
own measurements call for, and a cost report that says what the kill threw away."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from runner.cost import job_cost
from tests.fixtures.jobs import make_job, wait_for

TINY = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32}, "data": {"block_size": 32}, "batch_size": 8, "threads": 1,
        "eval": {"every_steps": 1000, "batches": 1}}


def trainer_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_text().split("\0")
    return dict(line.split("=", 1) for line in raw if "=" in line)


def test_budget_warns_stops_with_a_checkpoint_and_resumes_with_a_larger_one(runner, tmp_path: Path):
    job = make_job(tmp_path / "job", {"budget": {"max_usd": 4}, "train": {
        **TINY, "max_steps": 150, "checkpoint": {"every_steps": 10},
        "logging": {"heartbeat_seconds": 0.2, "every_steps": 5}}})
    env = dict(runner.env, RUNNER_LOCAL_USD_PER_HOUR="3600")  # a dollar a second
    stopped = runner.run("submit", str(job), "--json", env=env, timeout=600)
    assert stopped.returncode == 1, stopped.stderr
    record = json.loads(stopped.stdout)
    job_id = record["id"]
    assert record["state"] == "over_budget", record["reason"]
    assert f"python -m runner resume {job_id} --budget" in record["reason"]
    (first,) = record["attempts"]
    assert (first["outcome"], first["exit_code"]) == ("stopped", 75)  # SIGTERM: an emergency checkpoint
    kinds = [e["kind"] for e in record["events"]]
    assert kinds.index("budget_warning") < kinds.index("budget_reached") < kinds.index("stopped")
    warning = next(e["message"] for e in record["events"] if e["kind"] == "budget_warning")
    assert "of the $4.00 budget" in warning
    assert record["cost"]["usd"] >= 4

    # The same budget cannot go on; a larger one resumes it from its checkpoint and it finishes.
    refused = runner.run("resume", job_id, env=env)
    assert refused.returncode == 2 and "--budget" in refused.stderr
    too_small = runner.run("resume", job_id, "--budget", "3", env=env)
    assert too_small.returncode == 2 and "has spent" in too_small.stderr
    resumed = runner.run("resume", job_id, "--budget", "100000", "--json", env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(resumed.stdout)
    assert record["state"] == "done" and record["budget_usd"] == 100000
    first, second = record["attempts"]
    assert (second["outcome"], second["exit_code"]) == ("done", 0)
    assert second["start_step"] == first["end_step"] > 0  # it went on from where the budget stopped it
    kinds = [e["kind"] for e in record["events"]]
    assert kinds.index("stopped") < kinds.index("budget_raised") < kinds.index("resumed") < kinds.index("done")

    # The report adds up what was billed, and the dollars the budget counted are the report's dollars.
    state = runner.state()
    try:
        cost = job_cost(state, state.job(job_id))
        billed = sum(s.ended - s.started for s in state.segments(job_id))  # seconds at a dollar a second
        assert round(cost.usd, 2) == round(billed, 2) == round(state.spent(job_id), 2)
        assert cost.steps == 150 and cost.usd_per_1k_steps == pytest.approx(cost.usd / 0.150)
        assert cost.preemptions == 0 and cost.lost_steps == 0
    finally:
        state.close()
    again = runner.run("resume", job_id, env=env)
    assert again.returncode == 2 and "is done" in again.stderr


def test_auto_interval_follows_the_measured_preemptions_and_the_report_counts_the_lost_work(runner, tmp_path: Path):
    job = make_job(tmp_path / "job", {"train": {
        **TINY, "max_steps": 400, "checkpoint": {"every_steps": 10, "every_minutes": "auto"},
        "logging": {"heartbeat_seconds": 0.2, "every_steps": 1, "sync_seconds": 1}}})
    submit = runner.start("submit", str(job))
    job_id = wait_for(lambda: [j.id for j in runner.state().jobs()], timeout=60, what="the job row")[0]
    wait_for(lambda: runner.running_step(job_id, 1, 45), timeout=300, what="attempt 1 at step 45")
    first_pid, _ = runner.trainer(f"{job_id}-1")
    # Nothing observed yet on this machine: no preemption expected, the longest interval.
    assert trainer_environ(first_pid)["RUNNER_CHECKPOINT_EVERY_MINUTES"] == "60.000"
    # Let TensorBoard's writer flush a few checkpoint stalls (it flushes every second here), then kill
    # the trainer without warning: no emergency checkpoint, the steps since the last one are lost.
    wait_for(lambda: any(Path(runner.job_run_uri(job_id), "tensorboard").glob("events.*"))
             and runner.running_step(job_id, 1, 60), timeout=120, what="events on disk, step 60")
    os.kill(first_pid, signal.SIGKILL)

    second = wait_for(lambda: runner.running_step(job_id, 2, 1), timeout=300, what="attempt 2 training")
    assert second is not None
    second_pid, _ = runner.trainer(f"{job_id}-2")
    # One preemption in under a minute of this machine: the interval falls to its floor.
    assert trainer_environ(second_pid)["RUNNER_CHECKPOINT_EVERY_MINUTES"] == "2.000"
    assert submit.wait(timeout=600) == 0, runner.output(submit)

    state = runner.state()
    try:
        a1, a2 = state.attempts(job_id)
        assert (a1.outcome, a2.outcome) == ("interrupted", "done")
        assert (a1.checkpoint_every_minutes, a2.checkpoint_every_minutes) == (60.0, 2.0)
        # What the trainer measured and reported about attempt 1.
        assert a1.checkpoints and a1.checkpoints >= 3 and 0 < a1.checkpoint_seconds < 5
        assert a1.end_step >= 60 and a1.last_checkpoint_step % 10 == 0
        lost = a1.end_step - a1.last_checkpoint_step
        # At most one interval: 10 when the kill lands after step 70 and before its checkpoint is durable.
        assert 0 <= lost <= 10
        assert a1.train_started and a1.train_ended > a1.train_started
        cost = job_cost(state, state.job(job_id), advice=True)
        assert (cost.preemptions, cost.lost_steps, cost.steps) == (1, lost, 400)
        assert cost.interval.in_use == "auto (2.0 min) or every 10 steps"
        # The checkpoint cost it goes by: the median over the job's attempts.
        assert a2.checkpoints and cost.interval.checkpoint_seconds == pytest.approx(
            (a1.checkpoint_seconds + a2.checkpoint_seconds) / 2)
        events = [e for e in state.events(job_id) if e.kind == "checkpoint_interval"]
        assert [e.attempt_id for e in events] == [a1.id, a2.id] and "Young/Daly" in events[1].message
    finally:
        state.close()
    report = runner.run("cost", job_id, "--json")
    data = json.loads(report.stdout)
    assert data["jobs"][0]["lost_steps"] == lost and data["total"]["preemptions"] == 1
