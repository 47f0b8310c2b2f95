"""The runner's memory: a SQLite database (WAL) of jobs, attempts, events and billing segments.

Intent is written before it is acted on (an attempt row exists before its process or pod is
launched), so a runner killed at any instant and started again finds what it was doing and
adopts it instead of launching a duplicate. A job is supervised by one runner process at a time:
the supervisor's pid and start time are its lease, and a dead holder's lease can be taken over.

Nothing here holds a secret value: job files with credentials in them are refused before they get
here, and text from the trainer is redacted by the supervisor before it is recorded."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import paths, proc

if TYPE_CHECKING:
    from runner.spec import JobSpec

# --- job states ------------------------------------------------------------------------------------
PENDING = "pending"  # written, no attempt launched yet
RUNNING = "running"  # an attempt is launching or running
WAITING = "waiting"  # between attempts: relaunching after a preemption, or backing off after a failure
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
OVER_BUDGET = "over_budget"  # stopped with an emergency checkpoint; resumable with a larger budget
ACTIVE_STATES = (PENDING, RUNNING, WAITING)
FINAL_STATES = (DONE, FAILED, CANCELLED, OVER_BUDGET)

# --- attempt states --------------------------------------------------------------------------------
LAUNCHING = "launching"  # intent recorded; the backend may or may not have started it yet
ATTEMPT_RUNNING = "running"
ENDED = "ended"

SCHEMA_VERSION = 6  # 5: supervision elsewhere; 6: the background launcher of --detach
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    job_file TEXT NOT NULL,
    job_sha256 TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    workdir TEXT NOT NULL,
    backend TEXT NOT NULL,
    run_uri TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL,
    step INTEGER NOT NULL DEFAULT 0,
    max_steps INTEGER NOT NULL DEFAULT 0,
    preemptions INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    next_launch_at REAL NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    supervisor_pid INTEGER,
    supervisor_ident TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created);
CREATE TABLE IF NOT EXISTS attempts (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    number INTEGER NOT NULL,
    backend TEXT NOT NULL,
    state TEXT NOT NULL,
    gpu TEXT,
    gpu_count INTEGER NOT NULL DEFAULT 1,
    spot INTEGER NOT NULL DEFAULT 0,
    rate_per_hour REAL NOT NULL DEFAULT 0,
    handle_json TEXT,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    exit_code INTEGER,
    outcome TEXT,
    detail TEXT NOT NULL DEFAULT '',
    start_step INTEGER,
    end_step INTEGER,
    UNIQUE (job_id, number)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    attempt_id TEXT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);
CREATE TABLE IF NOT EXISTS billing_segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    attempt_id TEXT NOT NULL UNIQUE REFERENCES attempts(id),
    gpu TEXT,
    gpu_count INTEGER NOT NULL,
    spot INTEGER NOT NULL,
    rate_per_hour REAL NOT NULL,
    on_demand_rate_per_hour REAL NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    end_reason TEXT,
    source TEXT NOT NULL DEFAULT 'runner'
);
-- The time a supervisor elsewhere (a small always-on machine) spent on a job, at its share of that
-- machine's rate: one row per supervisor process and stretch of time it held the job with the same
-- number of other jobs. ``last_seen`` is when it last said it was alive: a process that was killed
-- is billed up to there.
CREATE TABLE IF NOT EXISTS supervisor_segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    session TEXT NOT NULL,
    place TEXT NOT NULL DEFAULT '',
    rate_per_hour REAL NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    last_seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS supervisor_segments_job ON supervisor_segments(job_id);
"""
#: Columns added after version 1, as (table, column, declaration). ``ALTER TABLE ADD COLUMN`` with a
#: default leaves every existing row valid, so a state file written by an older runner opens as it is;
#: an older runner ignores the columns it does not know.
_ADDED_COLUMNS = (
    # What the trainer's status.json said when the attempt ended: the step it had reached is end_step;
    # the last checkpoint it had written; when it started training and last beat (idle time is the rest).
    ("attempts", "last_checkpoint_step", "INTEGER"),
    ("attempts", "train_started", "REAL"),
    ("attempts", "train_ended", "REAL"),
    # The checkpoint stall the trainer measured in this attempt (median seconds, and how many checkpoints).
    ("attempts", "checkpoint_seconds", "REAL"),
    ("attempts", "checkpoints", "INTEGER"),
    # The interval passed to the trainer for `every_minutes: auto` (None: the job file's own).
    ("attempts", "checkpoint_every_minutes", "REAL"),
    # Disk billed while the attempt runs (container disk and volume), USD per hour.
    ("billing_segments", "storage_rate_per_hour", "REAL NOT NULL DEFAULT 0"),
    # Where rate_per_hour came from: 'catalog' (the price at launch), 'provider' (its billing record), 'local'.
    ("billing_segments", "rate_source", "TEXT NOT NULL DEFAULT 'catalog'"),
    # The provider's own billing record, once settled: compute and disk dollars (None: not settled).
    ("billing_segments", "provider_usd", "REAL"),
    ("billing_segments", "provider_storage_usd", "REAL"),
    # Seconds of the segment the trainer was training; the rest was billed idle (boot, image pull, load).
    ("billing_segments", "train_seconds", "REAL"),
    # A pipeline's stages are jobs of one pipeline id, started in the order they were recorded; each
    # stage's starting weights are {name: checkpoint URI}, resolved at submit.
    ("jobs", "pipeline", "TEXT"),
    ("jobs", "stage", "TEXT"),
    ("jobs", "inputs_json", "TEXT"),
    # Where the job is supervised: NULL (by `watch` on the machine it was submitted from), or 'docker' /
    # 'runpod' (a supervisor elsewhere, which the submitting machine reaches through the job's storage).
    ("jobs", "supervisor", "TEXT"),
    # For a job supervised elsewhere: the image its pods run, resolved (built, pushed) at submit, as JSON
    # [image reference, path of the job file in the image].
    ("jobs", "image_ref_json", "TEXT"),
    # The process that builds, pushes and launches a job submitted with --detach (pid and start time,
    # as for the lease), and its output, so `status`, `logs` and `watch` know of it (version 6).
    ("jobs", "launcher_pid", "INTEGER"),
    ("jobs", "launcher_ident", "TEXT"),
    ("jobs", "launcher_log", "TEXT"),
)


