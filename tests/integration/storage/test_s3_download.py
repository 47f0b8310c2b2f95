"""Downloads from S3 (trainer/s3_download.py) against a real server: one stream and no HEAD on a
fast link, parallel ranged GETs where each connection is limited, every byte right either way, a
replaced object read again from the start, and a corrupt checkpoint caught after a ranged download."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import xxhash

from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.s3 import S3Server
from tests.fixtures.throttle import throttled
from trainer import contract
from trainer.checkpoint import CheckpointManager
from trainer.config import Checkpoint
from trainer.storage_s3 import S3Storage

pytestmark = pytest.mark.integration

MiB = 1 << 20
#: Per connection: slow enough that one stream is clearly the limit, fast enough for a short test.
MBPS = 10


def storage(env: S3Server, cache: Path, **kw) -> S3Storage:
    return S3Storage(f"s3://{env.bucket}/run", work_dir=cache, backoff_initial=0.05, **kw)


@pytest.fixture
def slow_link(env: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The bucket behind a relay that limits each connection to MBPS MB/s, as the trainer's endpoint."""
    with throttled(env.endpoint, MBPS) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
        yield url


def put(env: S3Server, key: str, data: bytes) -> None:
    env.client().put_object(Bucket=env.bucket, Key=f"run/{key}", Body=data)


