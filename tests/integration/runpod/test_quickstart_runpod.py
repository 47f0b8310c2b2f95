"""`python -m runner submit jobs/quickstart.yaml --backend runpod --gpu rtx3090` against the RunPod
emulator, with the runs in SeaweedFS: a burst of 429s, two preemptions (SIGTERM, SIGKILL 5 s later,
"Exited by Runpod"), one "500 after create" and one capacity error on the way. The job ends done, its
final weights are byte identical to an uninterrupted run's, exactly one pod was created per attempt,
and no pod is left running or stopped. Secrets are found nowhere but in the pods' env."""

from __future__ import annotations

import subprocess
import sys

from runner.backends.runpod import pod_name
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


def test_quickstart_on_runpod_survives_preemptions_429s_500_after_create_and_no_capacity(
        runner, emulator, s3_bucket, runpod_project, tmp_path):
    # Twice the usual short run: room for two preemptions at steps seen within ~0.1 s, however fast it trains.
    write_job(runpod_project, s3_bucket, {"train": {"max_steps": 120, "eval": {"every_steps": 40}}})
    bucket = Bucket(s3_bucket)
    # The reference: the same trainer, never interrupted (started now, it runs beside the job).
    reference = subprocess.Popen(
        [sys.executable, "-m", "trainer", "run", "jobs/quickstart.yaml", "--run-uri", f"s3://{s3_bucket.bucket}/reference"],
        cwd=runpod_project, env=runner.env, stdout=open(tmp_path / "reference.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115

    emulator.fail_next(4, 429, retry_after=0.5)  # a burst of 429s meets the first calls
    submit = runner.start("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090")
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
    emulator.fail_after_create(1)  # attempt 2's create makes its pod, then answers 500
    emulator.preempt(pod_of(1).id)

    wait_for(lambda: training(2, 60), timeout=180, what="attempt 2 at step 60")
    emulator.exhaust(RTX3090, cloud="SECURE", spot=True, times=1)  # attempt 3: no capacity there, once
    emulator.preempt(pod_of(2).id)

    assert submit.wait(timeout=300) == 0, submit.log_path.read_text()[-4000:]
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    record = runner.record(job_id)
    assert record["state"] == "done"
    attempts = record["attempts"]
    assert [a["outcome"] for a in attempts] == ["interrupted", "interrupted", "done"], attempts
    assert all("Exited by Runpod" in a["detail"] for a in attempts[:2]), attempts
    assert [a["handle"]["cloud"] for a in attempts] == ["SECURE", "SECURE", "COMMUNITY"]
    assert all(a["spot"] and a["gpu"] == "rtx3090" for a in attempts)

    # Byte identical to the uninterrupted run.
    final = bucket.get(f"runs/{job_id}/final/model.safetensors")
    assert final is not None and final == bucket.get("reference/final/model.safetensors")

    # Exactly one pod per attempt, whatever RunPod answered; none left running or stopped.
    for a in attempts:
        [pod] = emulator.pods_named(pod_name_for(runner, a["id"]))
        assert a["handle"]["pod_id"] == pod.id
    assert len(emulator.pods) == 3 and emulator.live_pods() == []
    # What RunPod was put through, as the emulator saw it and the job's events tell it.
    assert [s for _m, _p, s in emulator.requests].count(429) == 4
    assert [s for _m, p, s in emulator.requests if p == "/graphql"].count(500) == 1
    kinds = [e["kind"] for e in record["events"]]
    for kind in ("create_retry", "create_found", "no_capacity", "preempted"):
        assert kind in kinds, kinds
    assert kinds.count("preempted") == 2
    # Each attempt's cost is what RunPod billed for its pod (per second at the pod's rate), to the cent.
    from runner.state import State

    state = State(runner.home / "state.db")
    segments = {s.attempt_id: s for s in state.segments(job_id)}
    state.close()
    for a in attempts:
        billed = emulator.billed_usd(a["handle"]["pod_id"])
        assert billed > 0 and round(segments[a["id"]].total_cost(), 2) == round(billed, 2)
        assert abs(segments[a["id"]].provider_usd - billed) < 1e-9
    # The runner terminated every pod (the last one may also have stopped itself first).
    assert {a["handle"]["pod_id"] for a in attempts} == {p for p, action, who in emulator.actions
                                                          if action == "terminate" and who == "account"}

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
