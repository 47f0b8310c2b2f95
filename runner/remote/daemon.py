"""The supervisor process elsewhere (``runner supervisor run --storage URI``): the watch loop of
:mod:`runner.supervisor`, unchanged, with a :class:`RemoteCustody` that

- finds the jobs handed over under ``<storage>/_supervisor/jobs/`` and imports each one's snapshot
  into this process's own state (its SQLite file is a cache: the snapshots are the record);
- takes a job only with its lease (:mod:`runner.remote.lease`) and imports the newest snapshot then;
- stores the job's snapshot before anything is launched or stopped ("only if still the version this
  process wrote": a process that lost the job learns it there and stops acting), and otherwise
  whenever the record changed, at most every ``RUNNER_SUPERVISOR_SNAPSHOT_SECONDS``;
- obeys the commands the submitting machine leaves (cancel, resume) and answers them;
- records its own time on each job, at its share of its machine's rate (jobs held together split it);
- stops when no job is left (a RunPod supervisor pod terminates itself: it would bill on).

A supervisor killed at any moment and started again (or another one, once the lease runs out)
resumes from the snapshots: an attempt recorded as launching is found by its pod's name, one
recorded as running is watched again, so no pod is made twice and no attempt is lost."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from runner import paths
from runner import state as st
from runner.backends.base import Backend, Billed, Launched, LaunchRequest, Observation
from runner.remote import (
    ENV_ACCOUNT_KEY,
    ENV_PLACE,
    ENV_USD_PER_HOUR,
    control,
    control_root,
    control_seconds,
    lease_seconds,
    seconds,
    snapshot_seconds,
)
from runner.remote.lease import Leases
from runner.remote.store import Store, StoreError, VersionConflict, open_store
from runner.supervisor import Custody, CustodyLost, JobSupervisor, NoDisplay, StepDeferred, Supervisor

#: Seconds with no job left before the supervisor stops.
ENV_IDLE_SECONDS = "RUNNER_SUPERVISOR_IDLE_SECONDS"
#: A loop that has not gone round for this long no longer renews its leases (it is stuck).
STUCK_SECONDS = 900.0


class FencedBackend(Backend):
    """A job's backend, with the job's snapshot stored (and this process's custody checked) before
    anything is launched or stopped."""

    def __init__(self, inner: Backend, before: Callable[[], None]):
        self.inner = inner
        self.before = before
        self.name = inner.name

    def launch(self, request: LaunchRequest, timeout_s: float = 60.0) -> Launched:
        self.before()
        return self.inner.launch(request, timeout_s)

    def stop(self, handle: dict[str, Any], grace_s: float = 60.0, timeout_s: float = 30.0) -> Observation:
        self.before()
        return self.inner.stop(handle, grace_s, timeout_s)

    def poll(self, handle: dict[str, Any]) -> Observation:
        return self.inner.poll(handle)

    def billed(self, handle: dict[str, Any]) -> Billed | None:
        return self.inner.billed(handle)

    def logs(self, handle: dict[str, Any], follow: bool = False, until: Callable[[], bool] | None = None) -> Iterator[str]:
        return self.inner.logs(handle, follow, until)


class RemoteCustody(Custody):
    def __init__(self, state: st.State, store: Store, leases: Leases, *, session: str, place: str,
                 rate_per_hour: float, environ: Mapping[str, str]):
        super().__init__(state)
        self.store = store
        self.leases = leases
        self.session = session
        self.place = place
        self.rate = rate_per_hour
        self.environ = environ
        self.started = time.time()
        self.taken: set[str] = set()
        self.lost: set[str] = set()
        self.versions: dict[str, str] = {}  # job: the snapshot version this process read or wrote last
        self.digests: dict[str, str] = {}
        self.flushed: dict[str, float] = {}
        self.ended: set[str] = set()  # jobs whose snapshot said they ended (not read again unless commanded)
        self.next_look = 0.0
        self.idle_since: float | None = None
        self.beat = time.monotonic()

    # --- custody --------------------------------------------------------------------------------------
    def me(self) -> str:
        return f"the supervisor on {self.place} ({self.session})"

    def holder(self, job: st.JobRow) -> str:
        lease = None
        with contextlib.suppress(StoreError, ValueError):
            lease = self.leases.read(job.id)
        return f"another supervisor ({lease.get('place') or lease.get('holder')})" if lease else "another supervisor"

    def candidates(self) -> list[str]:
        return [j.id for j in self.state.jobs(active=True)]

    def alive(self) -> bool:
        return time.monotonic() - self.beat < STUCK_SECONDS

    def take(self, job: st.JobRow) -> bool:
        if job.id in self.taken:
            return self.holds(job.id)
        if not self.leases.take(job.id):
            return False
        try:
            snapshot = control.read_snapshot(self.store, job.id)
            if snapshot is None:
                raise StoreError(f"no snapshot of {job.id}")
            self._import(snapshot)
        except (StoreError, ValueError, KeyError) as e:
            self.log(f"{job.id}: could not read its record ({e}); leaving it for now")
            self.leases.release(job.id)
            return False
        self.versions[job.id] = snapshot.version
        self.lost.discard(job.id)
        self.state.acquire(job.id, self.pid, self.ident)
        self.state.close_supervisor_segments(others_than=self.session, job_id=job.id)
        self.taken.add(job.id)
        self._share()
        try:
            self.flush(job.id, force=True)
        except (CustodyLost, StepDeferred):
            self._drop(job.id)
            return False
        return True

    def holds(self, job_id: str) -> bool:
        return job_id in self.taken and job_id not in self.lost and self.leases.holds(job_id)

    def adopt(self, sup: JobSupervisor) -> None:
        sup.backend = FencedBackend(sup.backend, lambda: self.flush(sup.job.id, force=True))

    def give_back(self, job_id: str) -> None:
        if job_id not in self.taken:
            return
        self.state.close_supervisor_segments(session=self.session, job_id=job_id)
        self.taken.discard(job_id)
        self._share()
        with contextlib.suppress(CustodyLost, StepDeferred):
            self.flush(job_id, force=True, final=True)
        self.leases.release(job_id)
        self.state.release(job_id, self.pid, self.ident)
        if not self.state.job(job_id).active:
            self.ended.add(job_id)

    def _drop(self, job_id: str) -> None:
        """Custody lost: forget the job without writing anything more of it."""
        self.lost.add(job_id)
        self.leases.forget(job_id)
        if job_id in self.taken:
            self.taken.discard(job_id)
            self.state.release(job_id, self.pid, self.ident)
            self._share()

    def round(self, held: Mapping[str, JobSupervisor]) -> bool:
        self.beat = time.monotonic()
        for job_id in list(self.taken):
            try:
                self.flush(job_id)
            except CustodyLost:
                self._drop(job_id)
            except StepDeferred:
                pass
        if time.monotonic() < self.next_look:
            return True
        self.next_look = time.monotonic() + control_seconds()
        try:
            keys = self.store.list("jobs/")
            self._discover(keys)
            self._obey(keys)
            self._heartbeat()
        except StoreError as e:
            self.log(f"the store did not answer: {e}; looking again")
            return True
        return self._keep_going(held)

    # --- the record ------------------------------------------------------------------------------------
    def _import(self, snapshot: control.Snapshot) -> None:
        job_id = snapshot.bundle["job"]["id"]
        local = self._job_file(job_id, snapshot.bundle["job"]["job_file"])
        known = self._known(job_id)
        values: dict[str, Any] = {"job_file": str(local), "workdir": str(local.parent)}
        if not known:
            values.update(supervisor_pid=None, supervisor_ident=None)
        self.state.load_bundle(snapshot.bundle, keep=("supervisor_pid", "supervisor_ident") if known else (), **values)

    def _known(self, job_id: str) -> bool:
        try:
            self.state.job(job_id)
            return True
        except st.StateError:
            return False

    def _job_file(self, job_id: str, submitted_as: str) -> Path:
        """This process's copy of the job file as submitted (the launch checks it is still the same)."""
        folder = paths.state_dir() / "supervised" / job_id
        path = folder / Path(submitted_as).name
        if not path.exists():
            got = self.store.get(control.job_file_key(job_id))
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(got[0] if got else b"")
        return path

    def flush(self, job_id: str, force: bool = False, final: bool = False) -> None:
        """Store the job's snapshot if it changed (``force``: now, else at most every few seconds), only
        over the version this process wrote last. :class:`CustodyLost` when another process wrote since;
        :class:`StepDeferred` when the store did not answer and ``force`` asked for it stored first."""
        if job_id in self.lost or (final is False and job_id not in self.taken):
            raise CustodyLost(job_id)
        if not final and not self.holds(job_id):  # not renewed lately (a slow store, a busy machine): wait
            if force:
                raise StepDeferred(f"{job_id}: its lease was not renewed lately")
            return
        now = time.monotonic()
        if not force and now - self.flushed.get(job_id, 0.0) < snapshot_seconds():
            return
        self.state.touch_supervisor_segments(self.session)
        bundle = self.state.job_bundle(job_id)
        digest = hashlib.sha256(json.dumps({k: v for k, v in bundle.items() if k != "supervisor_segments"},
                                           sort_keys=True, default=str).encode()).hexdigest()
        if not force and digest == self.digests.get(job_id) and now - self.flushed.get(job_id, 0.0) < 10 * snapshot_seconds():
            return
        try:
            version = self.store.put(control.snapshot_key(job_id), control.encode_snapshot(bundle, self.session),
                                     if_version=self.versions.get(job_id))
        except VersionConflict:
            self.log(f"{job_id}: another supervisor wrote its record; this one stops acting on it")
            self._drop(job_id)
            raise CustodyLost(job_id) from None
        except StoreError as e:
            if force:
                raise StepDeferred(str(e)) from None
            return
        self.versions[job_id] = version
        self.digests[job_id] = digest
        self.flushed[job_id] = now

    def _share(self) -> None:
        """Split this machine's rate over the jobs held now: close this process's open segments and open
        one per held job at its share."""
        self.state.close_supervisor_segments(session=self.session)
        if not self.taken:
            return
        share = self.rate / len(self.taken)
        for job_id in self.taken:
            self.state.open_supervisor_segment(job_id, self.session, self.place, share)

    # --- looking at the store ------------------------------------------------------------------------
    def _discover(self, keys: list[str]) -> None:
        commanded = {k.split("/")[1] for k in keys if "/commands/" in k}
        for key in keys:
            parts = key.split("/")
            if len(parts) != 3 or parts[2] != "snapshot.json":
                continue
            job_id = parts[1]
            if job_id in self.taken or (job_id in self.ended and job_id not in commanded):
                continue
            snapshot = control.read_snapshot(self.store, job_id)
            if snapshot is None:
                continue
            if not self._known(job_id):
                self.log(f"{job_id}: found ({snapshot.job_state})")
            self._import(snapshot)
            if snapshot.job_state not in st.ACTIVE_STATES:
                self.ended.add(job_id)

    def _obey(self, keys: list[str]) -> None:
        for job_id in sorted({k.split("/")[1] for k in keys if "/commands/" in k}):
            if not self._known(job_id):
                continue
            commands = control.pending(self.store, job_id, keys)
            if not commands:
                continue
            if job_id not in self.taken and not self.take(self.state.job(job_id)):
                continue  # its supervisor answers it
            for command in commands:
                ok, message = self._do(job_id, command)
                self.log(f"{job_id}: {command['kind']}: {message}")
                self.flush(job_id, force=True)
                control.answer(self.store, job_id, command, ok, message)

    def _do(self, job_id: str, command: dict[str, Any]) -> tuple[bool, str]:
        job = self.state.job(job_id)
        if command["kind"] == "cancel":
            if not job.active:
                return True, f"{job_id} is already {job.state}"
            self.state.request_cancel(job_id)
            return True, "cancel requested: its trainer writes an emergency checkpoint, then nothing of it runs"
        if command["kind"] == "resume":
            from runner.actions import ActionError, reopen

            try:
                note, spent = reopen(self.state, job, (command.get("args") or {}).get("budget"), self.environ, here=True)
            except ActionError as e:
                return False, str(e)
            self.ended.discard(job_id)
            return True, f"resumed{note} (spent so far: ${spent:.2f})"
        return False, f"unknown command {command['kind']!r}"

    def _heartbeat(self, stopped: bool = False) -> None:
        record = {"session": self.session, "place": self.place, "rate_per_hour": self.rate, "started": self.started,
                  "seen": time.time(), "jobs": sorted(self.taken), "stopped": stopped, "pid": os.getpid()}
        self.store.put(control.SUPERVISOR_KEY, json.dumps(record).encode())

    def _keep_going(self, held: Mapping[str, JobSupervisor]) -> bool:
        """False once no job has been left to supervise for a while (and none was handed over meanwhile)."""
        if held or self.taken or self.state.jobs(active=True):
            self.idle_since = None
            return True
        if self.idle_since is None:
            self.idle_since = time.monotonic()
            return True
        if time.monotonic() - self.idle_since < seconds(ENV_IDLE_SECONDS, 30.0):
            return True
        # Say so first, then look once more: a job handed over before this mark is seen now; one handed
        # over after it is seen by its submitter, who starts another supervisor.
        self._heartbeat(stopped=True)
        keys = self.store.list("jobs/")
        self._discover(keys)
        if self.state.jobs(active=True) or any("/commands/" in k for k in keys):
            self._heartbeat()
            self.idle_since = None
            return True
        return False

    def close(self) -> None:
        for job_id in list(self.taken):
            self.give_back(job_id)
        with contextlib.suppress(StoreError):
            self._heartbeat(stopped=True)

    @staticmethod
    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} supervisor: {message}", flush=True)


