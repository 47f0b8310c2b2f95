"""S3Storage against a real SeaweedFS, directly and through the fault-injecting proxy."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.faultproxy import FaultProxy, every, no_faults, once
from tests.fixtures.s3 import S3Server
from trainer.storage import StorageError
from trainer.storage_s3 import MiB, S3Storage, StorageUnavailable


@pytest.fixture
def proxy(env: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(env.endpoint, stall_s=30) as p:
        yield p


def make_storage(server: S3Server, tmp: Path, endpoint: str | None = None, prefix: str = "run", **kw) -> S3Storage:
    if endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint  # restored by monkeypatch in `env`
    # Small parts so that a few MiB exercise multipart uploads and ranged reads.
    kw = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB, "concurrency": 4, "read_timeout": 2.0,
          "backoff_initial": 0.05, "backoff_max": 0.5, **kw}
    return S3Storage(f"s3://{server.bucket}/{prefix}", work_dir=tmp / "cache", **kw)


def random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "trainer" and "S3 retry" in r.getMessage()]


def test_round_trip(env: S3Server, tmp_path: Path) -> None:
    s = make_storage(env, tmp_path)
    s.check()
    assert s.list("") == []  # the write probe of check() is gone
    s.put_bytes("status.json", b'{"state": "running"}')
    assert s.get_bytes("status.json") == b'{"state": "running"}'
    assert s.get_bytes("missing.json") is None
    assert s.get_file("checkpoints/missing.pt", tmp_path / "x") is False and not (tmp_path / "x").exists()

    small = tmp_path / "small.txt"
    small.write_bytes(b"log line\n" * 1000)
    s.put_file(small, "logs/trainer.log")
    assert s.get_file_sha256("logs/trainer.log", tmp_path / "dl" / "trainer.log") == (  # one GET
        hashlib.sha256(small.read_bytes()).hexdigest(), small.stat().st_size)
    assert (tmp_path / "dl" / "trainer.log").read_bytes() == small.read_bytes()

    big = tmp_path / "big.pt"
    digest = random_file(big, 17 * MiB + 123)  # 4 parts, the last one short
    s.put_file(big, "checkpoints/step-000000010.pt", sha256=digest, move=True)
    assert not big.exists()  # move: the staged file is consumed
    raw = env.client().head_object(Bucket=env.bucket, Key="run/checkpoints/step-000000010.pt")
    assert raw["ContentLength"] == 17 * MiB + 123 and raw["Metadata"] == {"sha256": digest}

    s.copy("checkpoints/step-000000010.pt", "checkpoints/latest.pt")
    assert s.head("checkpoints/latest.pt")["Metadata"] == {"sha256": digest}  # server-side copy keeps it
    out = tmp_path / "restore" / "latest.pt"
    assert s.get_file_sha256("checkpoints/latest.pt", out) == (digest, 17 * MiB + 123)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert [p.name for p in out.parent.iterdir()] == ["latest.pt"]  # no temp file left beside it

    assert s.list("checkpoints/") == ["checkpoints/latest.pt", "checkpoints/step-000000010.pt"]
    assert s.list("") == ["checkpoints/latest.pt", "checkpoints/step-000000010.pt", "logs/trainer.log",
                          "status.json"]
    s.delete("checkpoints/step-000000010.pt")
    s.delete("checkpoints/step-000000010.pt")  # a missing key is not an error
    assert s.list("checkpoints/") == ["checkpoints/latest.pt"]
    assert env.client().list_multipart_uploads(Bucket=env.bucket).get("Uploads", []) == []


def test_list_is_paginated(env: S3Server, tmp_path: Path) -> None:
    s = make_storage(env, tmp_path)
    keys = [f"logs/{i:03d}.txt" for i in range(7)]
    for k in keys:
        s.put_bytes(k, b"x")
    s.put_bytes("other/a", b"y")
    pages = []
    original = s.client.list_objects_v2

    def small_pages(**kw):  # the real call, asking for pages of 3 keys
        page = original(**{**kw, "MaxKeys": 3})
        pages.append(page["KeyCount"])
        return page

    s.client.list_objects_v2 = small_pages
    assert s.list("logs/") == keys
    assert pages == [3, 3, 1]


def test_sync_dir_uploads_what_changed(env: S3Server, tmp_path: Path) -> None:
    s = make_storage(env, tmp_path)
    tb = tmp_path / "tb"
    (tb / "sub").mkdir(parents=True)
    (tb / "events.1").write_bytes(b"a" * 10)
    (tb / "sub" / "events.2").write_bytes(b"b")
    (tb / ".hidden.tmp").write_bytes(b"partial")
    assert s.sync_dir(tb, "tensorboard") == 2
    assert s.sync_dir(tb, "tensorboard") == 0
    with open(tb / "events.1", "ab") as f:
        f.write(b"more")
    assert s.sync_dir(tb, "tensorboard") == 1
    assert s.get_bytes("tensorboard/events.1") == b"a" * 10 + b"more"
    assert s.list("tensorboard/") == ["tensorboard/events.1", "tensorboard/sub/events.2"]


@pytest.mark.parametrize("kind", ["slowdown", "drop", "drop_after", "stall"])
def test_a_fault_costs_one_logged_retry(env: S3Server, proxy: FaultProxy, tmp_path: Path, kind: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    s = make_storage(env, tmp_path, proxy.url, read_timeout=1.0)
    proxy.plan = once(kind, lambda method, path: method == "PUT" and "status.json" in path)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="trainer"):
        s.put_bytes("status.json", b"v1")
    assert proxy.counts() == {kind: 1}
    assert s.retries == 1
    lines = retry_lines(caplog)
    assert len(lines) == 1 and "put status.json" in lines[0], lines
    assert env.client().get_object(Bucket=env.bucket, Key="run/status.json")["Body"].read() == b"v1"
    if kind == "stall":  # the read timeout, not the proxy's 30 s stall, ended the wait
        assert time.monotonic() - t0 < 10


def test_a_truncated_download_is_retried(env: S3Server, proxy: FaultProxy, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    s = make_storage(env, tmp_path, proxy.url)
    s.put_bytes("status.json", b"x" * 100_000)
    proxy.plan = once("truncate", lambda method, path: method == "GET" and "status.json" in path)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert s.get_bytes("status.json") == b"x" * 100_000
    assert proxy.counts() == {"truncate": 1} and s.retries == 1 and len(retry_lines(caplog)) == 1


def test_multipart_transfers_survive_faults_part_by_part(env: S3Server, proxy: FaultProxy, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Every 3rd request fails in some way; each failure costs one retry of one part, never a torn object."""
    s = make_storage(env, tmp_path, proxy.url, read_timeout=3.0)
    src = tmp_path / "state.pt"
    digest = random_file(src, 23 * MiB)  # 5 parts
    proxy.plan = every(3, ["slowdown", "drop", "drop_after", "truncate", "stall"])
    with caplog.at_level(logging.WARNING, logger="trainer"):
        s.put_file(src, "checkpoints/latest.pt", sha256=digest)
    injected = sum(proxy.counts().values())
    assert injected >= 2, proxy.injected
    part_faults = [i for i in proxy.injected if "partNumber" in i.path]
    assert part_faults, "no fault hit a part; the test would prove nothing"
    # Parts were retried on their own: the upload was never started over.
    starts = [target for _, method, target in proxy.seen if method == "POST" and target.endswith("?uploads")]
    assert len(starts) == 1, starts

    # The download: cut short twice (half of what was asked each time), then throttled once. Each
    # retry asks only for the bytes not yet received, and the hash over them is still the file's.
    cuts = iter(["truncate", "truncate", "slowdown"])
    proxy.plan = lambda n, method, path: next(cuts, None) if method == "GET" else None
    before = len(proxy.seen)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        out = tmp_path / "back.pt"
        assert s.get_file_sha256("checkpoints/latest.pt", out) == (digest, 23 * MiB)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    # No HEAD: the whole object, then after each failure only what had not arrived (a cut connection
    # loses what was still in flight, so a retry starts at or before the cut, never at 0 again).
    gets = [(m, proxy.ranges.get(n)) for n, m, _ in proxy.seen[before:]]
    assert [m for m, _ in gets] == ["GET"] * 4 and gets[0][1] is None, gets
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for _, r in gets[1:]]
    assert all(r.endswith(f"-{23 * MiB - 1}") for _, r in gets[1:]), gets
    assert 0 < starts[0] < starts[1] == starts[2], gets
    # Every fault cost a retry (a slow part on a busy machine may add one), each one logged.
    injected = sum(proxy.counts().values())
    assert s.retries >= injected and len(retry_lines(caplog)) == s.retries
    proxy.plan = no_faults
    assert env.client().list_multipart_uploads(Bucket=env.bucket).get("Uploads", []) == []


