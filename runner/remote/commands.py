"""``runner supervisor up | status | down | run``: the command group of a supervisor elsewhere.

Imports stay inside the commands: the command line loads this module at every start."""

from __future__ import annotations

import sys
from typing import Any


class SupervisorCommands:
    """A supervisor on an always-on machine (Docker, or a small RunPod CPU pod): relaunches jobs after a
    preemption while this machine is off. Jobs opt in with `supervisor: docker|runpod` (or submit --supervisor)."""

    def up(self, on: str = "docker", storage: str | None = None, image: str | None = None) -> None:
        """Start the supervisor of a storage root (one per root; a running one is left as it is).

        Args:
            on: docker (the engine DOCKER_HOST names, local by default) or runpod (a CPU pod).
            storage: the jobs' storage root, s3://BUCKET/PREFIX; default: that of the newest job supervised elsewhere.
            image: the image it runs (any image of this project); default: that job's image, or $RUNNER_SUPERVISOR_IMAGE.
        """
        import os

        from runner.remote.place import PlaceError, ensure_up
        from runner.show import fail

        root, job = _root(storage)
        image = image or (job.image_ref[0] if job is not None and job.image_ref else None)
        try:
            started = ensure_up(str(on), root, image, os.environ, _secret_names(root))
        except PlaceError as e:
            fail(str(e), 1)
        print(f"supervisor for {root}: {'started' if started.fresh else 'already running'} on {started.where}")

    def status(self, storage: str | None = None, json: bool = False) -> None:
        """Where the supervisor of a storage root runs, when it was last seen, and the jobs it holds.

        Args:
            storage: the jobs' storage root; default: that of the newest job supervised elsewhere.
            json: print JSON.
        """
        import time

        from runner.remote import control, control_root, lease_seconds
        from runner.remote.store import StoreError, open_store
        from runner.show import fail, print_json

        root, _job = _root(storage)
        try:
            record = control.read_supervisor(open_store(control_root(root)))
        except StoreError as e:
            fail(str(e), 1)
        alive = control.supervisor_alive(record, lease_seconds())
        if json:
            return print_json({"storage": root, "running": alive, **(record or {})})
        if record is None:
            return print(f"no supervisor has run for {root}")
        seen = time.time() - float(record.get("seen") or 0)
        state = "running" if alive else ("stopped" if record.get("stopped") else "not seen lately")
        print(f"supervisor for {root}: {state} on {record.get('place')}, last seen {seen:.0f}s ago, "
              f"${float(record.get('rate_per_hour') or 0):.4f}/h; jobs held: {', '.join(record.get('jobs') or []) or 'none'}")
        return None

    def down(self, on: str | None = None, storage: str | None = None) -> None:
        """Stop the supervisor of a storage root; it gives back its jobs' leases first. Jobs it held keep
        running and wait for the next `supervisor up`.

        Args:
            on: docker or runpod; default: where it was started.
            storage: the jobs' storage root; default: that of the newest job supervised elsewhere.
        """
        from runner.remote.place import PlaceError, down
        from runner.show import fail

        root, job = _root(storage)
        where = on or (job.supervisor if job is not None else None) or _place_of(root)
        try:
            print(down(str(where), root))
        except PlaceError as e:
            fail(str(e), 1)

    def run(self, storage: str) -> None:
        """Be the supervisor of a storage root, here, until no job is left (what `up` starts in the container).

        Args:
            storage: the jobs' storage root, s3://BUCKET/PREFIX.
        """
        from runner.remote.daemon import serve
        from runner.remote.store import StoreError
        from runner.show import fail

        try:
            code = serve(str(storage))
        except StoreError as e:
            fail(str(e), 1)
        sys.exit(code)


def _root(storage: str | None) -> tuple[str, Any]:
    """The storage root asked for, or that of the newest job supervised elsewhere (and that job)."""
    from runner.remote.control import storage_root_of
    from runner.show import fail, open_state

    state = open_state()
    jobs = state.remote_jobs(active=False) if state else []
    if storage is not None:
        root = str(storage).rstrip("/")
        mine = [j for j in jobs if storage_root_of(j) == root]
        return root, (mine[-1] if mine else None)
    if not jobs:
        fail("no job here is supervised elsewhere: give --storage s3://BUCKET/PREFIX (the jobs' storage:)")
    return storage_root_of(jobs[-1]), jobs[-1]


def _secret_names(root: str) -> list[str]:
    """The secrets every active job of the root needs (the supervisor hands them to their pods)."""
    from runner.remote.control import storage_root_of
    from runner.show import open_state

    state = open_state()
    names: list[str] = []
    for job in state.remote_jobs(active=True) if state else []:
        if storage_root_of(job) == root:
            names += [n for n in job.spec.secrets if n not in names]
    return names


def _place_of(root: str) -> str:
    from runner.remote import control, control_root
    from runner.remote.store import open_store

    record = control.read_supervisor(open_store(control_root(root))) or {}
    return "runpod" if str(record.get("place", "")).startswith("RunPod") else "docker"
