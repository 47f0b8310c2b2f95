"""What a supervisor elsewhere and the submitting machine exchange, all of it under
``<storage root>/_supervisor/`` (:func:`runner.remote.control_root`), with no port open anywhere:

- ``jobs/<job>/snapshot.json`` – the job's whole record (job, attempts, events, billing, the
  supervisor's own time): written by the submitting machine once (hand-over), then only by the
  supervisor that holds the job's lease, each time with "only if still the version I wrote", so a
  supervisor that lost the job can no longer write (or act: it writes before every launch and stop).
  The submitting machine imports it into its own state: ``status``, ``cost`` and ``logs`` read that.
- ``jobs/<job>/job.yaml`` – the job file as submitted (the trainer reads its copy in the image).
- ``jobs/<job>/lease.json`` – :mod:`runner.remote.lease`.
- ``jobs/<job>/commands/<id>.json`` – what the submitting machine asks (``cancel``, ``resume``);
  the supervisor answers in ``jobs/<job>/acks/<id>.json`` and deletes the command.
- ``supervisor.json`` – the supervisor process: where it runs, its rate, when it was last alive.
- ``owner`` – the id in the names of the pods the supervisors of this root create.

Nothing here holds a secret: the state never does, and the supervisor gets its credentials from
its own environment."""

from __future__ import annotations

import json
import secrets as token
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.remote import control_root
from runner.remote.store import Store, VersionConflict, open_store

if TYPE_CHECKING:
    from runner.state import JobRow

#: Columns of a job that belong to the machine holding the record (paths there, its own process lease).
LOCAL_COLUMNS = ("job_file", "workdir", "supervisor_pid", "supervisor_ident")
SUPERVISOR_KEY = "supervisor.json"
OWNER_KEY = "owner"


def snapshot_key(job_id: str) -> str:
    return f"jobs/{job_id}/snapshot.json"


def job_file_key(job_id: str) -> str:
    return f"jobs/{job_id}/job.yaml"


def command_key(job_id: str, command_id: str) -> str:
    return f"jobs/{job_id}/commands/{command_id}.json"


def ack_key(job_id: str, command_id: str) -> str:
    return f"jobs/{job_id}/acks/{command_id}.json"


def storage_root_of(job: JobRow) -> str:
    """The storage root a job's run lives under (its ``storage:``): the run URI less the job's own part."""
    parts = 2 if job.pipeline else 1
    return job.run_uri.rsplit("/", parts)[0]


def store_for(job: JobRow, environ: dict[str, str] | None = None) -> Store:
    return open_store(control_root(storage_root_of(job)), environ)


# --- snapshots ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    bundle: dict[str, Any]
    written: float
    session: str
    version: str

    @property
    def job_state(self) -> str:
        return str(self.bundle["job"]["state"])


def encode_snapshot(bundle: dict[str, Any], session: str) -> bytes:
    return json.dumps({"written": time.time(), "session": session, "bundle": bundle}, default=str).encode()


def read_snapshot(store: Store, job_id: str) -> Snapshot | None:
    got = store.get(snapshot_key(job_id))
    if got is None:
        return None
    doc = json.loads(got[0])
    return Snapshot(doc["bundle"], float(doc.get("written") or 0), str(doc.get("session") or ""), got[1])


# --- commands -----------------------------------------------------------------------------------------
def send(store: Store, job_id: str, kind: str, **args: Any) -> str:
    """Ask the job's supervisor to do ``kind`` (cancel, resume); the command's id."""
    command_id = f"{time.time_ns()}-{token.token_hex(3)}"
    store.put(command_key(job_id, command_id), json.dumps({"id": command_id, "kind": kind, "args": args,
                                                           "sent": time.time()}).encode(), if_absent=True)
    return command_id


def pending(store: Store, job_id: str, keys: list[str] | None = None) -> list[dict[str, Any]]:
    """The job's commands not answered yet, oldest first (``keys``: a listing already made)."""
    prefix = f"jobs/{job_id}/commands/"
    listed = keys if keys is not None else store.list(prefix)
    found = (store.get(key) for key in sorted(k for k in listed if k.startswith(prefix)))
    return [json.loads(got[0]) for got in found if got is not None]


def answer(store: Store, job_id: str, command: dict[str, Any], ok: bool, message: str) -> None:
    store.put(ack_key(job_id, command["id"]), json.dumps({"id": command["id"], "kind": command["kind"], "ok": ok,
                                                          "message": message, "answered": time.time()}).encode())
    store.delete(command_key(job_id, command["id"]))


def wait_answer(store: Store, job_id: str, command_id: str, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = store.get(ack_key(job_id, command_id))
        if got is not None:
            return json.loads(got[0])
        time.sleep(0.5)
    return None


# --- the supervisor process's own record ----------------------------------------------------------------
def read_supervisor(store: Store) -> dict[str, Any] | None:
    got = store.get(SUPERVISOR_KEY)
    return json.loads(got[0]) if got else None


def supervisor_alive(record: dict[str, Any] | None, term: float) -> bool:
    """True when the record says a supervisor is running and it wrote within a lease term (its clock:
    a supervisor rewrites it every few seconds, so a skew of minutes would still tell a dead one)."""
    return bool(record) and not record.get("stopped") and time.time() - float(record.get("seen") or 0) < max(3 * term, 60)


def owner(store: Store) -> str:
    """The id in the names of this root's supervisors' pods: made once, the same for every supervisor
    after it, so that one started after another was killed finds that one's pods by name."""
    got = store.get(OWNER_KEY)
    if got is not None:
        return got[0].decode().strip()
    fresh = token.token_hex(4)
    try:
        store.put(OWNER_KEY, fresh.encode(), if_absent=True)
        return fresh
    except VersionConflict:
        got = store.get(OWNER_KEY)
        assert got is not None
        return got[0].decode().strip()