@dataclass
class JobRow:
    id: str
    name: str
    job_file: str
    job_sha256: str
    spec_json: str
    workdir: str
    backend: str
    run_uri: str
    state: str
    reason: str
    created: float
    updated: float
    finished: float | None
    step: int
    max_steps: int
    preemptions: int
    failures: int
    next_launch_at: float
    cancel_requested: int
    supervisor_pid: int | None
    supervisor_ident: str | None
    pipeline: str | None = None
    stage: str | None = None
    inputs_json: str | None = None
    supervisor: str | None = None
    image_ref_json: str | None = None

    @property
    def remote(self) -> bool:
        """True when a supervisor elsewhere (not a runner process of this machine) supervises the job."""
        return self.supervisor not in (None, "", "none")

    @property
    def image_ref(self) -> tuple[str, str] | None:
        """(image, job file's path in it), resolved at submit for a job supervised elsewhere."""
        return tuple(json.loads(self.image_ref_json)) if self.image_ref_json else None  # type: ignore[return-value]
    launcher_pid: int | None = None
    launcher_ident: str | None = None
    launcher_log: str | None = None

    @property
    def inputs(self) -> dict[str, str]:
        """A pipeline stage's starting weights: {name the recipe knows it by: checkpoint URI}."""
        return json.loads(self.inputs_json) if self.inputs_json else {}

    @cached_property
    def spec(self) -> JobSpec:
        """The validated job the user submitted (defaults included; a record is validated once)."""
        from runner.spec import JobSpec  # pydantic: only for the commands that need more than the table

        return JobSpec.from_record(self.spec_json)

    def wanted_gpus(self) -> list[str]:
        """The job's GPU list as submitted, read without validating the whole record, so that a table of
        thousands of jobs stays fast."""
        gpu = (json.loads(self.spec_json).get("resources") or {}).get("gpu")
        return [gpu] if isinstance(gpu, str) else list(gpu or [])

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def supervised(self) -> bool:
        """True while a live runner process holds this job's lease."""
        return proc.is_alive(self.supervisor_pid, self.supervisor_ident)

    def launching_in_background(self) -> bool:
        """True while the background process of a ``--detach`` submit (or resume) still works on the job."""
        return proc.is_alive(self.launcher_pid, self.launcher_ident)