def test_a_lost_complete_response_is_not_a_failure(env: S3Server, proxy: FaultProxy, tmp_path: Path) -> None:
    """CompleteMultipartUpload reached the server but its answer was lost: the retry must see the
    object is ours and succeed, not fail on NoSuchUpload."""
    s = make_storage(env, tmp_path, proxy.url)
    src = tmp_path / "state.pt"
    digest = random_file(src, 11 * MiB)
    proxy.plan = once("drop_after", lambda method, path: method == "POST" and "uploadId=" in path)
    s.put_file(src, "checkpoints/latest.pt", sha256=digest)
    assert proxy.counts() == {"drop_after": 1} and s.retries == 1
    out = tmp_path / "back.pt"
    assert s.get_file("checkpoints/latest.pt", out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


def test_persistent_throttling_ends_in_unavailable(env: S3Server, proxy: FaultProxy, tmp_path: Path) -> None:
    s = make_storage(env, tmp_path, proxy.url, max_attempts=3)
    proxy.plan = lambda n, method, path: "slowdown"
    with pytest.raises(StorageUnavailable, match="SlowDown"):
        s.put_bytes("status.json", b"x")
    assert proxy.counts() == {"slowdown": 3} and s.retries == 2


def test_permanent_errors_are_not_retried(env: S3Server, proxy: FaultProxy, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    wrong_bucket = S3Storage("s3://no-such-bucket-here/run", work_dir=tmp_path / "c1")
    with pytest.raises(StorageError, match="wrong or missing bucket"):
        wrong_bucket.put_bytes("status.json", b"x")
    assert wrong_bucket.retries == 0

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong_secret = make_storage(env, tmp_path, proxy.url)
    with pytest.raises(StorageError) as info:
        wrong_secret.check()
    assert "wrong credentials: AWS_SECRET_ACCESS_KEY does not match" in str(info.value)
    assert wrong_secret.retries == 0 and proxy.requests == 1
    assert "not-the-secret" not in str(info.value) and env.access_key not in str(info.value)


def test_check_names_an_unreachable_endpoint_quickly(env: S3Server, tmp_path: Path) -> None:
    closed = FaultProxy(env.endpoint)  # bound and closed again: a port nobody listens on
    closed.close()
    s = make_storage(env, tmp_path, closed.url)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="unreachable endpoint"):
        s.check()
    assert time.monotonic() - t0 < 15


def test_an_empty_object_does_not_stall_the_next_request(env: S3Server, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """An empty log or dataset file is stored like any other. SeaweedFS (Go's HTTP server) answers an
    empty PUT at once, without a "100 Continue"; a client that sent ``Expect: 100-continue`` anyway then
    hung on its next request over that connection until the read timeout, and sent it again."""
    caplog.set_level(logging.INFO, logger="trainer")
    s = make_storage(env, tmp_path, read_timeout=5.0, max_attempts=1)
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    for put_empty in (lambda: s.put_bytes("empty.json", b""), lambda: s.put_file(empty, "logs/empty.log")):
        put_empty()
        # The same pooled connection; one attempt, so a stall until the read timeout fails here.
        s.put_bytes("status.json", b'{"state": "running"}')
    assert retry_lines(caplog) == []
    assert s.get_bytes("empty.json") == b"" and s.get_bytes("logs/empty.log") == b""
