"""A runner killed between "create sent" and "create answered" leaves one pod, which `watch` adopts;
the trainer stops its own pod when done even with no runner watching; a spot request that RunPod
refuses falls back to on-demand when the job allows it, and otherwise fails saying what RunPod said
and what to change."""

from __future__ import annotations

import json

from tests.fixtures.jobs import wait_for
from tests.integration.runpod.conftest import write_job
from tests.integration.runpod.test_quickstart_runpod import Bucket, pod_name_for
from trainer import contract

TINY = {"train": {"max_steps": 12, "eval": {"every_steps": 6}, "checkpoint": {"every_steps": 6}}}


def test_runner_killed_mid_create_then_watch_adopts_the_one_pod(runner, emulator, s3_bucket, runpod_project):
    write_job(runpod_project, s3_bucket, TINY)
    hold = emulator.hold_create_answers()
    submit = runner.start("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090")
    assert hold.received.wait(timeout=60), submit.log_path.read_text()
    submit.kill()  # the create was sent and the pod made; the answer never reached the runner
    submit.wait(timeout=30)
    hold.release.set()
    [job_id] = runner.job_ids()
    [pod] = emulator.pods.values()

    # With no runner watching, the trainer finishes and its pod stops itself (pod-scoped key).
    bucket = Bucket(s3_bucket)
    wait_for(lambda: (bucket.status(f"s3://{s3_bucket.bucket}/runs/{job_id}") or contract.Status("x")).state
             == contract.DONE, timeout=180, what="the run to be done")
    emulator.wait_until(lambda: pod.status == "EXITED", 60, "the pod to stop itself")
    assert (pod.id, "stop", pod.id) in emulator.actions and pod.last_status_change.startswith("Exited by user:")
    assert pod.billing[-1].end is not None  # a stopped pod bills no GPU time

    watch = runner.run("watch", timeout=180)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    record = runner.record(job_id)
    assert record["state"] == "done" and [a["outcome"] for a in record["attempts"]] == ["done"]
    assert record["attempts"][0]["handle"]["pod_id"] == pod.id
    assert "adopted" in [e["kind"] for e in record["events"]]
    assert emulator.pods_named(pod_name_for(runner, f"{job_id}-1")) == [pod] and len(emulator.pods) == 1
    assert emulator.live_pods() == []


def test_spot_refused_falls_back_to_on_demand_when_the_job_allows_it(runner, emulator, s3_bucket, runpod_project):
    write_job(runpod_project, s3_bucket, {**TINY, "retry": {"fallback_to_on_demand_after": 2}})
    emulator.refuse_spot()
    done = runner.run("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090", "--json",
                      timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)
    assert [(a["outcome"], a["spot"]) for a in record["attempts"]] == [("spot_refused", True), ("done", False)]
    [pod] = emulator.pods.values()
    assert not pod.spot and pod.rate_per_hour == 0.44 and emulator.live_pods() == []
    fallback = [e["message"] for e in record["events"] if e["kind"] == "fallback"]
    assert fallback and "refuses spot" in fallback[0]


def test_spot_refused_fails_the_job_saying_what_runpod_said_and_what_to_change(runner, emulator, s3_bucket,
                                                                              runpod_project):
    write_job(runpod_project, s3_bucket, TINY)
    emulator.refuse_spot("Spot pods are no longer offered in this region.")
    done = runner.run("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090", timeout=120)
    assert done.returncode == 1
    said = done.stdout + done.stderr
    assert "Spot pods are no longer offered in this region." in said
    assert "resources.spot: false" in said and "fallback_to_on_demand_after" in said
    [job_id] = runner.job_ids()
    assert runner.record(job_id)["state"] == "failed" and emulator.pods == {}