@dataclass
class AttemptRow:
    id: str
    job_id: str
    number: int
    backend: str
    state: str
    gpu: str | None
    gpu_count: int
    spot: int
    rate_per_hour: float
    handle_json: str | None
    created: float
    started: float | None
    ended: float | None
    exit_code: int | None
    outcome: str | None
    detail: str
    start_step: int | None
    end_step: int | None
    last_checkpoint_step: int | None = None
    train_started: float | None = None
    train_ended: float | None = None
    checkpoint_seconds: float | None = None
    checkpoints: int | None = None
    checkpoint_every_minutes: float | None = None

    @property
    def handle(self) -> dict[str, Any] | None:
        return json.loads(self.handle_json) if self.handle_json else None


@dataclass
class EventRow:
    id: int
    job_id: str
    attempt_id: str | None
    time: float
    kind: str
    message: str


@dataclass
class SegmentRow:
    id: int
    job_id: str
    attempt_id: str
    gpu: str | None
    gpu_count: int
    spot: int
    rate_per_hour: float
    on_demand_rate_per_hour: float
    started: float
    ended: float | None
    end_reason: str | None
    source: str  # where started/ended come from: 'runner' (its own observation) or 'provider' (pod uptime)
    storage_rate_per_hour: float = 0.0
    rate_source: str = "catalog"
    provider_usd: float | None = None
    provider_storage_usd: float | None = None
    train_seconds: float | None = None

    def hours(self, now: float | None = None) -> float:
        end = self.ended if self.ended is not None else (now or time.time())
        return max(0.0, end - self.started) / 3600.0

    def cost(self, now: float | None = None) -> float:
        """Compute dollars: the provider's billed amount once settled, else billed hours x rate."""
        return self.provider_usd if self.provider_usd is not None else self.hours(now) * self.rate_per_hour

    def storage_cost(self, now: float | None = None) -> float:
        """Disk dollars: the provider's billed amount once settled, else billed hours x disk rate."""
        settled = self.provider_storage_usd
        return settled if settled is not None else self.hours(now) * self.storage_rate_per_hour

    def total_cost(self, now: float | None = None) -> float:
        return self.cost(now) + self.storage_cost(now)


@dataclass
class SupervisorSegmentRow:
    id: int
    job_id: str
    session: str
    place: str
    rate_per_hour: float
    started: float
    ended: float | None
    last_seen: float

    def hours(self, now: float | None = None, open_ok: bool = True) -> float:
        """Hours billed: to its end, or for one still open to now (its process is alive) or, when
        ``open_ok`` is false, to when its process was last seen."""
        end = self.ended if self.ended is not None else ((now or time.time()) if open_ok else self.last_seen)
        return max(0.0, end - self.started) / 3600.0

    def cost(self, now: float | None = None) -> float:
        return self.hours(now) * self.rate_per_hour


def _row(cls, r: sqlite3.Row):
    keys = r.keys()
    return cls(**{f.name: r[f.name] for f in fields(cls) if f.name in keys})


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _insert(db: sqlite3.Connection, table: str, row: dict[str, Any], upsert_key: str | None = None) -> None:
    """Insert ``row``'s values for the columns ``table`` has; with ``upsert_key``, over the row with that key."""
    known = _columns(db, table)
    values = {k: v for k, v in row.items() if k in known}
    sql = f"INSERT INTO {table} ({', '.join(values)}) VALUES ({','.join('?' * len(values))})"
    if upsert_key is not None:
        updates = ", ".join(f"{k} = excluded.{k}" for k in values if k != upsert_key)
        sql += f" ON CONFLICT({upsert_key}) DO UPDATE SET {updates}"
    db.execute(sql, tuple(values.values()))


def _add_columns(db: sqlite3.Connection) -> None:
    for table, column, declaration in _ADDED_COLUMNS:
        if column not in _columns(db, table):
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


class StateError(Exception):
    """A job reference that matches no job (or several)."""


