"""Real trainer processes against a real S3 server (SeaweedFS): a new machine resumes from the
bucket alone, training survives a faulty network, and misconfigured storage fails fast."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.faultproxy import FaultProxy, every
from tests.fixtures.jobs import make_job, run_trainer, start_trainer, wait_for
from tests.fixtures.s3 import S3Server
from trainer import contract

#: The quickstart with a faster heartbeat and sync, so a short run shows them several times.
# 200 steps: long enough that the checks on a still-running run finish well before it ends.
OVERRIDES = {"train": {"max_steps": 200, "checkpoint": {"every_steps": 20, "keep_last": 3},
                       "logging": {"heartbeat_seconds": 0.5, "sync_seconds": 1}}}
FINAL_STEP = 200


def get(client, bucket: str, key: str) -> bytes | None:
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


def keys(client, bucket: str, prefix: str) -> list[str]:
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def verify_checkpoints(s3: S3Server, prefix: str) -> dict[str, int]:
    """Every checkpoint in the bucket that has a checksum matches it and loads: {key: step}."""
    import torch

    client, verified = s3.client(), {}
    for key in keys(client, s3.bucket, f"{prefix}/checkpoints/"):
        if not key.endswith(".pt"):
            continue
        sidecar = get(client, s3.bucket, key + contract.CHECKSUM_SUFFIX)
        if sidecar is None:
            continue  # a write that had not finished: readers skip it
        record, data = json.loads(sidecar), get(client, s3.bucket, key)
        assert data is not None, f"{key} has a checksum but no bytes"
        assert hashlib.sha256(data).hexdigest() == record["sha256"] and len(data) == record["size"], f"{key} is torn"
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        assert state["step"] == record["step"]
        verified[key.removeprefix(prefix + "/")] = record["step"]
    return verified


def scalars(s3: S3Server, prefix: str, dest: Path, tag: str = "train/loss") -> list[int]:
    """Download ``tensorboard/`` from the bucket as a user would, and read it as TensorBoard does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    client = s3.client()
    for key in keys(client, s3.bucket, f"{prefix}/tensorboard/"):
        (dest / Path(key).name).write_bytes(get(client, s3.bucket, key) or b"")
    acc = EventAccumulator(str(dest))
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [e.step for e in acc.Scalars(tag)]


def secrets_absent(s3: S3Server, *texts: str) -> None:
    for text in texts:
        assert s3.secret_key not in text and s3.access_key not in text, "a credential leaked into the output"


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_job(tmp_path_factory.mktemp("job"), OVERRIDES)