class LogDisplay(NoDisplay):
    """What the supervisor does, as lines on its output (`docker logs`, the pod's logs); no progress."""

    def event(self, job: st.JobRow, event: st.EventRow) -> None:
        print(f"{time.strftime('%H:%M:%S', time.localtime(event.time))} {job.id} {event.kind}: {event.message}", flush=True)

    def note(self, message: str) -> None:
        RemoteCustody.log(message)


def _own_rate(environ: Mapping[str, str]) -> float:
    """What an hour of this machine costs: as told (a Docker host), else this RunPod pod's own rate."""
    told = environ.get(ENV_USD_PER_HOUR)
    if told:
        return float(told)
    pod_id = environ.get("RUNPOD_POD_ID")
    if pod_id and environ.get(ENV_ACCOUNT_KEY):
        from runner.runpod.client import RunPodClient
        from runner.runpod.errors import RunPodError

        for _ in range(5):
            with contextlib.suppress(RunPodError):
                pod = RunPodClient().get_pod(pod_id)
                if pod is not None and pod.cost_per_hour:
                    return pod.cost_per_hour
            time.sleep(2)
    return 0.0


def _terminate_own_pod(environ: Mapping[str, str]) -> None:
    """A RunPod pod whose process ends is restarted and bills on: the supervisor pod ends itself."""
    pod_id = environ.get("RUNPOD_POD_ID")
    if not pod_id or not environ.get(ENV_ACCOUNT_KEY):
        return
    from runner.runpod.client import RunPodClient
    from runner.runpod.errors import RunPodError

    try:
        RunPodClient().terminate(pod_id)
    except RunPodError as e:
        RemoteCustody.log(f"could not terminate this pod ({e}); terminate {pod_id} in the RunPod console")


