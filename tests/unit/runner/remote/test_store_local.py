"""The folder store: the same conditional-write contract as S3, under a lock file, with real processes
racing on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runner.remote.store import LocalStore, Store, StoreError, VersionConflict, open_store


def test_create_only_if_absent_and_replace_only_the_version_read(tmp_path: Path):
    store = LocalStore(tmp_path / "control")
    first = store.put("jobs/a/lease.json", b"1", if_absent=True)
    with pytest.raises(VersionConflict):
        store.put("jobs/a/lease.json", b"2", if_absent=True)
    assert store.get("jobs/a/lease.json") == (b"1", first)
    second = store.put("jobs/a/lease.json", b"3", if_version=first)
    with pytest.raises(VersionConflict):  # the version read before is stale now
        store.put("jobs/a/lease.json", b"4", if_version=first)
    with pytest.raises(VersionConflict):  # nothing there to be at that version
        store.put("jobs/b/lease.json", b"4", if_version=second)
    assert store.get("jobs/a/lease.json") == (b"3", second)
    assert store.list("jobs/") == ["jobs/a/lease.json"]
    store.delete("jobs/a/lease.json")
    store.delete("jobs/a/lease.json")  # a missing key is fine
    assert store.get("jobs/a/lease.json") is None
    store.check_conditional()


def test_a_key_cannot_leave_the_folder(tmp_path: Path):
    with pytest.raises(StoreError, match="leaves"):
        LocalStore(tmp_path / "control").put("../outside", b"x")


def test_a_store_that_ignores_conditions_is_refused(tmp_path: Path):
    class Careless(LocalStore):  # overwrites whatever it is told: what a store without conditional writes does
        def put(self, key: str, data: bytes, *, if_absent: bool = False, if_version: str | None = None) -> str:
            return super().put(key, data)

    with pytest.raises(StoreError, match="one supervisor acts on a job at a time"):
        Careless(tmp_path / "control").check_conditional()


RACE = """
import sys
from pathlib import Path
from runner.remote.store import LocalStore, VersionConflict
store = LocalStore(Path(sys.argv[1]))
won = 0
for i in range(40):
    try:
        store.put(f"race/{i}", sys.argv[2].encode(), if_absent=True)
        won += 1
    except VersionConflict:
        pass
print(won)
"""


def test_processes_racing_to_create_each_key_one_wins(tmp_path: Path):
    root = tmp_path / "control"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(root), name], stdout=subprocess.PIPE, text=True)
             for name in ("a", "b", "c")]
    wins = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(wins) == 40
    store = LocalStore(root)
    assert len(store.list("race/")) == 40


def test_open_store_picks_by_uri(tmp_path: Path):
    assert isinstance(open_store(str(tmp_path / "x")), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path / 'y'}"), Store)
    with pytest.raises(StoreError, match="s3://"):
        open_store("gs://bucket/prefix")
    with pytest.raises(StoreError, match="no S3 credentials"):
        open_store("s3://bucket/prefix", {})