@pytest.fixture(scope="module")
def reference(s3_server: S3Server, job: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """final/model.safetensors of an uninterrupted run to S3 (and what such a run leaves in the bucket)."""
    s3 = s3_server.create_bucket()
    cache = tmp_path_factory.mktemp("reference-cache")
    done = run_trainer(job, f"s3://{s3.bucket}/ref", "--cache-dir", str(cache), env=s3.env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    secrets_absent(s3, done.stdout, done.stderr)
    client = s3.client()
    status = contract.Status.from_json(get(client, s3.bucket, "ref/status.json"))
    assert status.state == contract.DONE and status.step == FINAL_STEP
    # keep_last holds in the bucket too: the three newest history checkpoints, plus latest and best.
    assert sorted(verify_checkpoints(s3, "ref")) == [
        "checkpoints/best.pt", "checkpoints/latest.pt", "checkpoints/step-000000160.pt",
        "checkpoints/step-000000180.pt", "checkpoints/step-000000200.pt"]
    log = get(client, s3.bucket, "ref/logs/trainer.log").decode()
    assert f"done at step {FINAL_STEP}" in log  # written after the last status: the log still gets it
    return get(client, s3.bucket, "ref/final/model.safetensors")


def test_a_new_machine_resumes_from_the_bucket_alone(s3_bucket: S3Server, job: Path, reference: bytes,
                                                     tmp_path: Path) -> None:
    s3, uri = s3_bucket, f"s3://{s3_bucket.bucket}/run"
    client = s3.client()
    cache_a, cache_b = tmp_path / "machine-a", tmp_path / "machine-b"
    first = start_trainer(job, uri, "--cache-dir", str(cache_a), env=s3.env(), log_path=tmp_path / "a.log")
    try:
        def latest_step() -> int:
            raw = get(client, s3.bucket, "run/" + contract.LATEST + contract.CHECKSUM_SUFFIX)
            return json.loads(raw)["step"] if raw else 0

        wait_for(lambda: latest_step() >= 40 or first.poll() is not None, timeout=180,
                 what="two checkpoints in the bucket")
        # TensorBoard on a downloaded copy of a run that is still going shows its recent steps.
        steps = wait_for(lambda: [s for s in scalars(s3, "run", tmp_path / "tb-live") if s >= 40],
                         timeout=60, what="train/loss past step 40 in the bucket's tensorboard/")
        assert first.poll() is None, "the run ended before the live checks: they proved nothing"
        assert steps
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    killed_at = latest_step()
    assert 40 <= killed_at < FINAL_STEP
    # SIGKILL, whatever it interrupted, leaves no torn checkpoint behind a checksum.
    assert verify_checkpoints(s3, "run")

    shutil.rmtree(cache_a)  # the machine is gone, and its disk with it
    assert not cache_b.exists()
    done = run_trainer(job, uri, "--cache-dir", str(cache_b), env=s3.env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = re.search(r"resuming from checkpoints/latest\.pt \(step (\d+)", done.stderr)
    assert resumed and int(resumed.group(1)) >= killed_at, done.stderr[-3000:]
    assert get(client, s3.bucket, "run/final/model.safetensors") == reference
    assert contract.Status.from_json(get(client, s3.bucket, "run/status.json")).state == contract.DONE
    secrets_absent(s3, done.stdout, done.stderr, (tmp_path / "a.log").read_text())
    # One log for the whole run, continued on the new machine; TensorBoard covers both machines.
    log = get(client, s3.bucket, "run/logs/trainer.log").decode()
    assert log.count("trainer starting") == 2 and f"done at step {FINAL_STEP}" in log
    assert max(scalars(s3, "run", tmp_path / "tb-done")) == FINAL_STEP


class OrderingWatcher(threading.Thread):
    """Reads checkpoints the way a resuming trainer does while they are being written: checksum,
    bytes, checksum again. When both checksum reads agree, the bytes between them must match."""

    def __init__(self, s3: S3Server, prefix: str) -> None:
        super().__init__(daemon=True)
        self.s3, self.prefix = s3, prefix
        self.stop = threading.Event()
        self.conclusive = 0
        self.violations: list[str] = []

    def run(self) -> None:
        client = self.s3.client()
        while not self.stop.wait(0.05):
            try:
                names = [k for k in keys(client, self.s3.bucket, f"{self.prefix}/checkpoints/") if k.endswith(".pt")]
                for key in names:
                    before = get(client, self.s3.bucket, key + contract.CHECKSUM_SUFFIX)
                    data = get(client, self.s3.bucket, key)
                    after = get(client, self.s3.bucket, key + contract.CHECKSUM_SUFFIX)
                    if before is None or data is None or before != after:
                        continue  # replaced while we read: a reader would retry or fall back
                    self.conclusive += 1
                    record = json.loads(before)
                    if hashlib.sha256(data).hexdigest() != record["sha256"]:
                        self.violations.append(f"{key}: bytes do not match the checksum of step {record['step']}")
            except Exception as e:  # a list racing a delete; keep watching
                if "NoSuchKey" not in str(e):
                    self.violations.append(f"watcher error: {e!r}")


def test_training_survives_throttling_dropped_connections_and_stalls(s3_bucket: S3Server, job: Path,
                                                                     reference: bytes, tmp_path: Path) -> None:
    """Through a network that throttles, drops and stalls: a run interrupted by SIGTERM flushes its
    emergency checkpoint to the bucket, the relaunch finishes, and nothing differs from a clean run."""
    s3 = s3_bucket
    client = s3.client()
    uri = f"s3://{s3.bucket}/run"
    with FaultProxy(s3.endpoint, every(7, ["slowdown", "drop", "drop_after", "truncate", "stall"]),
                    stall_s=60) as proxy:
        watcher = OrderingWatcher(s3, "run")
        watcher.start()
        try:
            # A short read timeout so that a stall costs seconds; the proxy holds a stall for a minute.
            env = s3.env(endpoint=proxy.url, TRAINER_S3_READ_TIMEOUT="3")
            first_log = tmp_path / "first.log"
            first = start_trainer(job, uri, "--cache-dir", str(tmp_path / "cache"), env=env, log_path=first_log)
            try:
                wait_for(lambda: get(client, s3.bucket, "run/" + contract.LATEST + contract.CHECKSUM_SUFFIX)
                         or first.poll() is not None, timeout=180, what="a checkpoint in the bucket")
                first.send_signal(signal.SIGTERM)
                code = first.wait(timeout=180)
            finally:
                if first.poll() is None:
                    first.kill()
            assert code == contract.EXIT_INTERRUPTED, first_log.read_text()[-4000:]
            status = contract.Status.from_json(get(client, s3.bucket, "run/status.json"))
            latest = json.loads(get(client, s3.bucket, "run/" + contract.LATEST + contract.CHECKSUM_SUFFIX))
            assert status.state == contract.INTERRUPTED and latest["step"] == status.step < FINAL_STEP

            done = run_trainer(job, uri, "--cache-dir", str(tmp_path / "cache"), env=env, timeout=400)
            (tmp_path / "second.log").write_text(done.stderr)  # kept with the test's files, for a failure
        finally:
            watcher.stop.set()
            watcher.join(timeout=30)
        injected = proxy.counts()
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"resuming from checkpoints/latest.pt (step {status.step}," in done.stderr
    assert {"slowdown", "drop", "drop_after", "stall"} <= set(injected), injected
    # Every fault cost a retry, and every retry is in the log (a slow answer on a busy machine may add one).
    output = first_log.read_text() + done.stderr
    retries = re.findall(r"S3 retry: .* failed with (\S+)", output)
    assert len(retries) >= sum(injected.values()), (injected, retries)
    assert any(r.startswith("SlowDown") for r in retries) and any("ReadTimeout" in r for r in retries)
    # The faults changed nothing: same weights as the run that saw none, nothing torn, ever.
    assert get(client, s3.bucket, "run/final/model.safetensors") == reference
    assert watcher.violations == [] and watcher.conclusive >= 10, (watcher.violations, watcher.conclusive)
    assert verify_checkpoints(s3, "run")["checkpoints/latest.pt"] == FINAL_STEP
    secrets_absent(s3, output, done.stdout)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case,expect", [
    ("bucket", "wrong or missing bucket: bucket 'no-such-bucket' does not exist"),
    ("secret", "wrong credentials: AWS_SECRET_ACCESS_KEY does not match AWS_ACCESS_KEY_ID"),
    ("key", "wrong credentials: http://127.0.0.1:"),
    ("endpoint", "unreachable endpoint: cannot connect to the S3 endpoint http://127.0.0.1:"),
])
def test_misconfigured_storage_fails_fast_and_says_which(s3_bucket: S3Server, job: Path, tmp_path: Path,
                                                         case: str, expect: str) -> None:
    s3, bucket = s3_bucket, s3_bucket.bucket
    env = s3.env()
    if case == "bucket":
        bucket = "no-such-bucket"
    elif case == "secret":
        env["AWS_SECRET_ACCESS_KEY"] = "x" * 40
    elif case == "key":
        env["AWS_ACCESS_KEY_ID"] = "AKNOTAKEY0000000"
    else:
        env["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    done = run_trainer(job, f"s3://{bucket}/run", "--cache-dir", str(tmp_path / "cache"), env=env, timeout=120)
    elapsed = time.monotonic() - t0
    assert done.returncode == contract.EXIT_STORAGE, done.stderr[-3000:]
    assert expect in done.stderr, done.stderr[-3000:]
    assert elapsed < 30, f"took {elapsed:.0f}s to fail"
    # Before any training step: the loop never started and nothing was written to the bucket.
    assert "training" not in done.stderr and "step " not in done.stderr
    assert keys(s3.client(), s3.bucket, "run/") == []
    secrets_absent(s3, done.stdout, done.stderr)
    assert "x" * 40 not in done.stderr and "AKNOTAKEY0000000" not in done.stderr


def test_keys_revoked_mid_run_stop_the_run_as_misconfigured_storage(s3_bucket: S3Server, job: Path,
                                                                    tmp_path: Path) -> None:
    """Training on when no checkpoint can ever be saved again only spends money: once S3 answers
    InvalidAccessKeyId (the key was deleted), the trainer stops at the next step with exit 3, which
    the runner does not retry, and says what to fix."""
    s3 = s3_bucket
    client = s3.client()
    revoked = threading.Event()
    with FaultProxy(s3.endpoint, lambda _n, _m, _p: "revoked" if revoked.is_set() else None) as proxy:
        log = tmp_path / "trainer.log"
        trainer = start_trainer(job, f"s3://{s3.bucket}/run", "--cache-dir", str(tmp_path / "cache"),
                                env=s3.env(endpoint=proxy.url), log_path=log)
        try:
            wait_for(lambda: get(client, s3.bucket, "run/" + contract.LATEST + contract.CHECKSUM_SUFFIX)
                     or trainer.poll() is not None, timeout=180, what="a checkpoint in the bucket")
            revoked.set()
            code = trainer.wait(timeout=120)
        finally:
            if trainer.poll() is None:
                trainer.kill()
        denied = proxy.counts().get("revoked", 0)
    output = log.read_text()
    assert code == contract.EXIT_STORAGE, output[-4000:]
    assert denied >= 1
    assert "wrong credentials" in output
    assert not re.search(r"S3 retry: .*InvalidAccessKeyId", output), "a refusal is not worth retrying"
    assert output.count("status heartbeat") <= 1, "said once at most, not on every heartbeat"
    steps = [int(s) for s in re.findall(r"step (\d+)/\d+", output)]
    assert steps and max(steps) < FINAL_STEP, "it stopped instead of training on unsaved"
    assert get(client, s3.bucket, "run/final/model.safetensors") is None
    secrets_absent(s3, output)
