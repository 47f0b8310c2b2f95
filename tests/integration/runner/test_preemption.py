"""The trainer is killed twice under a local job, once with SIGKILL and once with SIGTERM: the
supervisor relaunches it each time and the final weights are byte identical to a run that was
never interrupted."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from runner import proc
from tests.fixtures.jobs import make_job, run_trainer, sha256_of, wait_for

# Heartbeats often, so progress is seen promptly; one thread, because on a busy two-core machine two
# OpenMP threads per trainer make a run many times slower (the weights are the same run to run).
OVERRIDES = {"train": {"max_steps": 300, "threads": 1, "checkpoint": {"every_steps": 25},
                       "logging": {"heartbeat_seconds": 0.2, "every_steps": 5}}}


def test_killed_twice_relaunched_and_byte_identical(runner, tmp_path: Path):
    job = make_job(tmp_path / "job", OVERRIDES)
    reference = run_trainer(job, str(tmp_path / "reference"), timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]

    submit = runner.start("submit", str(job))
    job_id = wait_for(runner.job_ids, timeout=60, what="the job row")[0]

    wait_for(lambda: runner.running_step(job_id, 1, 50), timeout=300, what="attempt 1 at step 50")
    first_pid, _ = runner.trainer(f"{job_id}-1")
    os.kill(first_pid, signal.SIGKILL)

    status = wait_for(lambda: runner.running_step(job_id, 2, 125), timeout=300, what="attempt 2 at step 125")
    second_pid, _ = runner.trainer(f"{job_id}-2")
    assert second_pid != first_pid
    os.kill(second_pid, signal.SIGTERM)
    assert status.step < 300

    assert submit.wait(timeout=600) == 0, runner.output(submit)
    record = runner.job(job_id)
    assert record["state"] == "done"
    attempts = record["attempts"]
    assert [a["outcome"] for a in attempts] == ["interrupted", "interrupted", "done"]
    assert [a["exit_code"] for a in attempts] == [None, 75, 0]
    assert "SIGKILL" in attempts[0]["detail"] and "emergency checkpoint" in attempts[1]["detail"]
    assert record["preemptions"] == 2 and record["failures"] == 0
    kinds = [e["kind"] for e in record["events"]]
    assert kinds.count("preempted") == 2 and kinds.count("relaunched") == 2 and kinds[-1] == "done"

    final = Path(record["run_uri"]) / "final" / "model.safetensors"
    assert sha256_of(final) == sha256_of(tmp_path / "reference" / "final" / "model.safetensors")
    output = runner.output(submit)
    assert "preempted" in output and "relaunched" in output and f"{job_id} done" in output
    report = json.loads((Path(record["run_uri"]) / "report.json").read_text())
    assert (report["preemptions"], report["resumes"]) == (2, 2)  # survived, as the runner counted them

    # The loss curves, one segment per attempt, drawn: what was trained twice is what the SIGKILL
    # lost (back to attempt 1's last checkpoint); after SIGTERM's emergency checkpoint, nothing.
    picture = tmp_path / "curves.png"
    curves = runner.run("curves", job_id, "--out", str(picture), "--json", timeout=120)
    assert curves.returncode == 0, curves.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    segments = json.loads(curves.stdout)["segments"]
    assert [s["label"] for s in segments] == ["attempt 1", "attempt 2", "attempt 3"]
    assert segments[-1]["last_step"] == 300 and all(s["val"] for s in segments[1:])
    a1, a2, _ = runner.state().attempts(job_id)
    assert segments[1]["redone_steps"] == segments[0]["last_step"] - a1.last_checkpoint_step
    assert a2.last_checkpoint_step == a2.end_step and segments[2]["redone_steps"] == 0


def test_a_hung_trainer_is_noticed_by_its_stale_heartbeat_and_relaunched(runner, tmp_path: Path):
    job = make_job(tmp_path / "job", {"train": {"max_steps": 120, "threads": 1,
                                                "logging": {"heartbeat_seconds": 0.2, "every_steps": 5}}})
    env = dict(runner.env, RUNNER_MIN_STALE_SECONDS="3", RUNNER_STOP_GRACE_SECONDS="2")
    submit = runner.start("submit", str(job), env=env)
    job_id = wait_for(runner.job_ids, timeout=60, what="the job row")[0]
    wait_for(lambda: runner.running_step(job_id, 1, 20), timeout=300, what="attempt 1 at step 20")
    pid, ident = runner.trainer(f"{job_id}-1")
    os.kill(pid, signal.SIGSTOP)  # alive, but no longer beating: a hung trainer
    assert submit.wait(timeout=600) == 0, runner.output(submit)
    record = runner.job(job_id)
    assert record["state"] == "done"
    first, second = record["attempts"]
    assert first["outcome"] == "interrupted" and "heartbeat stale" in first["detail"]
    assert second["outcome"] == "done"
    assert "stale" in [e["kind"] for e in record["events"]]
    assert not proc.is_alive(pid, ident), "the hung trainer was stopped before the relaunch"
