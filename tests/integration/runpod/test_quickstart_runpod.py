"""`python -m runner submit jobs/quickstart.yaml --backend runpod --gpu rtx3090,rtx4090` against the
RunPod emulator (built from RunPod's published API), with the runs in SeaweedFS. In one run the spot
job meets a 429 burst, a capacity refusal on the first GPU of its list (in RunPod's 2026 wording), two
preemptions (SIGTERM, SIGKILL 5 s later, "Exited by Runpod"), a GraphQL internal error after a real
spot create, a REST 500 after a real on-demand create and a pod list that lags, then falls back to
on-demand and finishes: byte identical to an uninterrupted run, never two live pods for the job, no
pod left, GPU-hours within 1% of the pods' real running seconds and dollars equal to RunPod's bill to
the cent. Secrets are found nowhere but in the pods' env."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from runner.runpod.names import pod_name
from tests.fixtures.jobs import wait_for
from tests.integration.runpod.conftest import write_job
from trainer import contract

RTX3090 = "NVIDIA GeForce RTX 3090"


class Bucket:
    def __init__(self, s3):
        self.s3, self.client = s3, s3.client()

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.s3.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def status(self, run_uri: str) -> contract.Status | None:
        raw = self.get(run_uri.split("/", 3)[3] + "/" + contract.STATUS)
        return contract.Status.from_json(raw) if raw else None


class LivePods:
    """Samples, every 20 ms, how many of the job's pods are not yet terminated (running or stopped:
    both bill); ``most`` is the largest count seen."""

    def __init__(self, emulator, prefix: str):
        self.emulator, self.prefix, self.most = emulator, prefix, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(0.02):
            live = [p for p in self.emulator.live_pods() if p.name.startswith(self.prefix)]
            self.most = max(self.most, len(live))

    def stop(self) -> int:
        self.done.set()
        self.thread.join(timeout=5)
        return self.most


def test_spot_job_survives_what_runpod_does_then_falls_back_to_on_demand_and_finishes(
        runner, emulator, s3_bucket, runpod_project, tmp_path):
    # Twice the usual short run: room for two preemptions at steps seen within ~0.1 s, however fast it trains.
    write_job(runpod_project, s3_bucket, {"train": {"max_steps": 120, "eval": {"every_steps": 40}},
                                          "retry": {"fallback_to_on_demand_after": 2}})
    # Looks at the pods every 0.2 s: the hours are measured from what the runner sees of each pod.
    runner.env["RUNNER_RUNPOD_POLL_SECONDS"] = "0.2"
    bucket = Bucket(s3_bucket)
    # The reference: the same trainer, never interrupted (started now, it runs beside the job).
    reference = subprocess.Popen(
        [sys.executable, "-m", "trainer", "run", "jobs/quickstart.yaml", "--run-uri", f"s3://{s3_bucket.bucket}/reference"],
        cwd=runpod_project, env=runner.env, stdout=open(tmp_path / "reference.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115

    wording = "There are no instances available with the request specifications"
    emulator.exhaust(RTX3090, spot=True, times=2, message=wording)  # the first GPU: no spot in either cloud, once
    emulator.fail_next(3, 429, retry_after=1)  # a burst of 429s meets the first calls
    live = LivePods(emulator, pod_name_for(runner, ""))
    submit = runner.start("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090,rtx4090")
    job_id = wait_for(runner.job_ids, timeout=60, what="the job row")[0]
    run_uri = f"s3://{s3_bucket.bucket}/runs/{job_id}"

    def training(attempt: int, at_least: int):
        status = bucket.status(run_uri)
        return status is not None and status.attempt == f"{job_id}-{attempt}" and \
            status.state == contract.RUNNING and status.step >= at_least

    def pod_of(attempt: int):
        pods = emulator.pods_named(pod_name_for(runner, f"{job_id}-{attempt}"))
        return pods[0] if pods else None

    wait_for(lambda: training(1, 20), timeout=180, what="attempt 1 at step 20")
    emulator.graphql_internal_error_after_create(1)  # attempt 2's spot create makes its pod, then a GraphQL fault
    emulator.lag_listing(3.0)  # and the pod list shows a new pod only 3 s later
    emulator.preempt(pod_of(1).id)

    wait_for(lambda: training(2, 60), timeout=180, what="attempt 2 at step 60")
    emulator.fail_after_create(1)  # attempt 3 (on-demand, REST) makes its pod, then answers 500
    emulator.preempt(pod_of(2).id)

    assert submit.wait(timeout=300) == 0, submit.log_path.read_text()[-4000:]
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    assert live.stop() == 1, "two pods of the job were alive at once"
    record = runner.record(job_id)
    assert record["state"] == "done"
    attempts = record["attempts"]
    assert [a["outcome"] for a in attempts] == ["interrupted", "interrupted", "done"], attempts
    assert all("Exited by Runpod" in a["detail"] for a in attempts[:2]), attempts
    assert [(a["gpu"], a["spot"]) for a in attempts] == [("rtx4090", True), ("rtx3090", True), ("rtx3090", False)]

    # Byte identical to the uninterrupted run.
    final = bucket.get(f"runs/{job_id}/final/model.safetensors")
    assert final is not None and final == bucket.get("reference/final/model.safetensors")

    # Exactly one pod per attempt, whatever RunPod answered; none left running or stopped.
    for a in attempts:
        [pod] = emulator.pods_named(pod_name_for(runner, a["id"]))
        assert a["handle"]["pod_id"] == pod.id
    assert len(emulator.pods) == 3 and emulator.live_pods() == []
    assert emulator.bugs == []
    # What RunPod was put through, as the emulator saw it and the job's events tell it.
    assert [s for _m, _p, s in emulator.requests].count(429) == 3
    kinds = [e["kind"] for e in record["events"]]
    for kind in ("create_retry", "create_found", "no_capacity", "preempted", "fallback"):
        assert kind in kinds, kinds
    assert kinds.count("preempted") == 2 and kinds.count("create_found") == 2
    assert any(wording in e["message"] for e in record["events"] if e["kind"] == "no_capacity")
    assert "billing_mismatch" not in kinds

    # The cost report: GPU-hours from the pods' own timelines, dollars from RunPod's billing buckets.
    report = runner.run("cost", job_id, "--json")
    assert report.returncode == 0, report.stderr
    job = json.loads(report.stdout)["jobs"][0]
    pods = [a["handle"]["pod_id"] for a in attempts]
    real_hours = sum(emulator.running_seconds(p) for p in pods) / 3600
    timelines = runner.home / "runpod-pods"  # what the runner saw of each pod, for the message
    seen = {p: ((timelines / f"{p}.json").read_text() if (timelines / f"{p}.json").exists() else None,
                [(b.start, b.end) for b in emulator.pods[p].billing]) for p in pods}
    assert job["gpu_hours"] == pytest.approx(real_hours, rel=0.01), seen
    assert round(job["usd"], 2) == round(sum(emulator.billed_usd(p) for p in pods), 2)
    assert job["billed_by"] == "provider"
    # The runner terminated every pod (the last one may also have stopped itself first).
    assert set(pods) == {p for p, action, who in emulator.actions if action == "terminate" and who == "account"}

    # Secrets: in the pods' env, and nowhere else (state, runner output, pod output, the run's log).
    secret, account_key = s3_bucket.secret_key, emulator.api_key
    assert all(p.env["AWS_SECRET_ACCESS_KEY"] == secret and account_key not in p.env.values()
               for p in emulator.pods.values())
    files = [*runner.home.rglob("*"), *runner.logs.iterdir(), *(emulator.root / "pods").rglob("*.log")]
    for path in files:
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and account_key.encode() not in data, f"a secret is in {path}"
    log = bucket.get(f"runs/{job_id}/{contract.TRAINER_LOG}") or b""
    assert log and secret.encode() not in log
    logs = runner.run("logs", job_id)
    assert logs.returncode == 0 and logs.stdout.count("── attempt") == 3


def pod_name_for(runner, attempt_id: str) -> str:
    """The pod name the runner gives an attempt (its owner id is in the runner's state folder)."""
    import os

    old = os.environ.get("RUNNER_HOME")
    os.environ["RUNNER_HOME"] = str(runner.home)
    try:
        return pod_name(attempt_id)
    finally:
        if old is None:
            del os.environ["RUNNER_HOME"]
        else:
            os.environ["RUNNER_HOME"] = old
