"""Leases on a real (folder) store with short terms: one holder at a time, taken over only after a whole
term without renewal as the taker measures it, and the old holder stops counting itself the holder
before that."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runner.remote.lease import LEASE_USE, Leases
from runner.remote.store import LocalStore
from tests.fixtures.jobs import wait_for

TERM = 0.6


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "control")


def test_one_holder_at_a_time_and_a_release_frees_it_at_once(store):
    a, b = Leases(store, "a", term=TERM), Leases(store, "b", term=TERM)
    assert a.take("job") and a.holds("job")
    assert not b.take("job") and not b.holds("job")
    assert a.read("job")["holder"] == "a"
    a.release("job")
    assert not a.holds("job")
    assert b.take("job") and b.holds("job")


def test_a_dead_holder_is_taken_over_after_a_term_and_never_overlaps(store):
    a, b = Leases(store, "a", term=TERM), Leases(store, "b", term=TERM)
    assert a.take("job")
    first_look = time.monotonic()
    assert not b.take("job")  # b starts its clock at this version
    # a stops renewing (it died); a counts itself holder for LEASE_USE of a term only
    wait_for(lambda: not a.holds("job"), timeout=5, interval=0.01, what="a to stop counting itself the holder")
    a_stopped = time.monotonic()
    took = wait_for(lambda: b.take("job") and time.monotonic(), timeout=5, interval=0.01, what="b to take it")
    assert took - first_look >= TERM  # a whole term without renewal, as b measured it
    assert a_stopped < took
    assert not a.renew("job") and not a.holds("job")  # a finds it taken and lets it go
    assert b.read("job")["holder"] == "b" and b.read("job")["generation"] == 2


def test_renewal_keeps_the_lease_and_a_stuck_loop_loses_it(store):
    alive = [True]
    a, b = Leases(store, "a", term=TERM), Leases(store, "b", term=TERM)
    a.start(alive=lambda: alive[0])
    try:
        assert a.take("job")
        deadline = time.monotonic() + 4 * TERM
        while time.monotonic() < deadline:
            assert not b.take("job") and a.holds("job")
            time.sleep(TERM / 10)
        alive[0] = False  # the supervisor's loop is stuck: renewals stop
        wait_for(lambda: b.take("job"), timeout=5, interval=0.02, what="b to take over from a stuck holder")
        assert not a.holds("job")
    finally:
        a.stop()


def test_the_holder_counts_itself_holder_only_within_its_share_of_the_term(store):
    a = Leases(store, "a", term=TERM)
    assert a.take("job")
    time.sleep(LEASE_USE * TERM + 0.05)
    assert not a.holds("job")
    assert a.renew("job") and a.holds("job")  # nobody took it meanwhile: renewing makes it hold again
