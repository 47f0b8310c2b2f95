"""The submitting machine's side of a job supervised elsewhere: hand it over at submit (and start its
supervisor), keep this machine's record of it up to date from its snapshots (``status``, ``cost``,
``logs`` read that record as for any job), and ask for a cancel or a resume through command objects.
Nothing here needs a port open on either side: everything goes through the job's storage."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runner.action_error import ActionError
from runner.remote import control, control_root, control_seconds, lease_seconds
from runner.remote.store import StoreError, open_store

if TYPE_CHECKING:
    from runner.state import JobRow, State

#: How long ``cancel`` waits for the supervisor's answer and for the job to end, beyond its own grace.
CANCEL_WAIT_SECONDS = 120.0


def prepare(spec_job: Any, environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """What must hold before a job is recorded for a supervisor elsewhere: its storage honours conditional
    writes, and the image its pods (and the supervisor) run is in a registry. (image, job file's path in it)."""
    from runner.backends.base import BackendError

    root = spec_job.storage_root
    try:
        open_store(control_root(root), dict(environ)).check_conditional()
    except StoreError as e:
        raise ActionError(f"supervisor: {e}\nNothing was launched.") from None
    try:
        return resolve_image(spec_job)
    except BackendError as e:
        raise ActionError(f"{e}\nNothing was launched.") from None


def resolve_image(spec_job: Any) -> tuple[str, str]:
    """The job's image as its pods will pull it (built and pushed now when the job builds one)."""
    from runner.backends.docker_image import ensure_image

    settings = spec_job.spec.image
    client = None
    if not settings.name and settings.push_to:  # only a build needs a Docker engine here
        from runner.backends import docker_client

        client = docker_client.connect()
    ref = ensure_image(client, spec_job.path, settings, registry_required=True)
    return ref.name, ref.job_path


def hand_over(state: State, rows: list[JobRow], spec_job: Any, environ: Mapping[str, str] = os.environ) -> str:
    """Put the jobs just recorded (one, or a pipeline's stages) where their supervisor finds them, and make
    sure one runs. Where it runs, in words."""
    from runner.remote.place import PlaceError, ensure_up
    from runner.state import PENDING

    on = rows[0].supervisor
    job_text = spec_job.path.read_bytes()
    for row in rows:
        state.set_job_state(row.id, PENDING, f"handed over to its supervisor on {on}", "handed_over")
        store = control.store_for(row, dict(environ))
        store.put(control.job_file_key(row.id), job_text)
        store.put(control.snapshot_key(row.id), control.encode_snapshot(state.job_bundle(row.id), "submit"),
                  if_absent=True)
    image = rows[0].image_ref[0] if rows[0].image_ref else None
    try:
        started = ensure_up(on, spec_job.storage_root, image, environ, list(spec_job.spec.secrets))
    except PlaceError as e:
        raise ActionError(f"{rows[0].id} is recorded and handed over, but its supervisor could not be started: {e}\n"
                          f"Start it with `python -m runner supervisor up --on {on} --storage {spec_job.storage_root}`",
                          code=1) from None
    return started.where


def refresh(state: State, jobs: list[JobRow] | None = None) -> list[str]:
    """Bring this machine's record of the jobs supervised elsewhere up to date with their snapshots
    (default: every one not ended here yet). Returns what could not be read, for a note; never raises."""
    problems = []
    for job in jobs if jobs is not None else state.remote_jobs(active=True):
        try:
            snapshot = control.read_snapshot(control.store_for(job), job.id)
        except (StoreError, ValueError, KeyError) as e:
            problems.append(f"{job.id}: could not read its supervisor's record: {e}")
            continue
        if snapshot is not None and snapshot.session != "submit":
            state.load_bundle(snapshot.bundle, keep=control.LOCAL_COLUMNS)
    return problems


def supervisor_of(job: JobRow) -> dict[str, Any] | None:
    """The record of the supervisor of the job's storage root (where, rate, last seen), None if none ever ran."""
    try:
        return control.read_supervisor(control.store_for(job))
    except (StoreError, ValueError):
        return None


def supervised_text(job: JobRow) -> str:
    """Who supervises a job supervised elsewhere, for ``status``."""
    record = supervisor_of(job)
    if record is None:
        return f"a supervisor on {job.supervisor}, not started yet"
    seen = time.time() - float(record.get("seen") or 0)
    if control.supervisor_alive(record, lease_seconds()):
        return f"the supervisor on {record.get('place')} (seen {seen:.0f}s ago)"
    return (f"nobody: its supervisor ({record.get('place')}) was last seen {seen:.0f}s ago; "
            f"`python -m runner supervisor up --on {job.supervisor}` starts it again")


def _ask(state: State, row: JobRow, kind: str, **args: Any) -> dict[str, Any]:
    """Leave a command for the job's supervisor (starting one if none runs) and wait for its answer."""
    store = control.store_for(row)
    command_id = control.send(store, row.id, kind, **args)
    if not control.supervisor_alive(control.read_supervisor(store), lease_seconds()):
        from runner.remote.place import PlaceError, ensure_up

        try:
            ensure_up(row.supervisor or "docker", control.storage_root_of(row), row.image_ref[0] if row.image_ref else None,
                      os.environ, list(row.spec.secrets))
        except PlaceError as e:
            raise ActionError(f"{row.id}: no supervisor runs and none could be started ({e}); the {kind} is waiting "
                              f"for one: `python -m runner supervisor up --on {row.supervisor}`", code=1) from None
    answer = control.wait_answer(store, row.id, command_id, timeout=3 * control_seconds() + 2 * lease_seconds() + 30)
    if answer is None:
        raise ActionError(f"{row.id}: its supervisor has not answered the {kind} yet; it will when it next looks "
                          f"(`python -m runner supervisor status`)", code=1)
    if not answer.get("ok"):
        raise ActionError(f"{row.id}: {answer.get('message')}")
    return answer


def cancel(state: State, row: JobRow) -> JobRow:
    """Ask the job's supervisor to cancel it and wait until it has ended (its trainer writes an emergency
    checkpoint first). The ended job's row, as its supervisor recorded it."""
    from runner.supervisor import STOP_GRACE_SECONDS

    _ask(state, row, "cancel")
    deadline = time.monotonic() + STOP_GRACE_SECONDS + CANCEL_WAIT_SECONDS
    while True:
        refresh(state, [state.job(row.id)])
        job = state.job(row.id)
        if not job.active:
            return job
        if time.monotonic() > deadline:
            raise ActionError(f"{row.id} is still {job.state}; its supervisor accepted the cancel but has not stopped it "
                              f"yet: check `python -m runner status {row.id}`", code=1)
        time.sleep(0.5)


def resume(state: State, row: JobRow, budget: float | None) -> tuple[str, float]:
    """Ask the job's supervisor to go on with an ended job (with a new budget). (note, dollars spent)."""
    if row.active:
        raise ActionError(f"{row.id} is {row.state}, not ended: nothing to resume (its supervisor elsewhere supervises it)")
    if row.state == "done":
        raise ActionError(f"{row.id} is done: its final weights are in {row.run_uri}/final")
    answer = _ask(state, row, "resume", budget=budget)
    refresh(state, [state.job(row.id)])
    note = f" with a ${float(budget):.2f} budget" if budget is not None else ""
    return note, state.spent(row.id) if answer else 0.0


def follow(state: State, job_ids: list[str], display: Any) -> dict[str, str]:
    """Show jobs supervised elsewhere as their snapshots come in, until every one has ended."""
    shown: dict[str, int] = {}  # events shown, by count: an import renumbers them, in the same order
    while True:
        refresh(state, [state.job(j) for j in job_ids])
        for job_id in job_ids:
            job = state.job(job_id)
            events = state.events(job_id)
            for event in events[shown.get(job_id, 0):]:
                display.event(job, event)
            shown[job_id] = len(events)
            display.progress(job, state.current_attempt(job_id), None)
        if not any(state.job(j).active for j in job_ids):
            return {j: state.job(j).state for j in job_ids}
        time.sleep(min(2.0, control_seconds()))
