"""The cost report against the RunPod emulator's own bill: a spot job at a known price, preempted
twice (once with RunPod's 5-second warning, once without), ends done; the report's dollars are what
the emulator billed, to the cent, and the saving is measured against the catalog's on-demand price.

Prices are the seeds' ($0.34/h spot, $0.44/h on-demand for an RTX 3090) times 1,000, in both the
emulator and the project's catalog: the three pods of this short job are billed for some fifteen
seconds, which then cost dollars, and a cent is a tenth of a second of billing; "to the cent" then
checks that the report takes RunPod's records, not the runner's own clock."""

from __future__ import annotations

import json
import struct

import pytest

from tests.fixtures.jobs import wait_for
from tests.integration.runpod.conftest import write_job
from tests.integration.runpod.test_quickstart_runpod import RTX3090, Bucket, pod_name_for
from trainer import contract

SPOT, ON_DEMAND = 340.0, 440.0  # USD per hour


def test_report_dollars_are_the_emulators_bill_to_the_cent(runner, emulator, s3_bucket, runpod_project, tmp_path):
    catalog = runpod_project / "runner" / "gpus.yaml"
    text = catalog.read_text()
    assert "on_demand: 0.44, spot: 0.34" in text
    catalog.write_text(text.replace("on_demand: 0.44, spot: 0.34", f"on_demand: {ON_DEMAND}, spot: {SPOT}"))
    emulator.set_price(RTX3090, securePrice=ON_DEMAND, communityPrice=ON_DEMAND, secureSpotPrice=SPOT,
                       communitySpotPrice=SPOT, secureMinimumBidPrice=SPOT, communityMinimumBidPrice=SPOT)
    write_job(runpod_project, s3_bucket)
    runner.env["RUNNER_RUNPOD_POLL_SECONDS"] = "0.2"  # hours come from what the runner sees of each pod
    bucket = Bucket(s3_bucket)

    submit = runner.start("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090")
    job_id = wait_for(runner.job_ids, timeout=60, what="the job row")[0]
    run_uri = f"s3://{s3_bucket.bucket}/runs/{job_id}"

    def training(attempt: int, at_least: int) -> bool:
        status = bucket.status(run_uri)
        return status is not None and status.attempt == f"{job_id}-{attempt}" and \
            status.state == contract.RUNNING and status.step >= at_least

    def pod_of(attempt: int):
        pods = emulator.pods_named(pod_name_for(runner, f"{job_id}-{attempt}"))
        return pods[0] if pods else None

    wait_for(lambda: training(1, 15), timeout=180, what="attempt 1 at step 15")
    emulator.preempt(pod_of(1).id)  # SIGTERM, SIGKILL 5 s later: time for an emergency checkpoint
    wait_for(lambda: training(2, 32), timeout=180, what="attempt 2 at step 32")
    emulator.preempt(pod_of(2).id, kill_after=0.0)  # no warning worth the name: work since the last checkpoint is lost
    assert submit.wait(timeout=300) == 0, submit.log_path.read_text()[-4000:]

    record = runner.record(job_id)
    assert record["state"] == "done" and [a["outcome"] for a in record["attempts"]] == ["interrupted", "interrupted",
                                                                                      "done"]
    assert emulator.live_pods() == []  # every bill is closed
    report = runner.run("cost", job_id, "--json", "--plot", str(tmp_path / "cost.png"))
    assert report.returncode == 0, report.stderr
    job = json.loads(report.stdout)["jobs"][0]

    # Dollars: the emulator's bill, to the cent, taken from RunPod's billing records (not the runner's clock).
    billed = emulator.billed_usd()
    assert billed > 1.0  # seconds at $340/h
    assert round(job["usd"], 2) == round(billed, 2)
    assert job["billed_by"] == "provider"
    pods = [pod_of(n) for n in (1, 2, 3)]
    # Hours: the pods' own running time as the runner saw it (RunPod bills in hour buckets, whose
    # edges say nothing of it), close to the emulator's real seconds (the end-to-end test holds them to 1%).
    hours = sum(emulator.running_seconds(p.id) for p in pods) / 3600
    timelines = runner.home / "runpod-pods"  # what the runner saw of each pod, for the message
    seen = {p.id: ((timelines / f"{p.id}.json").read_text() if (timelines / f"{p.id}.json").exists() else None,
                   [(b.start, b.end) for b in p.billing], p.last_status_change) for p in pods}
    assert job["gpu_hours"] == pytest.approx(hours, rel=0.02), seen
    assert emulator.billed_gpu_usd() / hours == pytest.approx(SPOT)  # the known price, per second
    # Saving: the same hours at the catalog's on-demand price, less what was billed.
    assert round(job["on_demand_usd"], 2) == round(job["gpu_hours"] * ON_DEMAND + job["storage_usd"], 2)
    assert round(job["saving_usd"], 2) == round(job["on_demand_usd"] - job["usd"], 2)
    # gpu_hours may be off the real hours by the 2% allowed above, and each of its hours is priced on demand:
    # the saving is held to that, not to a share of itself ($100 of $440 an hour saved here, so 2% of the
    # hours is about 9% of the saving).
    assert job["saving_usd"] == pytest.approx(hours * (ON_DEMAND - SPOT), abs=0.02 * hours * ON_DEMAND)

    # Preemptions and the work they threw away, from what each attempt's status.json said at the end.
    state = runner_state(runner)
    try:
        a1, a2, _a3 = state.attempts(job_id)
        lost = sum(a.end_step - a.last_checkpoint_step for a in (a1, a2))
        for a, pod in zip(state.attempts(job_id), pods, strict=True):
            seg = next(s for s in state.segments(job_id) if s.attempt_id == a.id)
            assert seg.provider_usd == pytest.approx(emulator.billed_gpu_usd(pod.id), abs=1e-9)  # compute; disk apart
    finally:
        state.close()
    assert job["preemptions"] == 2 and job["lost_steps"] == lost and 0 <= lost < 20
    assert job["steps"] == 60 and job["usd_per_1k_steps"] == pytest.approx(job["usd"] / 0.060)
    assert job["idle_hours"] > 0  # three boots of a pod, billed before the trainer trained

    png = (tmp_path / "cost.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1200, 720)


def runner_state(runner):
    from runner.state import State

    return State(runner.home / "state.db")
