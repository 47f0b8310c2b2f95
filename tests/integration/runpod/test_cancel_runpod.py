"""Cancelling a RunPod job: its trainer gets SIGTERM through RunPod's stop (an emergency checkpoint),
then the pod is terminated; nothing is left billing. Meanwhile `logs --follow` streams the pod's output."""

from __future__ import annotations

from tests.fixtures.jobs import wait_for
from tests.integration.runpod.conftest import ENDLESS, write_job
from tests.integration.runpod.test_quickstart_runpod import Bucket
from trainer import contract


def test_cancel_stops_the_trainer_with_a_checkpoint_and_terminates_the_pod(runner, emulator, s3_bucket,
                                                                           runpod_project):
    write_job(runpod_project, s3_bucket, ENDLESS)
    detached = runner.run("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090", "--detach")
    assert detached.returncode == 0, detached.stderr
    [job_id] = runner.job_ids()
    bucket = Bucket(s3_bucket)
    run_uri = f"s3://{s3_bucket.bucket}/runs/{job_id}"
    wait_for(lambda: (s := bucket.status(run_uri)) is not None and s.state == contract.RUNNING and s.step >= 5,
             timeout=120, what="the trainer at step 5")
    follow = runner.start("logs", job_id, "--follow")
    wait_for(lambda: "trainer starting" in follow.log_path.read_text(errors="replace"), timeout=60,
             what="the pod's output streamed by logs --follow")
    cancelled = runner.run("cancel", job_id, timeout=180)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    record = runner.record(job_id)
    assert record["state"] == "cancelled"
    [attempt] = record["attempts"]
    assert (attempt["outcome"], attempt["exit_code"]) == ("stopped", contract.EXIT_INTERRUPTED), attempt
    status = bucket.status(run_uri)
    assert status.state == contract.INTERRUPTED and status.last_checkpoint_step == status.step  # emergency checkpoint
    [pod] = emulator.pods.values()
    assert [(a, who) for p, a, who in emulator.actions] == [("stop", "account"), ("terminate", "account")]
    assert pod.status == "TERMINATED" and emulator.live_pods() == []
    assert follow.wait(timeout=60) == 0  # --follow ends with the job
    assert "interrupted" in follow.log_path.read_text(errors="replace")  # it streamed up to the stop


def test_a_job_out_of_budget_is_stopped_and_its_pod_terminated(runner, emulator, s3_bucket, runpod_project):
    write_job(runpod_project, s3_bucket, {**ENDLESS, "budget": {"max_usd": 0.001}})  # about 10 s of an RTX 3090 spot pod
    done = runner.run("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090", timeout=240)
    assert done.returncode == 1, done.stdout + done.stderr
    [job_id] = runner.job_ids()
    record = runner.record(job_id)
    assert record["state"] == "over_budget" and "budget" in record["reason"]
    assert [a["outcome"] for a in record["attempts"]] == ["stopped"]
    [pod] = emulator.pods.values()
    assert ("stop", "account") in [(a, who) for _p, a, who in emulator.actions]
    assert pod.status == "TERMINATED" and emulator.live_pods() == []
