"""Conditional writes on a real S3 server (SeaweedFS on loopback): what leases and snapshots rely on.
If-None-Match: * creates only what is absent, If-Match: <ETag> replaces only the version read, and of
writers racing for one key exactly one wins."""

from __future__ import annotations

import threading
import time

import pytest

from runner.remote.lease import Leases
from runner.remote.store import S3Store, StoreError, VersionConflict, open_store
from tests.fixtures.jobs import wait_for
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.integration


@pytest.fixture
def store(s3_bucket: S3Server) -> S3Store:
    found = open_store(f"s3://{s3_bucket.bucket}/runs/_supervisor", s3_bucket.env())
    assert isinstance(found, S3Store)
    return found


def test_conditional_writes_are_honoured(store: S3Store, s3_bucket: S3Server):
    store.check_conditional()  # the probe: a second create-if-absent is refused
    first = store.put("jobs/a/lease.json", b"1", if_absent=True)
    with pytest.raises(VersionConflict):
        store.put("jobs/a/lease.json", b"2", if_absent=True)
    second = store.put("jobs/a/lease.json", b"3", if_version=first)
    with pytest.raises(VersionConflict):
        store.put("jobs/a/lease.json", b"4", if_version=first)
    with pytest.raises(VersionConflict):
        store.put("jobs/missing.json", b"4", if_version=second)
    assert store.get("jobs/a/lease.json") == (b"3", second)
    assert store.get("jobs/missing.json") is None
    # Under the prefix asked for, nowhere else.
    raw = s3_bucket.client().get_object(Bucket=s3_bucket.bucket, Key="runs/_supervisor/jobs/a/lease.json")
    assert raw["Body"].read() == b"3"
    assert store.list("jobs/") == ["jobs/a/lease.json"]
    store.delete("jobs/a/lease.json")
    assert store.list("jobs/") == []


def test_of_writers_racing_for_a_key_exactly_one_wins(store: S3Store):
    for round_ in range(10):
        key = f"race/{round_}"
        wins: list[str] = []
        start = threading.Barrier(4)

        def create(name: str, key: str, wins: list[str], start: threading.Barrier) -> None:
            start.wait()
            try:
                store.put(key, name.encode(), if_absent=True)
                wins.append(name)
            except VersionConflict:
                pass

        threads = [threading.Thread(target=create, args=(n, key, wins, start)) for n in "abcd"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(wins) == 1, wins
        assert store.get(key)[0] == wins[0].encode()


def test_a_store_that_ignores_conditions_is_refused(s3_bucket: S3Server):
    class Careless(S3Store):  # drops the conditions, as a store without conditional writes does
        def put(self, key: str, data: bytes, *, if_absent: bool = False, if_version: str | None = None) -> str:
            return super().put(key, data)

    with pytest.raises(StoreError, match="one supervisor acts on a job at a time"):
        Careless(f"s3://{s3_bucket.bucket}/x", s3_bucket.env()).check_conditional()


def test_wrong_credentials_are_said(s3_bucket: S3Server):
    store = open_store(f"s3://{s3_bucket.bucket}/x", s3_bucket.env(AWS_SECRET_ACCESS_KEY="wrong"))
    with pytest.raises(StoreError, match="x"):
        store.check_conditional()


def test_leases_on_s3_one_holder_then_takeover_after_a_term(store: S3Store):
    term = 1.5
    a, b = Leases(store, "a", "host a", term), Leases(store, "b", "host b", term)
    assert a.take("job-1")
    assert not b.take("job-1")
    a.start()
    try:  # while a renews, b never gets it
        deadline = time.monotonic() + 2 * term
        while time.monotonic() < deadline:
            assert not b.take("job-1")
            time.sleep(0.1)
    finally:
        a.stop()  # a dies: no more renewals, no release
    started = time.monotonic()
    wait_for(lambda: b.take("job-1"), timeout=10, interval=0.05, what="b to take the lease over")
    assert time.monotonic() - started >= term * 0.5  # not before a's last renewal had a whole term to run
    assert not a.holds("job-1") and not a.renew("job-1")
    assert b.read("job-1")["place"] == "host b"
