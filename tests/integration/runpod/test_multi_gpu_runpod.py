"""A job on two GPUs on RunPod: one pod with two GPUs (not two pods), billed at twice the per-GPU
price, whose entrypoint starts torchrun with one process per GPU (gloo on the emulator's CPUs)."""

from __future__ import annotations

import pytest

from tests.fixtures.jobs import wait_for
from tests.integration.runpod.conftest import write_job
from tests.integration.runpod.test_quickstart_runpod import RTX3090, Bucket
from trainer import contract


def test_a_two_gpu_job_gets_one_pod_with_two_gpus_and_two_ranks(runner, emulator, s3_bucket, runpod_project):
    write_job(runpod_project, s3_bucket, {"resources": {"gpu_count": 2}, "train": {"max_steps": 40}})
    done = runner.run("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090", timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    [job_id] = runner.job_ids()
    record = runner.record(job_id)
    assert record["state"] == "done", record

    [pod] = emulator.pods.values()
    assert (pod.gpu_id, pod.gpu_count) == (RTX3090, 2)
    assert pod.rate_per_hour == pytest.approx(2 * pod.bid_per_gpu)  # a spot bid is per GPU
    wait_for(lambda: emulator.live_pods() == [], timeout=60, what="the pod to be terminated")

    log = Bucket(s3_bucket).get(f"runs/{job_id}/{contract.TRAINER_LOG}").decode()
    assert "process group up: rank 0 of 2 (gloo)" in log
    assert "batch 8 per process x 2 process(es)" in log and "done at step 40" in log
    [attempt] = record["attempts"]
    assert attempt["outcome"] == "done" and attempt["gpu_count"] == 2, attempt