def test_a_fast_link_gets_one_stream_and_no_head(env: S3Server, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(9 * MiB + 17)
    put(env, "checkpoints/latest.pt", data)
    with FaultProxy(env.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        s = storage(env, tmp_path)
        got = s.get_in_memory("checkpoints/latest.pt", xxhash.xxh3_128)
        assert got is not None
        mem, fetched = got
        try:
            assert bytes(mem.buffer) == data
        finally:
            mem.close()
        assert (fetched.size, fetched.digest) == (len(data), xxhash.xxh3_128(data).hexdigest())
        assert (fetched.streams, fetched.ranged_parts) == (1, 0)
        assert [(m, proxy.ranges.get(n)) for n, m, _ in proxy.seen] == [("GET", None)]  # no HEAD, no range
        assert s.get_in_memory("checkpoints/missing.pt") is None
        assert not list(tmp_path.rglob("*.tmp"))


def test_a_per_connection_limit_gets_parallel_ranges(env: S3Server, slow_link: str, tmp_path: Path) -> None:
    """At MBPS per connection one stream takes size/MBPS seconds. Ranged GETs for the end of the
    object, added once the first stream has been measured, finish in well under the time of one
    stream, and every byte is in its place (ranges land out of order; the hash is over the bytes
    in order)."""
    size = 40 * MiB + 5
    data = os.urandom(size)
    put(env, "data.bin", data)

    # Limited to one stream, the download takes what the link gives one connection.
    t0 = time.monotonic()
    one = storage(env, tmp_path, concurrency=1).get_file_hashed("data.bin", tmp_path / "one.bin")
    one_stream = time.monotonic() - t0
    assert one is not None and (one.streams, one.ranged_parts) == (1, 0)
    assert one_stream > 0.9 * size / (MBPS * 1e6)
    assert (tmp_path / "one.bin").read_bytes() == data

    t0 = time.monotonic()
    got = storage(env, tmp_path).get_file_hashed("data.bin", tmp_path / "out.bin", hashlib.sha256)
    took = time.monotonic() - t0
    assert got is not None and got.digest == hashlib.sha256(data).hexdigest() and got.size == size
    assert (tmp_path / "out.bin").read_bytes() == data
    assert got.streams >= 4 and got.ranged_parts >= got.streams - 1, got
    assert took < 0.85 * one_stream, (took, one_stream, got)  # ~0.45 on a quiet machine


class _CountingSlots(threading.Semaphore):
    """The storage's budget of added streams, counting how many are held at once."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.lock, self.held, self.most = threading.Lock(), 0, 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        ok = super().acquire(blocking, timeout)
        if ok:
            with self.lock:
                self.held += 1
                self.most = max(self.most, self.held)
        return ok

    def release(self, n: int = 1) -> None:
        with self.lock:
            self.held -= n
        super().release(n)


def test_downloads_at_once_share_the_streams_they_may_add(env: S3Server, slow_link: str, tmp_path: Path) -> None:
    """Files fetched at once (a dataset) add streams from one budget, concurrency - 1 in all, so the
    connections stay within what the client's pool holds; every stream gives its slot back."""
    data = {f"f{i}.bin": os.urandom(24 * MiB) for i in range(2)}
    for key, body in data.items():
        put(env, key, body)
    s = storage(env, tmp_path, concurrency=4)
    s._stream_slots = slots = _CountingSlots(3)
    with ThreadPoolExecutor(2) as pool:
        got = dict(zip(data, pool.map(lambda k: s.get_file_hashed(k, tmp_path / k), data), strict=True))
    for key, body in data.items():
        assert (tmp_path / key).read_bytes() == body and got[key] is not None
    assert slots.most >= 1 and slots.held == 0, (slots.most, slots.held, got)
    assert all(1 <= g.streams <= 4 for g in got.values() if g is not None), got


def test_an_object_replaced_during_the_download_is_read_again(env: S3Server, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The first GET is cut short; before its retry (a ranged GET of the rest, If-Match the first
    ETag) the object is replaced: the rest must not be taken from the new version."""
    old, new = os.urandom(6 * MiB), os.urandom(7 * MiB)
    put(env, "checkpoints/latest.pt", old)
    gets = []

    def plan(number: int, method: str, path: str) -> str | None:
        if method != "GET" or "latest.pt" not in path:
            return None
        gets.append(number)
        if len(gets) == 1:
            return "truncate"
        if len(gets) == 2:
            put(env, "checkpoints/latest.pt", new)  # lands before this request reaches the server
        return None

    with FaultProxy(env.endpoint, plan) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        got = storage(env, tmp_path).get_in_memory("checkpoints/latest.pt", hashlib.sha256)
        assert got is not None
        mem, fetched = got
        try:
            assert bytes(mem.buffer) == new
        finally:
            mem.close()
        assert fetched.digest == hashlib.sha256(new).hexdigest() and fetched.size == len(new)
        # Cut, then the rest refused (412: another version), then the new version from the start.
        assert [proxy.ranges.get(n, "whole") for n in gets][::2] == ["whole", "whole"], proxy.ranges
        assert proxy.ranges.get(gets[1], "").startswith("bytes="), proxy.ranges


def test_a_corrupt_checkpoint_is_caught_after_a_ranged_download(env: S3Server, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """One flipped byte near the end of latest.pt (the part a ranged GET brings) is caught by the
    checksum; the resume falls back to the previous checkpoint, whose tensors come back exact."""
    policy = Checkpoint(every_steps=1, every_minutes=None, keep_last=2)
    states = {}
    writer = CheckpointManager(storage(env, tmp_path / "writer"), policy)
    for step in (1, 2):
        g = torch.Generator().manual_seed(step)
        states[step] = {"step": step, "model": {"w": torch.randn(2048, 1536, generator=g)}}  # 12 MiB
        writer.save(step, states[step])
        assert writer.flush(timeout=60)
    assert writer.close()
    client = env.client()
    for key in (contract.LATEST, contract.step_checkpoint(2)):  # the same bytes: the newest is torn
        data = bytearray(client.get_object(Bucket=env.bucket, Key=f"run/{key}")["Body"].read())
        data[len(data) - 3 * MiB] ^= 0x10
        put(env, key, bytes(data))

    with throttled(env.endpoint, 8) as url:  # 1.6 s for one stream: long enough to add more
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
        caplog.set_level("INFO", logger="trainer")
        found = CheckpointManager(storage(env, tmp_path / "machine-b"), policy).load()
    assert found is not None and found[1] == contract.step_checkpoint(1)
    assert torch.equal(found[0]["model"]["w"], states[1]["model"]["w"])
    assert "skipping checkpoints/latest.pt: its bytes do not match its checksum (xxh3_128" in caplog.text
    downloads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("downloaded ")]
    assert any("ranged GETs" in line and ", 0 ranged" not in line for line in downloads), downloads
    assert not [p for p in (tmp_path / "machine-b").rglob("*") if p.is_file()]  # nothing left on disk
