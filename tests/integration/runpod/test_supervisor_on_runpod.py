"""`supervisor: runpod`: `submit --detach` starts the supervisor as a small RunPod CPU pod (REST v2 create
with `cpu`, the project's image in supervisor mode: the Dockerfile's entrypoint with
`supervisor run --storage ...`), which relaunches the preempted GPU pod, finishes the job, and
terminates its own pod once no job is left. The CPU pod's dollars are in the job's cost."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.jobs import wait_for
from tests.integration.runpod.conftest import write_job
from tests.integration.runpod.test_quickstart_runpod import Bucket
from trainer import contract

pytestmark = pytest.mark.integration  # and slow: tests/conftest.py SLOW_MODULES

SUPERVISOR_ENV = {"RUNNER_SUPERVISOR_LEASE_SECONDS": "4", "RUNNER_SUPERVISOR_CONTROL_SECONDS": "1",
                  "RUNNER_SUPERVISOR_SNAPSHOT_SECONDS": "1", "RUNNER_SUPERVISOR_IDLE_SECONDS": "3"}


def test_a_runpod_cpu_pod_supervises_the_job_and_ends_itself(runner, emulator, s3_bucket, runpod_project):
    runner.env.update(SUPERVISOR_ENV)
    write_job(runpod_project, s3_bucket, {"supervisor": "runpod", "backend": "runpod", "resources": {"gpu": "rtx3090"}})
    # Without --detach, submit follows the job from its snapshots until it ends.
    submit = runner.start("submit", "jobs/quickstart.yaml")
    [job_id] = wait_for(runner.job_ids, timeout=120, what="the job row")
    [supervisor] = emulator.wait_until(lambda: [p for p in emulator.pods.values() if p.cpu], 120, "the supervisor pod")
    assert supervisor.gpu_id is None and supervisor.cpu["id"] == "cpu3c" and supervisor.args.startswith("supervisor run")
    # The account key reaches it under a name of its own (RunPod's RUNPOD_API_KEY in a pod is pod-scoped).
    assert supervisor.env["RUNNER_RUNPOD_ACCOUNT_KEY"] == emulator.api_key
    assert supervisor.env.get("RUNPOD_API_KEY") != emulator.api_key

    bucket = Bucket(s3_bucket)
    run_uri = f"s3://{s3_bucket.bucket}/runs/{job_id}"

    def gpu_pod(attempt: int):
        found = [p for p in emulator.pods.values() if p.gpu_id and p.name.endswith(f"-{job_id}-{attempt}")]
        return found[0] if found else None

    wait_for(lambda: (s := bucket.status(run_uri)) is not None and s.attempt == f"{job_id}-1" and s.step >= 15,
             timeout=240, what="attempt 1 to train")
    emulator.preempt(gpu_pod(1).id)
    assert submit.wait(timeout=300) == 0, submit.log_path.read_text()[-3000:]
    followed = submit.log_path.read_text()
    assert "preempted" in followed and "relaunched" in followed and f"{job_id} done" in followed, followed[-3000:]
    emulator.wait_until(lambda: supervisor.status == "TERMINATED", 120, "the supervisor pod to end itself")

    record = runner.record(job_id)
    assert record["state"] == "done", record
    assert [a["outcome"] for a in record["attempts"]] == ["interrupted", "done"]
    assert (bucket.status(run_uri) or contract.Status("x")).state == contract.DONE
    assert emulator.live_pods() == [] and emulator.bugs == []
    # Its own pod terminated itself with the account key; its time is the job's.
    assert (supervisor.id, "terminate", "account") in emulator.actions
    cost = json.loads(runner.run("cost", job_id, "--json").stdout)["jobs"][0]
    [segment] = record["supervisor_segments"]
    assert segment["rate_per_hour"] == pytest.approx(supervisor.rate_per_hour)
    assert cost["supervisor_usd"] == pytest.approx(segment["usd"]) and cost["supervisor_usd"] > 0
    status = runner.run("supervisor", "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["running"] is False
