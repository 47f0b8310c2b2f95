"""The background launcher of a --detach submit is recorded on its job: a state file written before the
launcher's columns existed (version 5, the remote supervisor's) opens with them added, and the launcher
holds the job's lease so that no `watch` launches the job a second time meanwhile."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from runner import proc
from runner import state as st
from runner.state import State
from tests.fixtures.jobs import job_spec


def test_a_version_5_state_file_gets_the_launcher_columns(runner_home: Path):
    runner_home.mkdir(parents=True)
    db = sqlite3.connect(runner_home / "state.db")
    db.executescript(st._SCHEMA)
    for table, column, declaration in st._ADDED_COLUMNS:
        if not column.startswith("launcher_"):
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    db.execute("PRAGMA user_version=5")
    db.commit()
    db.close()

    state = State.open()
    assert state.db.execute("PRAGMA user_version").fetchone()[0] == st.SCHEMA_VERSION == 6
    row = state.create_job(id="q-1", name="q", job_file="/q.yaml", job_sha256="0", spec=job_spec(), workdir="/",
                           backend="local", run_uri="/r")
    assert (row.launcher_pid, row.launching_in_background()) == (None, False)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state.hand_to_launcher(row.id, child.pid, proc.identity(child.pid), "/state/background/q-1.log")
        job = state.job(row.id)
        assert job.launching_in_background() and job.supervised()  # the launcher holds the lease
        assert not state.acquire(row.id, *proc.me())  # so a `watch` here leaves it alone
        assert [e.kind for e in state.events(row.id)] == ["submitted", "background"]
    finally:
        child.kill()
        child.wait()
    assert not state.job(row.id).launching_in_background()
    assert state.acquire(row.id, *proc.me())  # once it is gone, watch takes the job over
    state.close()
