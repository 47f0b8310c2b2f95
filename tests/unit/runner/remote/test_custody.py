"""A supervisor's custody of jobs, on real SQLite states and a real (folder) store: a job handed over
is found and imported; taking it writes its snapshot; a process whose snapshot was overwritten by
another stops acting; commands are obeyed and answered; the submitting machine's record follows the
snapshots and keeps its own paths; the supervisor's rate is split over the jobs it holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import state as st
from runner.remote import control
from runner.remote.client import refresh
from runner.remote.daemon import RemoteCustody
from runner.remote.lease import Leases
from runner.remote.store import LocalStore
from runner.supervisor import CustodyLost
from tests.fixtures.jobs import job_spec


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "storage"


def submit(laptop: st.State, root: Path, job_id: str) -> st.JobRow:
    """What `submit` records and hands over for a job supervised on Docker."""
    row = laptop.create_job(id=job_id, name="quick", job_file="/laptop/jobs/q.yaml", job_sha256="0" * 64,
                            spec=job_spec({"name": "quick"}), workdir="/laptop", backend="runpod",
                            run_uri=f"{root}/{job_id}", max_steps=10, supervisor="docker",
                            image_ref=("registry.example/img:1", "/app/jobs/q.yaml"))
    store = control.store_for(row)
    store.put(control.job_file_key(job_id), b"name: quick\n")
    store.put(control.snapshot_key(job_id), control.encode_snapshot(laptop.job_bundle(job_id), "submit"), if_absent=True)
    return row


def supervisor(tmp_path: Path, root: Path, session: str, rate: float = 0.5) -> RemoteCustody:
    state = st.State(tmp_path / f"{session}.db")
    store = LocalStore(root / "_supervisor")
    return RemoteCustody(state, store, Leases(store, session, session, term=30), session=session, place=session,
                         rate_per_hour=rate, environ={})


def test_a_handed_over_job_is_found_taken_and_its_record_travels_back(tmp_path, root):
    laptop = st.State(tmp_path / "laptop.db")
    submit(laptop, root, "quick-1")
    sup = supervisor(tmp_path, root, "s1")
    assert sup.round({}) and sup.candidates() == ["quick-1"]
    assert sup.take(sup.state.job("quick-1"))
    job = sup.state.job("quick-1")
    assert Path(job.job_file).read_bytes() == b"name: quick\n" and job.image_ref == ("registry.example/img:1", "/app/jobs/q.yaml")
    sup.state.add_event("quick-1", "launching", "attempt 1 on runpod")
    sup.flush("quick-1", force=True)

    assert refresh(laptop) == []
    mine = laptop.job("quick-1")
    assert mine.job_file == "/laptop/jobs/q.yaml" and mine.workdir == "/laptop"  # its own paths stay
    assert [e.kind for e in laptop.events("quick-1")][-1] == "launching"
    [segment] = laptop.supervisor_segments("quick-1")
    assert segment.session == "s1" and segment.rate_per_hour == 0.5
    assert laptop.spent("quick-1") >= 0.0


def test_a_supervisor_whose_record_was_overwritten_stops_acting(tmp_path, root):
    laptop = st.State(tmp_path / "laptop.db")
    submit(laptop, root, "quick-1")
    sup = supervisor(tmp_path, root, "s1")
    sup.round({})
    assert sup.take(sup.state.job("quick-1"))
    # Another supervisor took the job over (its lease ran out, say) and wrote the record.
    sup.store.put(control.snapshot_key("quick-1"), control.encode_snapshot(laptop.job_bundle("quick-1"), "s2"))
    with pytest.raises(CustodyLost):
        sup.flush("quick-1", force=True)  # what comes before every launch and stop
    sup.round({})
    assert not sup.holds("quick-1")


def test_cancel_is_obeyed_and_answered(tmp_path, root):
    laptop = st.State(tmp_path / "laptop.db")
    row = submit(laptop, root, "quick-1")
    sup = supervisor(tmp_path, root, "s1")
    sup.round({})
    assert sup.take(sup.state.job("quick-1"))
    store = control.store_for(row)
    command = control.send(store, "quick-1", "cancel")
    sup.next_look = 0
    sup.round({})
    assert sup.state.job("quick-1").cancel_requested == 1
    answer = control.wait_answer(store, "quick-1", command, timeout=5)
    assert answer["ok"] and "cancel requested" in answer["message"]
    assert control.pending(store, "quick-1") == []
    refresh(laptop)
    assert "cancel_requested" in [e.kind for e in laptop.events("quick-1")]


def test_the_rate_is_split_over_the_jobs_held(tmp_path, root):
    laptop = st.State(tmp_path / "laptop.db")
    submit(laptop, root, "quick-1")
    submit(laptop, root, "quick-2")
    sup = supervisor(tmp_path, root, "s1", rate=0.6)
    sup.round({})
    assert sup.take(sup.state.job("quick-1"))
    assert sup.take(sup.state.job("quick-2"))
    open_rates = {j: [s.rate_per_hour for s in sup.state.supervisor_segments(j) if s.ended is None] for j in ("quick-1", "quick-2")}
    assert open_rates == {"quick-1": [0.3], "quick-2": [0.3]}
    sup.give_back("quick-2")
    assert [s.rate_per_hour for s in sup.state.supervisor_segments("quick-1") if s.ended is None] == [0.6]
    assert all(s.ended is not None for s in sup.state.supervisor_segments("quick-2"))
    lease = json.loads(sup.store.get("jobs/quick-2/lease.json")[0])
    assert lease["released"]


def test_a_killed_supervisors_time_is_billed_to_when_it_was_last_seen(tmp_path, root):
    laptop = st.State(tmp_path / "laptop.db")
    submit(laptop, root, "quick-1")
    first = supervisor(tmp_path, root, "s1")
    first.round({})
    assert first.take(first.state.job("quick-1"))
    first.flush("quick-1", force=True)
    first.leases.release("quick-1")  # as if its lease had run out after it died
    second = supervisor(tmp_path, root, "s2")
    second.round({})
    assert second.take(second.state.job("quick-1"))
    segments = second.state.supervisor_segments("quick-1")
    old = [s for s in segments if s.session == "s1"]
    assert old and all(s.ended is not None and s.ended == s.last_seen for s in old)
    assert [s.session for s in segments if s.ended is None] == ["s2"]