class State:
    """One connection to the state database. Each method is its own transaction unless inside
    :meth:`transaction`."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves, so each transaction is exactly what we say.
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=30000")
        self._depth = 0
        if self.db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            with self.transaction() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                _add_columns(db)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @classmethod
    def open(cls, create: bool = True) -> State | None:
        """The user's state; with ``create=False``, None when there is none yet (read-only commands
        must not create files)."""
        path = paths.db_path()
        if not create and not path.exists():
            return None
        return cls(path)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: writers queue here, never half-way through)."""
        outermost = not self._depth  # a nested block is part of the transaction around it
        if outermost:
            self.db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield self.db
        except BaseException:
            if outermost:
                self.db.execute("ROLLBACK")
            raise
        else:
            if outermost:
                self.db.execute("COMMIT")
        finally:
            self._depth -= 1

    # --- jobs -------------------------------------------------------------------------------------
    def create_job(self, *, id: str, name: str, job_file: str, job_sha256: str, spec: JobSpec, workdir: str,
                   backend: str, run_uri: str, max_steps: int = 0, pipeline: str | None = None,
                   stage: str | None = None, inputs: dict[str, str] | None = None, supervisor: str | None = None,
                   image_ref: tuple[str, str] | None = None) -> JobRow:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, name, job_file, job_sha256, spec_json, workdir, backend, run_uri, state, created,"
                " updated, max_steps, pipeline, stage, inputs_json, supervisor, image_ref_json)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (id, name, job_file, job_sha256, spec.record(), workdir, backend, run_uri, PENDING,
                 now, now, max_steps, pipeline, stage, json.dumps(inputs) if inputs else None,
                 None if supervisor in (None, "none") else supervisor, json.dumps(list(image_ref)) if image_ref else None),
            )
            self.add_event(id, "submitted", f"{backend} backend, run {run_uri}")
        return self.job(id)

    def job(self, job_id: str) -> JobRow:
        r = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if r is None:
            raise StateError(f"no job {job_id!r}")
        return _row(JobRow, r)

    def find_job(self, ref: str) -> JobRow:
        """A job by id, by name (the newest job of that name), or by a unique prefix of its id."""
        ref = str(ref)
        r = self.db.execute("SELECT * FROM jobs WHERE id = ?", (ref,)).fetchone()
        if r is not None:
            return _row(JobRow, r)
        r = self.db.execute("SELECT * FROM jobs WHERE name = ? ORDER BY created DESC LIMIT 1", (ref,)).fetchone()
        if r is not None:
            return _row(JobRow, r)
        rows = self.db.execute("SELECT * FROM jobs WHERE id LIKE ? ESCAPE '\\' ORDER BY created DESC",
                               (ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",)).fetchall()
        if len(rows) == 1:
            return _row(JobRow, rows[0])
        if len(rows) > 1:
            ids = ", ".join(r["id"] for r in rows[:5])
            raise StateError(f"{ref!r} matches {len(rows)} jobs ({ids}{', …' if len(rows) > 5 else ''}); give more of the id")
        raise StateError(f"no job matches {ref!r}; `python -m runner list` shows them all")

    def jobs(self, *, active: bool | None = None, limit: int | None = None) -> list[JobRow]:
        sql = "SELECT * FROM jobs"
        if active is not None:
            sql += f" WHERE state {'' if active else 'NOT '}IN ({','.join('?' * len(ACTIVE_STATES))})"
        sql += " ORDER BY created DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        params = ACTIVE_STATES if active is not None else ()
        return [_row(JobRow, r) for r in self.db.execute(sql, params)]

    def pipeline_jobs(self, pipeline: str) -> list[JobRow]:
        """A pipeline's stages, in their order."""
        return [_row(JobRow, r) for r in
                self.db.execute("SELECT * FROM jobs WHERE pipeline = ? ORDER BY created, rowid", (pipeline,))]

    def find_pipeline(self, ref: str) -> list[JobRow]:
        """A pipeline's stages by its id or its job file's name (the newest); none when ``ref`` is neither."""
        stages = self.pipeline_jobs(str(ref))
        if stages:
            return stages
        newest = self.pipelines_named(str(ref))
        return self.pipeline_jobs(newest[0]) if newest else []

    def pipelines_named(self, name: str) -> list[str]:
        """Pipeline ids of a job file's name, newest first."""
        rows = self.db.execute("SELECT pipeline FROM jobs WHERE pipeline IS NOT NULL AND name LIKE ? GROUP BY pipeline"
                               " ORDER BY MAX(created) DESC", (f"{name}.%",))
        return [r[0] for r in rows]

    def count_jobs_by_state(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def update_job(self, job_id: str, **values: Any) -> None:
        values["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*values.values(), job_id))

    def set_job_state(self, job_id: str, state: str, reason: str, event: str | None = None,
                      attempt_id: str | None = None, **values: Any) -> None:
        """Change a job's state and record the transition as an event, in one transaction."""
        if state in FINAL_STATES:
            values.setdefault("finished", time.time())
        with self.transaction():
            self.update_job(job_id, state=state, reason=reason, **values)
            self.add_event(job_id, event or state, reason, attempt_id)

    def reopen(self, job_id: str, reason: str) -> None:
        """Make an ended job active again (``resume``): it relaunches from its last checkpoint, with
        its preemption count kept and its failure count cleared."""
        with self.transaction():
            self.set_job_state(job_id, WAITING, reason, "resumed", finished=None, failures=0, cancel_requested=0,
                               next_launch_at=0)

    def request_cancel(self, job_id: str) -> None:
        with self.transaction():
            self.update_job(job_id, cancel_requested=1)
            self.add_event(job_id, "cancel_requested", "cancel asked for")

    # --- the supervision lease ----------------------------------------------------------------------
    def acquire(self, job_id: str, pid: int, ident: str) -> bool:
        """Make this process the job's supervisor unless another live process already is."""
        with self.transaction():
            job = self.job(job_id)
            if job.supervisor_pid == pid and job.supervisor_ident == ident:
                return True
            if job.supervisor_pid and job.supervised():
                return False
            self.update_job(job_id, supervisor_pid=pid, supervisor_ident=ident)
            return True

    def hand_to_launcher(self, job_id: str, pid: int, ident: str | None, log: str) -> None:
        """A background process builds, pushes and launches the job: it is recorded as the job's launcher
        and holds its lease from now on (it takes it again itself when it starts), so no ``watch``
        launches the same job meanwhile."""
        with self.transaction():
            job = self.job(job_id)
            lease = {} if job.supervised() or ident is None else {"supervisor_pid": pid, "supervisor_ident": ident}
            self.update_job(job_id, launcher_pid=pid, launcher_ident=ident, launcher_log=log, **lease)
            self.add_event(job_id, "background", f"runner process {pid} builds, pushes and launches it in the "
                                                 f"background; its output: {log}")

    def release(self, job_id: str, pid: int, ident: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET supervisor_pid = NULL, supervisor_ident = NULL WHERE id = ? AND supervisor_pid = ?"
                       " AND supervisor_ident = ?", (job_id, pid, ident))

    # --- attempts ---------------------------------------------------------------------------------
    def add_attempt(self, job_id: str, *, backend: str, gpu: str | None, gpu_count: int, spot: bool,
                    start_step: int) -> AttemptRow:
        """Record the intent to launch the job's next attempt (before anything is launched)."""
        with self.transaction() as db:
            number = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE job_id = ?", (job_id,)).fetchone()[0]
            attempt_id = f"{job_id}-{number}"
            db.execute(
                "INSERT INTO attempts (id, job_id, number, backend, state, gpu, gpu_count, spot, created, start_step)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (attempt_id, job_id, number, backend, LAUNCHING, gpu, gpu_count, int(spot), time.time(), start_step),
            )
            self.update_job(job_id, state=RUNNING)
            self.add_event(job_id, "launching", f"attempt {number} on {backend}" + (f" ({gpu}, {'spot' if spot else 'on-demand'})" if gpu else ""),
                           attempt_id)
        return self.attempt(attempt_id)

    def attempt(self, attempt_id: str) -> AttemptRow:
        return _row(AttemptRow, self.db.execute("SELECT * FROM attempts WHERE id = ?", (attempt_id,)).fetchone())

    def attempts(self, job_id: str) -> list[AttemptRow]:
        return [_row(AttemptRow, r) for r in self.db.execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY number", (job_id,))]

    def attempt_counts(self, job_ids: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for i in range(0, len(job_ids), 500):  # stay under SQLite's limit on parameters
            chunk = job_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            counts.update(self.db.execute(f"SELECT job_id, COUNT(*) FROM attempts WHERE job_id IN ({marks}) GROUP BY job_id",
                                          chunk).fetchall())
        return counts

    def current_attempt(self, job_id: str) -> AttemptRow | None:
        """The attempt that is launching or running, if any."""
        r = self.db.execute("SELECT * FROM attempts WHERE job_id = ? AND state != ? ORDER BY number DESC LIMIT 1",
                            (job_id, ENDED)).fetchone()
        return _row(AttemptRow, r) if r else None

    def attempt_started(self, attempt: AttemptRow, handle: dict[str, Any], *, gpu: str | None, spot: bool,
                        rate_per_hour: float, on_demand_rate_per_hour: float, adopted: bool = False,
                        storage_rate_per_hour: float = 0.0, rate_source: str = "catalog",
                        checkpoint_every_minutes: float | None = None) -> None:
        """The backend launched (or found) the attempt: record its handle and open its billing segment."""
        now = time.time()
        with self.transaction() as db:
            db.execute("UPDATE attempts SET state = ?, handle_json = ?, started = COALESCE(started, ?), gpu = ?, spot = ?,"
                       " rate_per_hour = ?, checkpoint_every_minutes = COALESCE(?, checkpoint_every_minutes) WHERE id = ?",
                       (ATTEMPT_RUNNING, json.dumps(handle, sort_keys=True), now, gpu, int(spot), rate_per_hour,
                        checkpoint_every_minutes, attempt.id))
            db.execute("INSERT OR IGNORE INTO billing_segments (job_id, attempt_id, gpu, gpu_count, spot, rate_per_hour,"
                       " on_demand_rate_per_hour, started, storage_rate_per_hour, rate_source) VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (attempt.job_id, attempt.id, gpu, attempt.gpu_count, int(spot), rate_per_hour,
                        on_demand_rate_per_hour, now, storage_rate_per_hour, rate_source))
            where = handle.get("where", "")
            self.add_event(attempt.job_id, "adopted" if adopted else ("launched" if attempt.number == 1 else "relaunched"),
                           f"attempt {attempt.number}" + (f": {where}" if where else ""), attempt.id)

    def attempt_ended(self, attempt: AttemptRow, *, outcome: str, exit_code: int | None, detail: str,
                      end_step: int | None, last_checkpoint_step: int | None = None, train_started: float | None = None,
                      train_ended: float | None = None, checkpoint_seconds: float | None = None,
                      checkpoints: int | None = None) -> None:
        """Close the attempt and its billing segment. The optional values are what the trainer reported
        (status.json, TensorBoard) about this attempt: the report's lost work, idle time and the
        checkpoint interval are computed from them."""
        now = time.time()
        with self.transaction() as db:
            db.execute("UPDATE attempts SET state = ?, ended = ?, outcome = ?, exit_code = ?, detail = ?, end_step = ?,"
                       " last_checkpoint_step = ?, train_started = ?, train_ended = ?, checkpoint_seconds = ?,"
                       " checkpoints = ? WHERE id = ?",
                       (ENDED, now, outcome, exit_code, detail, end_step, last_checkpoint_step, train_started, train_ended,
                        checkpoint_seconds, checkpoints, attempt.id))
            train_seconds = None
            if train_started is not None and train_ended is not None:
                train_seconds = max(0.0, train_ended - train_started)
            db.execute("UPDATE billing_segments SET ended = ?, end_reason = ?, train_seconds = ? WHERE attempt_id = ?"
                       " AND ended IS NULL", (now, outcome, train_seconds, attempt.id))

    def settle_segment(self, attempt_id: str, *, started: float | None = None, ended: float | None = None,
                       usd: float | None = None, storage_usd: float | None = None,
                       rate_per_hour: float | None = None) -> None:
        """Replace the runner's own observation of an attempt's billing with the provider's record:
        its uptime (start, end), the rate it charged and the dollars it billed, for whichever it gives.
        ``usd`` is the whole bill (disk included) unless ``storage_usd`` gives the disk part apart."""
        with self.transaction() as db:
            seg = db.execute("SELECT * FROM billing_segments WHERE attempt_id = ?", (attempt_id,)).fetchone()
            if seg is None:
                return
            values: dict[str, Any] = {}
            if started is not None and ended is not None and ended >= started:
                values.update(started=started, ended=ended, source="provider")
            if rate_per_hour is None and usd is not None and started is not None and ended is not None and ended > started:
                rate_per_hour = usd / ((ended - started) / 3600.0)  # what it charged, per hour of its uptime
            if rate_per_hour is not None:
                values.update(rate_per_hour=rate_per_hour, rate_source="provider")
            if usd is not None:
                values.update(provider_usd=usd, provider_storage_usd=storage_usd or 0.0, rate_source="provider")
            if values:
                cols = ", ".join(f"{k} = ?" for k in values)
                db.execute(f"UPDATE billing_segments SET {cols} WHERE attempt_id = ?", (*values.values(), attempt_id))

    def raise_budget(self, job_id: str, max_usd: float) -> None:
        """Set a job's budget (``budget.max_usd`` of its recorded spec), e.g. to resume it after it ran out."""
        from runner.spec import Budget

        with self.transaction():
            spec = self.job(job_id).spec
            old = spec.budget.max_usd if spec.budget else None
            self.update_job(job_id, spec_json=spec.model_copy(update={"budget": Budget(max_usd=max_usd)}).record())
            self.add_event(job_id, "budget_raised", f"budget ${old:.2f} → ${max_usd:.2f}" if old is not None
                           else f"budget set to ${max_usd:.2f}")

    # --- events -----------------------------------------------------------------------------------
    def add_event(self, job_id: str, kind: str, message: str = "", attempt_id: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO events (job_id, attempt_id, time, kind, message) VALUES (?,?,?,?,?)",
                       (job_id, attempt_id, time.time(), kind, message))

    def events(self, job_id: str, after_id: int = 0, limit: int | None = None) -> list[EventRow]:
        if limit:
            rows = self.db.execute("SELECT * FROM (SELECT * FROM events WHERE job_id = ? AND id > ? ORDER BY id DESC LIMIT ?)"
                                   " ORDER BY id", (job_id, after_id, limit))
        else:
            rows = self.db.execute("SELECT * FROM events WHERE job_id = ? AND id > ? ORDER BY id", (job_id, after_id))
        return [_row(EventRow, r) for r in rows]

    # --- billing ----------------------------------------------------------------------------------
    def segments(self, job_id: str | None = None) -> list[SegmentRow]:
        rows = self.db.execute("SELECT * FROM billing_segments WHERE ? IS NULL OR job_id = ? ORDER BY started",
                               (job_id, job_id))
        return [_row(SegmentRow, r) for r in rows]

    def spent(self, job_id: str, now: float | None = None) -> float:
        """Dollars billed so far for the job: compute and disk, and its share of a supervisor elsewhere."""
        return (sum(s.total_cost(now) for s in self.segments(job_id))
                + sum(s.cost(now) for s in self.supervisor_segments(job_id)))

    # --- a supervisor elsewhere: its time on each job, and the job's record as it travels ------------
    def supervisor_segments(self, job_id: str) -> list[SupervisorSegmentRow]:
        return [_row(SupervisorSegmentRow, r) for r in
                self.db.execute("SELECT * FROM supervisor_segments WHERE job_id = ? ORDER BY started, id", (job_id,))]

    def open_supervisor_segment(self, job_id: str, session: str, place: str, rate_per_hour: float,
                                now: float | None = None) -> None:
        now = now or time.time()
        with self.transaction() as db:
            db.execute("INSERT INTO supervisor_segments (job_id, session, place, rate_per_hour, started, last_seen)"
                       " VALUES (?,?,?,?,?,?)", (job_id, session, place, rate_per_hour, now, now))

    def close_supervisor_segments(self, *, session: str | None = None, job_id: str | None = None,
                                  others_than: str | None = None, now: float | None = None) -> None:
        """End open segments: this ``session``'s (of one job, or all), or every other session's of
        ``job_id`` (``others_than``: processes that are gone, billed up to when they were last seen)."""
        now = now or time.time()
        with self.transaction() as db:
            if others_than is not None:
                db.execute("UPDATE supervisor_segments SET ended = last_seen WHERE ended IS NULL AND session != ?"
                           " AND job_id = ?", (others_than, job_id))
                return
            db.execute("UPDATE supervisor_segments SET ended = ?, last_seen = ? WHERE ended IS NULL AND session = ?"
                       " AND (? IS NULL OR job_id = ?)", (now, now, session, job_id, job_id))

    def touch_supervisor_segments(self, session: str, now: float | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE supervisor_segments SET last_seen = ? WHERE ended IS NULL AND session = ?",
                       (now or time.time(), session))

    def remote_jobs(self, active: bool = True) -> list[JobRow]:
        """Jobs supervised elsewhere (``active``: only those not ended yet)."""
        sql = "SELECT * FROM jobs WHERE supervisor IS NOT NULL AND supervisor != 'none'"
        if active:
            sql += f" AND state IN ({','.join('?' * len(ACTIVE_STATES))})"
        return [_row(JobRow, r) for r in self.db.execute(sql + " ORDER BY created", ACTIVE_STATES if active else ())]

    def job_bundle(self, job_id: str) -> dict[str, Any]:
        """Everything recorded of one job, as plain data: what a supervisor elsewhere and the submitting
        machine exchange (:mod:`runner.remote.control`). No secret is in it: the state holds none."""
        def rows(sql: str) -> list[dict[str, Any]]:
            return [dict(r) for r in self.db.execute(sql, (job_id,))]

        job = rows("SELECT * FROM jobs WHERE id = ?")
        if not job:
            raise StateError(f"no job {job_id!r}")
        return {"job": job[0], "attempts": rows("SELECT * FROM attempts WHERE job_id = ? ORDER BY number"),
                "events": rows("SELECT * FROM events WHERE job_id = ? ORDER BY id"),
                "billing_segments": rows("SELECT * FROM billing_segments WHERE job_id = ? ORDER BY id"),
                "supervisor_segments": rows("SELECT * FROM supervisor_segments WHERE job_id = ? ORDER BY id")}

    def load_bundle(self, bundle: dict[str, Any], keep: tuple[str, ...] = (), **job_values: Any) -> None:
        """Replace one job's record by ``bundle`` (from :meth:`job_bundle` of another state), in one
        transaction. The job columns named in ``keep`` stay as they are here when the job exists; ``job_values``
        are set over the bundle's. Columns this version does not know are left out."""
        job = dict(bundle["job"])
        job_id = job["id"]
        with self.transaction() as db:
            mine = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if mine is not None:
                job.update({k: mine[k] for k in keep})
            job.update(job_values)
            _insert(db, "jobs", job, upsert_key="id")
            db.execute("DELETE FROM billing_segments WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM supervisor_segments WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            for attempt in bundle.get("attempts", []):
                _insert(db, "attempts", attempt, upsert_key="id")
            for table in ("events", "billing_segments", "supervisor_segments"):
                for row in bundle.get(table, []):
                    _insert(db, table, {k: v for k, v in row.items() if k != "id"})

    # --- what earlier attempts measured (estimates, cost advice, reconciling pods) -----------------------
    def preemption_exposure(self, gpu: str | None, spot: bool, backend: str | None, now: float) -> tuple[int, float]:
        """(preemptions, machine seconds) of every attempt on ``gpu``, spot or not (on ``backend``)."""
        row = self.db.execute(
            "SELECT COUNT(CASE WHEN a.outcome = 'interrupted' THEN 1 END),"
            " SUM(MAX(0, COALESCE(b.ended, ?) - b.started)) FROM billing_segments b JOIN attempts a ON a.id = b.attempt_id"
            " WHERE b.gpu IS ? AND b.spot = ? AND (? IS NULL OR a.backend = ?)",
            (now, gpu, int(spot), backend, backend)).fetchone()
        return int(row[0] or 0), float(row[1] or 0.0)

    def checkpoint_stalls_of(self, job_name: str) -> list[tuple[str | None, float, int]]:
        """(gpu, median checkpoint seconds, checkpoints) of each earlier attempt of jobs named ``job_name``."""
        return [tuple(r) for r in self.db.execute(
            "SELECT a.gpu, a.checkpoint_seconds, a.checkpoints FROM attempts a JOIN jobs j ON j.id = a.job_id"
            " WHERE j.name = ? AND a.checkpoint_seconds IS NOT NULL AND a.checkpoints > 0", (job_name,))]

    def training_pace(self, job_name: str, backend: str, gpu: str | None) -> tuple[float, int] | None:
        """(seconds, steps) trained by earlier attempts of jobs named ``job_name`` on this backend and GPU:
        training time when the trainer reported it, else the attempt's time. None when none trained."""
        row = self.db.execute(
            "SELECT SUM(COALESCE(a.train_ended - a.train_started, a.ended - a.started)), SUM(a.end_step - a.start_step)"
            " FROM attempts a JOIN jobs j ON j.id = a.job_id"
            " WHERE j.name = ? AND a.backend = ? AND a.gpu IS ? AND a.ended IS NOT NULL AND a.started IS NOT NULL"
            " AND a.end_step > a.start_step", (job_name, backend, gpu)).fetchone()
        if not row or not row[1]:
            return None
        return float(row[0]), int(row[1])

    def launch_delays(self, backend: str, gpu: str | None) -> list[float]:
        """Billed seconds from launch to training of every earlier attempt on this backend and GPU."""
        return [r[0] for r in self.db.execute(
            "SELECT a.train_started - b.started FROM attempts a JOIN billing_segments b ON b.attempt_id = a.id"
            " WHERE a.backend = ? AND a.gpu IS ? AND a.train_started IS NOT NULL", (backend, gpu))
            if r[0] is not None and r[0] >= 0]

    def attempt_and_job_state(self, attempt_id: str) -> tuple[str, str | None, str, str] | None:
        """(attempt state, its outcome, its job's state, the job id), or None for no such attempt."""
        row = self.db.execute("SELECT a.state AS attempt_state, a.outcome, j.state AS job_state, j.id AS job_id"
                              " FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.id = ?", (attempt_id,)).fetchone()
        return None if row is None else (row["attempt_state"], row["outcome"], row["job_state"], row["job_id"])

