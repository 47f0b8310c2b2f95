"""CheckpointManager on S3: a newer checkpoint supersedes a pending upload, flush keeps its
deadline when the store stalls, and a resume from the bucket falls back past a corrupt file."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.fixtures.faultproxy import FaultProxy, no_faults, once
from tests.fixtures.jobs import wait_for
from tests.fixtures.s3 import S3Server
from trainer import contract
from trainer.checkpoint import CheckpointManager
from trainer.config import Checkpoint
from trainer.storage_s3 import S3Storage

POLICY = Checkpoint(every_steps=1, every_minutes=None, keep_last=2)


@pytest.fixture
def proxy(env: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(env.endpoint, stall_s=60) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", p.url)
        yield p


def state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"step": step, "model": {"w": torch.randn(256, 256, generator=g)}}


def manager(env: S3Server, cache: Path, **kw) -> CheckpointManager:
    storage = S3Storage(f"s3://{env.bucket}/run", work_dir=cache, backoff_initial=0.05, **kw)
    return CheckpointManager(storage, POLICY)


def test_a_newer_checkpoint_supersedes_one_still_waiting(env: S3Server, proxy: FaultProxy, tmp_path: Path) -> None:
    # The first upload stalls until the read timeout: the writer is busy while three more come in.
    proxy.plan = once("stall", lambda method, path: method == "PUT" and "step-000000001.pt" in path)
    mgr = manager(env, tmp_path / "cache", read_timeout=2.0)
    stalls = [mgr.save(1, state(1))]
    # Only once the writer is stuck in step 1's upload is "newer wins" what decides 2, 3 and 4;
    # before that, step 1 itself could be superseded on a busy machine.
    wait_for(lambda: any(m == "PUT" and "step-000000001.pt" in t for _, m, t in list(proxy.seen)),
             timeout=30, what="step 1's upload to start")
    for step in (2, 3, 4):
        stalls.append(mgr.save(step, state(step)))
    assert mgr.flush(timeout=60), mgr.last_error
    assert mgr.superseded == 2  # 2 and 3 were replaced before the writer got to them
    uploaded = {target.split("?")[0].rsplit("/", 1)[-1] for _, method, target in proxy.seen if method == "PUT"}
    assert "step-000000001.pt" in uploaded and "step-000000004.pt" in uploaded
    assert not {"step-000000002.pt", "step-000000003.pt"} & uploaded  # never uploaded at all
    assert max(stalls) < 1.0  # the stalled upload never held up save()
    assert mgr.storage.list("checkpoints/") == [
        "checkpoints/latest.pt", "checkpoints/latest.pt.sha256",
        "checkpoints/step-000000001.pt", "checkpoints/step-000000001.pt.sha256",
        "checkpoints/step-000000004.pt", "checkpoints/step-000000004.pt.sha256"]
    proxy.plan = no_faults
    mgr.close()
    resumed = manager(env, tmp_path / "new-machine").load()
    assert resumed is not None and resumed[0]["step"] == 4 and resumed[1] == contract.LATEST
    assert torch.equal(resumed[0]["model"]["w"], state(4)["model"]["w"])


def test_flush_and_close_keep_their_deadline_when_the_store_stalls(env: S3Server, proxy: FaultProxy,
                                                                   tmp_path: Path) -> None:
    """SIGTERM on a spot machine: the emergency flush has a deadline, and a store that stopped
    answering must not turn it into an unbounded wait."""
    mgr = manager(env, tmp_path / "cache", read_timeout=30.0, max_attempts=2)
    proxy.plan = lambda n, method, path: "stall"
    mgr.save(1, state(1))
    t0 = time.monotonic()
    assert mgr.flush(timeout=1.0) is False
    assert time.monotonic() - t0 < 3
    t1 = time.monotonic()
    assert mgr.close() is False  # no second, unlimited wait
    assert time.monotonic() - t1 < 7  # at most the writer thread's join grace
    assert proxy.counts()["stall"] >= 1


def save_steps(env: S3Server, cache: Path, *steps: int) -> None:
    """Checkpoints of ``steps``, each durable before the next, by a manager that is then closed."""
    mgr = manager(env, cache)
    for step in steps:
        mgr.save(step, state(step))
        assert mgr.flush(timeout=60)
    mgr.close()


def test_a_new_machine_falls_back_past_corrupt_checkpoints(env: S3Server, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    save_steps(env, tmp_path / "cache", 1, 2)
    client = env.client()
    # Bytes that do not match their checksum, as a torn or damaged upload would leave them.
    client.put_object(Bucket=env.bucket, Key="run/" + contract.LATEST, Body=b"not a checkpoint")
    found = manager(env, tmp_path / "machine-b").load()
    assert found is not None and found[1] == contract.step_checkpoint(2) and found[0]["step"] == 2
    assert "skipping checkpoints/latest.pt: its bytes do not match its checksum" in caplog.text

    client.put_object(Bucket=env.bucket, Key="run/" + contract.step_checkpoint(2), Body=b"\0" * 100)
    found = manager(env, tmp_path / "machine-c").load()
    assert found is not None and found[1] == contract.step_checkpoint(1) and found[0]["step"] == 1
    # Nothing of the failed downloads is left in the cache.
    assert not [p for p in (tmp_path / "machine-c").rglob("*") if p.is_file()]


def test_a_resume_downloads_latest_once_while_it_lists_and_reads_the_record(env: S3Server, proxy: FaultProxy,
                                                                            tmp_path: Path) -> None:
    """latest.pt is fetched alongside the list and its checksum record (two requests that are a fair share of a
    resume on a fast link), and those prefetched bytes are the ones loaded: it crosses the network once."""
    save_steps(env, tmp_path / "cache", 1, 2)
    first = len(proxy.seen)
    found = manager(env, tmp_path / "machine-b").load()
    assert found is not None and found[1] == contract.LATEST and found[0]["step"] == 2
    assert torch.equal(found[0]["model"]["w"], state(2)["model"]["w"])
    resume = proxy.seen[first:]
    whole_gets = [n for n, method, target in resume
                  if method == "GET" and target.split("?")[0].endswith("/" + contract.LATEST) and n not in proxy.ranges]
    assert len(whole_gets) == 1, resume
    assert any(method == "GET" and "list-type" in target for _n, method, target in resume), resume


def test_prefetched_bytes_that_are_not_the_records_are_never_loaded(env: S3Server, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The prefetch is checked against the record read after it: bytes that are not the record's are dropped and
    latest.pt read again, so a checkpoint written meanwhile (or a torn one) is never loaded unverified."""
    caplog.set_level(logging.INFO, logger="trainer")
    save_steps(env, tmp_path / "cache", 1, 2)
    client = env.client()
    record_key = "run/" + contract.LATEST + contract.CHECKSUM_SUFFIX
    record = client.get_object(Bucket=env.bucket, Key=record_key)["Body"].read()
    # latest.pt holds step 1's bytes while its record names step 2's: what a prefetch that raced a writer sees.
    client.copy_object(Bucket=env.bucket, Key="run/" + contract.LATEST,
                       CopySource={"Bucket": env.bucket, "Key": "run/" + contract.step_checkpoint(1)})
    client.put_object(Bucket=env.bucket, Key=record_key, Body=record)
    found = manager(env, tmp_path / "machine-b").load()
    assert found is not None and found[0]["step"] == 2 and found[1] == contract.step_checkpoint(2)
    assert "changed while it was prefetched" in caplog.text
    assert "skipping checkpoints/latest.pt: its bytes do not match its checksum" in caplog.text  # read again: the same