def serve(storage_root: str, environ: Mapping[str, str] | None = None) -> int:
    """Supervise the jobs handed over under ``storage_root`` until none is left. The exit code."""
    env = dict(os.environ if environ is None else environ)
    # A state of its own, whatever machine it runs on: it must never take the jobs, or the pod owner id,
    # of a runner that shares the machine (its SQLite file is only a cache of the snapshots anyway).
    home = paths.state_dir() / "supervisor" / hashlib.sha256(storage_root.rstrip("/").encode()).hexdigest()[:12]
    os.environ[paths.ENV_HOME] = env[paths.ENV_HOME] = str(home)
    if env.get(ENV_ACCOUNT_KEY):  # in a pod RUNPOD_API_KEY is RunPod's pod-scoped key: use the account's
        os.environ["RUNPOD_API_KEY"] = env["RUNPOD_API_KEY"] = env[ENV_ACCOUNT_KEY]
    store = open_store(control_root(storage_root), env)
    store.check_conditional()
    # The pods this root's supervisors make are named with the root's owner id, so that a supervisor
    # started after one was killed finds that one's pods by name.
    owner_file = paths.state_dir() / "runpod-owner"
    owner_file.parent.mkdir(parents=True, exist_ok=True)
    owner_file.write_text(control.owner(store))
    state = st.State.open(create=True)
    assert state is not None
    session = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
    place = env.get(ENV_PLACE) or f"host {socket.gethostname()}"
    if env.get("RUNPOD_POD_ID"):  # RunPod tells a pod its id; the one who created it knew only its name
        place = f"RunPod pod {env['RUNPOD_POD_ID']}"
    leases = Leases(store, session, place, lease_seconds())
    custody = RemoteCustody(state, store, leases, session=session, place=place, rate_per_hour=_own_rate(env),
                            environ=env)
    custody.log(f"supervising the jobs under {storage_root} from {place} (${custody.rate:.4f}/h, lease "
                f"{leases.term:.0f}s, session {session})")

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    leases.start(alive=custody.alive)
    idle = False
    try:
        Supervisor(state, LogDisplay(), env, custody).run(None, forever=True)
        idle = True
    except KeyboardInterrupt:
        custody.log("stopping (asked to); every job's lease is given back")
    finally:
        leases.stop()
        custody.close()
        state.close()
    if idle:
        custody.log("no job left: stopping")
        _terminate_own_pod(env)
    sys.stdout.flush()
    return 0
