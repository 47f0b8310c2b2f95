"""`submit --detach` returns as soon as the job is recorded: a background runner process builds, pushes
and launches it, recorded as the job's launcher, so `status` names it and `watch` waits for it instead
of launching the job twice. A job that fails in the background is said failed, with RunPod's words, and
nothing suggests watching it; a submit followed to a failure exits 1."""

from __future__ import annotations

import json
import time

from tests.fixtures.jobs import wait_for
from tests.integration.runpod.conftest import write_job

TINY = {"train": {"max_steps": 12, "eval": {"every_steps": 6}, "checkpoint": {"every_steps": 6}}}
SUBMIT = ("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090")


def test_detach_returns_while_the_launch_goes_on_in_the_background(runner, emulator, s3_bucket, runpod_project):
    write_job(runpod_project, s3_bucket, TINY)
    hold = emulator.hold_create_answers()  # the pod's create is answered only when the test says so
    started = time.monotonic()
    detached = runner.run(*SUBMIT, "--detach", "--json", timeout=120)
    took = time.monotonic() - started
    assert detached.returncode == 0, detached.stdout + detached.stderr
    record = json.loads(detached.stdout)
    job_id = record["id"]
    assert record["state"] == "pending" and record["launcher"]["running"], record
    launcher = record["launcher"]["pid"]
    assert hold.received.wait(timeout=120), "the background launcher asks RunPod for the pod"
    assert not hold.release.is_set()  # so the submit returned before the launch did
    assert took < 60
    status = runner.record(job_id)
    assert status["supervised_by"] == launcher and status["launcher"]["running"]
    flat = " ".join(runner.run("status", job_id).stdout.split())
    assert f"runner process {launcher}, launching it in the background" in flat

    watch = runner.start("watch")  # waits for the launcher instead of launching a second pod
    wait_for(lambda: "is being launched in the background by runner process" in runner_output(watch), timeout=60,
             what="watch to wait for the launcher")
    hold.release.set()
    assert watch.wait(timeout=300) == 0, runner_output(watch)
    done = runner.record(job_id)
    assert done["state"] == "done" and [a["outcome"] for a in done["attempts"]] == ["done"], done
    assert len(emulator.pods) == 1, "one pod: watch never launched the job a second time"
    assert done["launcher"] == {"pid": launcher, "log": str(runner.home / "background" / f"{job_id}.log"),
                                "running": False}  # it ended once the job was launched
    log = runner.home / "background" / f"{job_id}.log"
    assert "launched attempt 1: RunPod pod" in log.read_text()


def runner_output(p) -> str:
    return p.log_path.read_text(errors="replace")


def test_a_job_that_fails_in_the_background_is_said_failed_and_never_sent_to_watch(runner, emulator, s3_bucket,
                                                                                   runpod_project):
    write_job(runpod_project, s3_bucket, TINY)
    emulator.refuse_spot("Spot pods are no longer offered in this region.")
    detached = runner.run(*SUBMIT, "--detach", timeout=120)
    assert detached.returncode == 0, detached.stdout + detached.stderr
    [job_id] = runner.job_ids()
    assert detached.stdout.startswith(f"{job_id} recorded; runner process ")
    assert f"python -m runner logs {job_id} --follow" in detached.stdout and "watch" not in detached.stdout
    wait_for(lambda: runner.record(job_id)["state"] == "failed", timeout=120, what="the job to fail in the background")
    status = runner.run("status", job_id)
    assert status.returncode == 0 and "Spot pods are no longer offered in this region." in status.stdout
    assert "watch" not in status.stdout
    logs = runner.run("logs", job_id)
    assert "Spot pods are no longer offered in this region." in logs.stdout and "watch" not in logs.stdout
    assert emulator.pods == {}
    # Followed in the foreground, the same failure exits 1, and says nothing of watching either.
    followed = runner.run(*SUBMIT, timeout=120)
    assert followed.returncode == 1, followed.stdout + followed.stderr
    assert "failed" in followed.stdout and "watch" not in followed.stdout + followed.stderr
