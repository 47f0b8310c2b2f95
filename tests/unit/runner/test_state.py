"""The state database: a real SQLite file in a temp dir, and real processes for the lease."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import proc
from runner import state as st
from runner.state import State, StateError
from tests.fixtures.jobs import job_spec


def new_job(state: State, job_id: str, name: str = "quick") -> st.JobRow:
    return state.create_job(id=job_id, name=name, job_file="/jobs/q.yaml", job_sha256="0" * 64, spec=job_spec({"name": name}),
                            workdir="/", backend="local", run_uri=f"/runs/{job_id}", max_steps=10)


def test_wal_and_nothing_created_by_readers(runner_home: Path):
    assert State.open(create=False) is None
    assert not runner_home.exists()
    state = State.open()
    assert state.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (runner_home / "state.db").exists()


def test_find_job_by_id_name_and_prefix(runner_home: Path):
    state = State.open()
    new_job(state, "quick-aaa111")
    time.sleep(0.01)  # created timestamps must differ for "newest"
    new_job(state, "quick-aab222")
    new_job(state, "other-ccc333", name="other")
    assert state.find_job("quick-aaa111").id == "quick-aaa111"
    assert state.find_job("quick").id == "quick-aab222"  # a name: its newest job
    assert state.find_job("oth").id == "other-ccc333"  # a unique prefix
    with pytest.raises(StateError, match="matches 2 jobs"):
        state.find_job("quick-aa")
    with pytest.raises(StateError, match="no job matches"):
        state.find_job("nothing")


def test_attempt_intent_then_start_then_end_with_billing(runner_home: Path):
    state = State.open()
    job = new_job(state, "quick-1")
    attempt = state.add_attempt(job.id, backend="local", gpu=None, gpu_count=1, spot=False, start_step=0)
    assert (attempt.id, attempt.state) == ("quick-1-1", st.LAUNCHING)
    assert state.current_attempt(job.id).id == attempt.id
    assert state.job(job.id).state == st.RUNNING
    state.attempt_started(attempt, {"pid": 1}, gpu="rtx3090", spot=True, rate_per_hour=3600.0, on_demand_rate_per_hour=7200.0)
    state.db.execute("UPDATE billing_segments SET started = started - 2")  # two seconds ago
    assert 1.9 < state.spent(job.id) < 3.0  # $1 per second, still running
    state.attempt_ended(state.attempt(attempt.id), outcome="interrupted", exit_code=75, detail="", end_step=5)
    assert state.current_attempt(job.id) is None
    (segment,) = state.segments(job.id)
    assert segment.ended is not None and segment.end_reason == "interrupted"
    spent = state.spent(job.id)
    time.sleep(0.05)
    assert state.spent(job.id) == spent  # a closed segment stops counting
    assert state.add_attempt(job.id, backend="local", gpu=None, gpu_count=1, spot=False, start_step=5).id == "quick-1-2"
    assert [e.kind for e in state.events(job.id)] == ["submitted", "launching", "launched", "launching"]


def test_lease_belongs_to_one_live_process(runner_home: Path):
    state = State.open()
    job = new_job(state, "quick-1")
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        ident = proc.identity(other.pid)
        assert state.acquire(job.id, other.pid, ident)
        me = proc.me()
        assert not state.acquire(job.id, *me), "a live supervisor keeps its job"
        assert state.job(job.id).supervised()
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    assert not state.job(job.id).supervised()
    assert state.acquire(job.id, *me), "a dead supervisor's job can be taken over"
    state.release(job.id, *me)
    assert state.job(job.id).supervisor_pid is None


def test_final_state_records_finish_time_and_event(runner_home: Path):
    state = State.open()
    job = new_job(state, "quick-1")
    state.set_job_state(job.id, st.DONE, "final weights in /runs/quick-1/final", "done")
    row = state.job(job.id)
    assert row.state == st.DONE and row.finished and not row.active
    assert state.events(job.id)[-1].kind == "done"
    assert [j.id for j in state.jobs(active=True)] == []
