"""The supervisor: watches each job's current attempt and decides what happens next.

- done (status.json done, exit 0): the job is done;
- interrupted (exit 75, killed, process or machine vanished, heartbeat stale): relaunch, up to
  ``retry.max_preemptions`` times; after ``retry.fallback_to_on_demand_after`` of them, on-demand;
- failed: rerun after a backoff that doubles, up to ``retry.max_failures`` times; never when the
  exit code says a rerun cannot help;
- budget reached: stop with an emergency checkpoint; cancel asked for: the same.

Every transition is an event in the state database, written before it is acted on. One runner
process supervises a job at a time (the job's lease); a runner that is killed leaves its attempts
running, and the next ``watch`` adopts them. When a job ends for good, nothing of it is left running."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runner import cost, observed, proc
from runner import state as st
from runner.backends import get_backend
from runner.backends.base import (
    Backend,
    BackendError,
    LaunchRequest,
    NoCapacityError,
    Observation,
    SpotUnavailableError,
)
from runner.catalog import load_catalog
from runner.launch_log import LaunchLog
from runner.outcome import DONE, FAILED_PERMANENTLY, INTERRUPTED, Verdict, classify
from runner.secret_guard import forwarded, redact
from trainer import contract

if TYPE_CHECKING:
    from runner.spec import JobSpec

#: Seconds between two looks at a job (overridable for tests and slow remote backends).
POLL_SECONDS = float(os.environ.get("RUNNER_POLL_SECONDS", "0.5"))
#: How long a trainer gets to write its emergency checkpoint after SIGTERM before it is killed.
STOP_GRACE_SECONDS = float(os.environ.get("RUNNER_STOP_GRACE_SECONDS", "60"))
LAUNCH_TIMEOUT_SECONDS = 120.0
#: Warn once when a job has spent this share of its budget.
BUDGET_WARNING = 0.8
#: Outcomes of attempts that started nothing: no capacity anywhere in the GPU list, or spot refused outright.
NO_CAPACITY = "no_capacity"
SPOT_REFUSED = "spot_refused"


def _resume_hint(job_id: str, budget: float) -> str:
    return (f"raise budget.max_usd to go on from the last checkpoint: "
            f"`python -m runner resume {job_id} --budget {max(budget * 1.5, budget + 1):.2f}`")


class Display(Protocol):
    """Where the supervisor shows what happens (a terminal, or nothing)."""

    def event(self, job: st.JobRow, event: st.EventRow) -> None: ...

    def progress(self, job: st.JobRow, attempt: st.AttemptRow | None, status: contract.Status | None) -> None: ...

    def note(self, message: str) -> None: ...


class NoDisplay:
    def event(self, job: st.JobRow, event: st.EventRow) -> None:
        pass

    def progress(self, job: st.JobRow, attempt: st.AttemptRow | None, status: contract.Status | None) -> None:
        pass

    def note(self, message: str) -> None:
        pass


#: A heartbeat is never called stale sooner than this (a slow storage write is not a hang).
MIN_STALE_SECONDS = float(os.environ.get("RUNNER_MIN_STALE_SECONDS", "60"))


def stale_after_seconds(spec: JobSpec) -> float:
    """A running trainer rewrites status.json every ``heartbeat_seconds``; ten missed beats (at
    least a minute) mean it is hung."""
    return max(MIN_STALE_SECONDS, 10.0 * spec.train.logging.heartbeat_seconds)


class JobSupervisor:
    """One job's state machine; :meth:`step` advances it by looking once."""

    def __init__(self, state: st.State, job_id: str, environ: Mapping[str, str], backend: Backend | None = None):
        self.state = state
        self.job = state.job(job_id)
        self.environ = environ
        self.backend = backend or get_backend(self.job.backend)
        self._storage = None
        self.status: contract.Status | None = None
        self.finished = False  # this supervisor is done with the job (it ended, or it is blocked)
        self.launched = False
        self._warned: set[str] = set()
        self._auto_minutes: dict[str, float] = {}  # attempt id: the interval passed
        self._secret_values = [environ[n] for n in self.spec.secrets if environ.get(n)]

    @property
    def spec(self) -> JobSpec:
        """The job as recorded now (``resume --budget`` changes it while the job is supervised)."""
        return self.job.spec

    # --- looking --------------------------------------------------------------------------------
    def read_status(self) -> contract.Status | None:
        """status.json of the run, or None when it is not there (yet) or unreadable right now."""
        try:
            if self._storage is None:
                from trainer.storage import open_storage

                self._storage = open_storage(self.job.run_uri)
            self.status = contract.Status.read(self._storage)
        except Exception:  # a torn read or a storage hiccup: look again next time
            pass
        return self.status

    def _event(self, kind: str, message: str, attempt_id: str | None = None) -> None:
        self.state.add_event(self.job.id, kind, self._clean(message), attempt_id)

    def _clean(self, text: str) -> str:
        return redact(text, self._secret_values)

    # --- the state machine ----------------------------------------------------------------------
    def step(self) -> None:
        job = self.job = self.state.job(self.job.id)
        if not job.active:
            self.finished = True
            return
        attempt = self.state.current_attempt(job.id)
        if job.cancel_requested:
            self._cancel(attempt)
        elif attempt is None:
            self._maybe_launch()
        elif attempt.state == st.LAUNCHING:
            self._launch(attempt)
        else:
            self._watch(attempt)

    def _maybe_launch(self) -> None:
        if time.time() < self.job.next_launch_at or not self._earlier_stages_done():
            return
        budget = self.spec.budget.max_usd if self.spec.budget else None
        spent = self.state.spent(self.job.id)
        if budget is not None and spent >= budget:
            self._finish(st.OVER_BUDGET, f"spent ${spent:.2f} of the ${budget:.2f} budget; {_resume_hint(self.job.id, budget)}",
                         "budget_reached")
            return
        if not self._ready_to_launch():
            return
        fallback_after = self.spec.retry.fallback_to_on_demand_after
        spot = self.spec.resources.spot
        shortfalls, refused = self._spot_shortfalls()
        if spot and fallback_after is not None and (refused or self.job.preemptions + shortfalls >= fallback_after):
            if "fallback" not in self._warned:
                self._warned.add("fallback")
                why = "the provider refuses spot capacity" if refused else \
                    f"{self.job.preemptions} preemptions and {shortfalls} launches without spot capacity"
                self._event("fallback", f"{why}: relaunching on on-demand capacity")
            spot = False
        gpus = self._gpus()
        attempt = self.state.add_attempt(
            self.job.id, backend=self.job.backend, gpu=gpus[0].alias if gpus else None,
            gpu_count=self.spec.resources.gpu_count, spot=cost.spot_applies(self.job.backend, spot),
            start_step=self.job.step,
        )
        self._launch(attempt, checked=True)

    def _earlier_stages_done(self) -> bool:
        """A pipeline stage starts when every stage before it is done (its inputs are their best.pt, which
        the trainer verifies at start); when one of them ended otherwise, this one cannot run."""
        if not self.job.pipeline:
            return True
        for row in self.state.pipeline_jobs(self.job.pipeline):
            if row.id == self.job.id:
                return True
            if row.state == st.DONE:
                continue
            if not row.active:
                self._finish(st.FAILED, f"stage {row.stage} ended {row.state}, so stage {self.job.stage} cannot start; "
                                        f"submit the pipeline again to go on from stage {row.stage}", "failed")
            elif self.job.reason != (reason := f"waits for stage {row.stage} ({row.state})"):
                self.state.set_job_state(self.job.id, st.PENDING, reason, "waiting")
            return False
        return True

    def _spot_shortfalls(self) -> tuple[int, bool]:
        """(spot launches that found no capacity, whether the provider refused spot outright)."""
        outcomes = [a.outcome for a in self.state.attempts(self.job.id) if a.spot]
        return outcomes.count(NO_CAPACITY), SPOT_REFUSED in outcomes

    def _gpus(self):
        catalog = load_catalog()
        return tuple(g for g in (catalog.resolve(n) for n in self.job.wanted_gpus()) if g is not None)

    def _ready_to_launch(self) -> bool:
        """Secrets set in this shell and the job file unchanged; otherwise the job waits for the user."""
        _values, missing = forwarded(self.spec.secrets, self.environ)
        if missing:
            self._block(f"needs {', '.join(missing)} in the environment to launch; export "
                        f"{'it' if len(missing) == 1 else 'them'} and run `python -m runner watch`")
            return False
        path = Path(self.job.job_file)
        if not path.exists():
            self._finish(st.FAILED, f"the job file {path} is gone; the trainer reads it at every launch", "failed")
            return False
        import hashlib

        if hashlib.sha256(path.read_bytes()).hexdigest() != self.job.job_sha256 and "edited" not in self._warned:
            self._warned.add("edited")
            self._event("job_file_changed", f"{path} changed since the job was submitted; the trainer reads the new file")
        return True

    def _block(self, reason: str) -> None:
        job = self.state.job(self.job.id)
        if job.reason != reason:
            self.state.set_job_state(self.job.id, st.WAITING, reason, "blocked")
        self.finished = True  # nothing this process can do: leave the job to a later `watch`

    def _request(self, attempt: st.AttemptRow, log: LaunchLog | None = None) -> LaunchRequest:
        values, _missing = forwarded(self.spec.secrets, self.environ)
        env = {**self.spec.env_text(), **values, **self._checkpoint_env(attempt), **self._billing_env(attempt)}
        if self.job.stage:
            env[contract.ENV_STAGE] = self.job.stage
            env[contract.ENV_INIT_FROM] = json.dumps(self.job.inputs)
        resources = self.spec.resources
        return LaunchRequest(
            attempt_id=attempt.id, job_id=self.job.id, job_file=Path(self.job.job_file), run_uri=self.job.run_uri,
            workdir=Path(self.job.workdir), env=env, gpus=self._gpus(), gpu_count=attempt.gpu_count,
            spot=bool(attempt.spot), max_bid_per_gpu=resources.max_bid_per_gpu,
            container_disk_gb=resources.container_disk_gb, volume_gb=resources.volume_gb,
            image=self.spec.image, image_ref=self.job.image_ref, bid_margin_per_gpu=resources.bid_margin_per_gpu,
            price_per_hour=resources.price_per_hour,
            report=lambda kind, message: self._report(kind, message, attempt.id, log), log=log,
        )

    def _report(self, kind: str, message: str, attempt_id: str, log: LaunchLog | None) -> None:
        """What a backend did along the way: an event of the job, and a line of the attempt's launch log."""
        self._event(kind, message, attempt_id)
        if log is not None:
            log(message)

    def _launch(self, attempt: st.AttemptRow, checked: bool = False) -> None:
        if not checked and not self._ready_to_launch():
            return
        log = LaunchLog(attempt.id, self._clean)  # what happens here, readable without the provider's key
        log(f"attempt {attempt.number}: launching on the {self.job.backend} backend"
            + (f" ({attempt.gpu}, {'spot' if attempt.spot else 'on-demand'})" if attempt.gpu else ""))
        try:
            launched = self.backend.launch(self._request(attempt, log), timeout_s=LAUNCH_TIMEOUT_SECONDS)
        except (NoCapacityError, SpotUnavailableError) as e:
            log(f"no capacity: {e}")
            self._no_capacity(attempt, e)
            return
        except BackendError as e:
            log(f"launch failed: {e}")
            self.state.attempt_ended(attempt, outcome="failed", exit_code=None, detail=self._clean(str(e)), end_step=None)
            self._after(attempt, Verdict("failed", f"launch failed: {e}"))
            return
        log(f"{'found it already running' if launched.adopted else 'launched'}: {launched.handle.get('where', '')}")
        catalog_gpu = load_catalog().resolve(launched.gpu) if launched.gpu else None
        self.state.attempt_started(attempt, launched.handle, gpu=launched.gpu or attempt.gpu, spot=launched.spot,
                                   rate_per_hour=launched.rate_per_hour,
                                   on_demand_rate_per_hour=(catalog_gpu.on_demand * attempt.gpu_count if catalog_gpu
                                                            else launched.on_demand_rate_per_hour),
                                   adopted=launched.adopted, storage_rate_per_hour=self._storage_rate(),
                                   rate_source="local" if cost.own_machine(self.job.backend) else "catalog",
                                   checkpoint_every_minutes=self._auto_minutes.get(attempt.id))
        self.launched = True

    def _no_capacity(self, attempt: st.AttemptRow, error: BackendError) -> None:
        """Nothing was started: a shortage waits and retries (bounded like failures); spot that the
        provider refuses falls back to on-demand when the job allows it, and otherwise ends the job."""
        refused = isinstance(error, SpotUnavailableError)
        detail = self._clean(str(error))
        self.state.attempt_ended(attempt, outcome=SPOT_REFUSED if refused else NO_CAPACITY, exit_code=None,
                                 detail=detail, end_step=None)
        fallback_after = self.spec.retry.fallback_to_on_demand_after
        job = self.state.job(self.job.id)
        if attempt.spot and fallback_after is not None:
            shortfalls, _ = self._spot_shortfalls()
            if refused or job.preemptions + shortfalls >= fallback_after:
                self.state.set_job_state(job.id, st.WAITING, f"attempt {attempt.number}: {detail}; relaunching on "
                                         f"on-demand capacity", SPOT_REFUSED if refused else NO_CAPACITY, attempt.id,
                                         next_launch_at=time.time())
                return
        if refused:
            self._finish(st.FAILED, detail, "failed", attempt.id)
            return
        self._after(attempt, Verdict("failed", detail))

    def _watch(self, attempt: st.AttemptRow) -> None:
        handle = attempt.handle or {}
        obs = self.backend.poll(handle)
        status = self.read_status()
        mine = status is not None and status.attempt == attempt.id
        if status is not None and (status.step, status.max_steps) != (self.job.step, self.job.max_steps):
            self.state.update_job(self.job.id, step=status.step, max_steps=status.max_steps or self.job.max_steps)
        if not obs.ended:
            if self._over_budget(attempt):
                return
            if mine and status.state == contract.RUNNING and time.time() - status.heartbeat > stale_after_seconds(self.spec):
                age = time.time() - status.heartbeat
                self._event("stale", f"no heartbeat for {age:.0f}s from a live trainer: stopping it", attempt.id)
                obs = self.backend.stop(handle, grace_s=STOP_GRACE_SECONDS)
                verdict = classify(obs, self.read_status(), attempt.id)
                if verdict.outcome != DONE:
                    verdict = Verdict(INTERRUPTED, f"heartbeat stale for {age:.0f}s; {verdict.detail}")
                self._end(attempt, obs, verdict)
            return
        # Ended or lost, nothing of it may go on running or billing (a RunPod pod outlives its trainer)
        # before another attempt starts on the same run.
        obs = self._cleanup(handle, obs)
        self._end(attempt, obs, classify(obs, self.read_status(), attempt.id))

    # --- what an attempt measured, for cost reports and the checkpoint interval ----------------------
    def _checkpoint_env(self, attempt: st.AttemptRow) -> dict[str, str]:
        """``every_minutes: auto``: the interval for this launch, passed to the trainer (Young/Daly from
        the measured checkpoint cost and the preemption rate observed on the attempt's GPU)."""
        if self.spec.train.checkpoint.every_minutes != "auto":
            return {}
        if attempt.id not in self._auto_minutes:
            gpu = attempt.gpu if self.job.backend != "local" else None
            minutes, why, _rate, _cost = cost.checkpoint_minutes(self.spec.train, self.job.name, gpu,
                                                                 bool(attempt.spot), self.job.backend, self.state)
            self._auto_minutes[attempt.id] = minutes
            self._event("checkpoint_interval", f"every {minutes:.1f} min ({why})", attempt.id)

        return {contract.ENV_CHECKPOINT_EVERY_MINUTES: f"{self._auto_minutes[attempt.id]:.3f}"}

    def _billing_env(self, attempt: st.AttemptRow) -> dict[str, str]:
        """What the job cost before this attempt, for the trainer's report: billed dollars and machine
        hours, preemptions survived, and this attempt's rate when the GPU is known before launch."""
        now = time.time()
        segments = self.state.segments(self.job.id)
        env = {contract.ENV_BILLED_USD: f"{sum(s.total_cost(now) for s in segments):.6f}",
               contract.ENV_BILLED_HOURS: f"{sum(s.hours(now) for s in segments):.6f}",
               contract.ENV_PREEMPTIONS: str(self.state.job(self.job.id).preemptions)}
        gpu = load_catalog().resolve(attempt.gpu) if attempt.gpu else None
        if gpu is not None or self.job.backend == "local":
            rate, _ = cost.rate(gpu, attempt.gpu_count, bool(attempt.spot), self.job.backend)
            env[contract.ENV_USD_PER_HOUR] = f"{rate + self._storage_rate():.6f}"
        return env

    def _storage_rate(self) -> float:
        resources = self.spec.resources
        return cost.storage_rate(self.job.backend, resources.container_disk_gb, resources.volume_gb)

    def _measured(self, attempt: st.AttemptRow) -> dict[str, Any]:
        """What the trainer reported about this attempt: from status.json the last checkpoint it wrote
        (work after it is lost when it was preempted) and when it trained (the rest was billed idle);
        from its TensorBoard events what a checkpoint cost it."""
        out: dict[str, Any] = {}
        status = self.status
        if status is not None and status.attempt == attempt.id:
            out.update(last_checkpoint_step=status.last_checkpoint_step or 0,  # None: none yet, from step 0
                       train_started=status.started or None, train_ended=status.heartbeat)
        stalls = observed.checkpoint_stalls(self.job.run_uri, attempt.started or attempt.created)
        if stalls:
            out.update(checkpoint_seconds=statistics.median(stalls), checkpoints=len(stalls))
        return out

    def _cleanup(self, handle: dict[str, Any], obs: Observation) -> Observation:
        """Make sure nothing of an ended or lost attempt still runs before another one starts on the same run."""
        try:
            self.backend.stop(handle, grace_s=0)
        except BackendError as e:
            self._event("error", f"could not clean up the attempt: {self._clean(str(e))}")
        return obs

    def _settle(self, attempt: st.AttemptRow) -> None:
        """Replace the runner's estimate of an ended attempt's cost by the provider's billing, when it has any."""
        try:
            billed = self.backend.billed(attempt.handle or {})
        except BackendError:
            billed = None
        if billed is not None:
            self.state.settle_segment(attempt.id, started=billed.started, ended=billed.ended, usd=billed.usd,
                                      storage_usd=billed.storage_usd)
            if billed.note:
                self._event("billing_mismatch", billed.note, attempt.id)

    def _over_budget(self, attempt: st.AttemptRow) -> bool:
        budget = self.spec.budget.max_usd if self.spec.budget else None
        if budget is None:
            return False
        spent = self.state.spent(self.job.id)
        if spent >= BUDGET_WARNING * budget and "budget" not in self._warned and spent < budget:
            self._warned.add("budget")
            self._event("budget_warning", f"spent ${spent:.2f} of the ${budget:.2f} budget", attempt.id)
        if spent < budget:
            return False
        self._event("budget_reached", f"spent ${spent:.2f} of the ${budget:.2f} budget: stopping with an emergency "
                                      f"checkpoint", attempt.id)
        verdict = self._stop(attempt)
        if verdict.outcome == DONE:
            self._finish(st.DONE, f"final weights in {self.job.run_uri}/{contract.FINAL_DIR}", "done", attempt.id)
        else:
            step = self.status.step if self.status else self.job.step
            self._finish(st.OVER_BUDGET, f"stopped at step {step} after spending ${spent:.2f} of the ${budget:.2f} "
                                         f"budget ({verdict.detail}); {_resume_hint(self.job.id, budget)}", "stopped",
                             attempt.id)
        return True

    def _cancel(self, attempt: st.AttemptRow | None) -> None:
        if attempt is not None:
            if attempt.state == st.LAUNCHING:
                # The runner may have died after starting it: launch is idempotent and finds it (or starts
                # it, to be stopped at once), so nothing launched in that window is left running.
                self._launch(attempt)
                attempt = self.state.attempt(attempt.id)
            if attempt.state == st.ATTEMPT_RUNNING:
                verdict = self._stop(attempt)
                if verdict.outcome == DONE:
                    self._finish(st.DONE, f"final weights in {self.job.run_uri}/{contract.FINAL_DIR}", "done", attempt.id)
                    return
        step = self.status.step if self.status else self.job.step
        self._finish(st.CANCELLED, f"cancelled at step {step}; the run's checkpoints are kept in {self.job.run_uri}",
                     "cancelled", attempt.id if attempt else None)

    def _stop(self, attempt: st.AttemptRow) -> Verdict:
        obs = self.backend.stop(attempt.handle or {}, grace_s=STOP_GRACE_SECONDS)
        verdict = classify(obs, self.read_status(), attempt.id)
        self.state.attempt_ended(attempt, outcome="stopped" if verdict.outcome != DONE else DONE, exit_code=obs.exit_code,
                                 detail=self._clean(verdict.detail), end_step=self.status.step if self.status else None,
                                 **self._measured(attempt))
        self._settle(attempt)
        return verdict

    def _end(self, attempt: st.AttemptRow, obs: Observation, verdict: Verdict) -> None:
        self.state.attempt_ended(attempt, outcome=verdict.outcome, exit_code=obs.exit_code,
                                 detail=self._clean(verdict.detail), end_step=self.status.step if self.status else None,
                                 **self._measured(attempt))
        self._settle(attempt)
        self._after(attempt, verdict)

    def _after(self, attempt: st.AttemptRow, verdict: Verdict) -> None:
        """Policy: what an ended attempt means for its job."""
        retry = self.spec.retry
        job = self.state.job(self.job.id)
        detail = self._clean(verdict.detail)
        if verdict.outcome == DONE:
            self._finish(st.DONE, f"final weights in {job.run_uri}/{contract.FINAL_DIR}", "done", attempt.id)
        elif verdict.outcome == INTERRUPTED:
            count, limit = job.preemptions + 1, retry.max_preemptions
            if count > limit:
                self._finish(st.FAILED, f"interrupted {count} times, more than retry.max_preemptions ({limit}); last: "
                                        f"{detail}", "failed", attempt.id, preemptions=count)
            else:
                self.state.set_job_state(job.id, st.WAITING, f"attempt {attempt.number} interrupted: {detail}; relaunching",
                                         "preempted", attempt.id, preemptions=count, next_launch_at=time.time())
        elif verdict.outcome == FAILED_PERMANENTLY:
            self._finish(st.FAILED, f"attempt {attempt.number}: {detail} (`python -m runner logs {job.id}` shows why)",
                         "failed", attempt.id, failures=job.failures + 1)
        else:
            count, limit = job.failures + 1, retry.max_failures
            if count > limit:
                self._finish(st.FAILED, f"failed {count} times, more than retry.max_failures ({limit}); last: {detail} "
                                        f"(`python -m runner logs {job.id}` shows why)", "failed", attempt.id, failures=count)
            else:
                delay = retry.backoff_seconds * 2 ** (count - 1)
                self.state.set_job_state(job.id, st.WAITING, f"attempt {attempt.number} failed: {detail}; retry {count} "
                                         f"of {limit} in {delay:.0f}s", "failed", attempt.id, failures=count,
                                         next_launch_at=time.time() + delay)

    def _finish(self, state: str, reason: str, event: str, attempt_id: str | None = None, **values: Any) -> None:
        if self.status is not None and self.status.step > self.job.step:  # the step it was stopped at
            values.setdefault("step", self.status.step)
        self.state.set_job_state(self.job.id, state, self._clean(reason), event, attempt_id, **values)
        self.finished = True


class CustodyLost(Exception):
    """Another supervisor has taken the job over: this process must not act on it any more."""


class StepDeferred(Exception):
    """The step cannot be taken safely right now (the record of what is about to be done could not be
    stored first); it is taken again at the next look."""


class Custody:
    """Which jobs this process may supervise. Here: the jobs of this machine's state that no supervisor
    elsewhere owns, each held by one runner process at a time (its pid and start time in the state).
    :class:`runner.remote.daemon.RemoteCustody` adds leases, snapshots and commands in the job's storage."""

    def __init__(self, state: st.State):
        self.state = state
        self.pid, self.ident = proc.me()

    def candidates(self) -> list[str]:
        """The jobs to supervise when none are named: every active one."""
        return [j.id for j in self.state.jobs(active=True) if not j.remote]

    def take(self, job: st.JobRow) -> bool:
        return not job.remote and self.state.acquire(job.id, self.pid, self.ident)

    def holds(self, job_id: str) -> bool:
        return True

    def give_back(self, job_id: str) -> None:
        self.state.release(job_id, self.pid, self.ident)

    def adopt(self, sup: JobSupervisor) -> None:
        """A job was just taken: its supervisor is ``sup`` (a hook to wrap its backend)."""

    def round(self, held: Mapping[str, JobSupervisor]) -> bool:
        """Once per look at every job; False ends the loop."""
        return True

    def me(self) -> str:
        """This process, in events."""
        return f"runner process {self.pid}"

    def holder(self, job: st.JobRow) -> str:
        """Who supervises a job this process may not take, in notes."""
        if job.remote:
            return f"a supervisor on {job.supervisor}"
        return f"runner process {job.supervisor_pid}"


class Supervisor:
    """Supervises a set of jobs (``submit``: one; ``watch``: every active job) until they end."""

    def __init__(self, state: st.State, display: Display | None = None, environ: Mapping[str, str] | None = None,
                 custody: Custody | None = None):
        self.state = state
        self.display = display or NoDisplay()
        self.environ = os.environ if environ is None else environ
        self.custody = custody or Custody(state)
        self.pid, self.ident = self.custody.pid, self.custody.ident
        self._seen_event: dict[str, int] = {}

    def run(self, job_ids: Iterable[str] | None = None, *, forever: bool = False, until_launched: bool = False) -> dict[str, str]:
        """Supervise ``job_ids`` (default: every active job, including ones submitted meanwhile)
        until none is left to supervise. Returns each job's state at the end. Attempts keep
        running if this process stops early (Ctrl-C): a later ``watch`` adopts them."""
        wanted = list(job_ids) if job_ids is not None else None
        held: dict[str, JobSupervisor] = {}
        results: dict[str, str] = {}
        elsewhere: set[str] = set()
        custody = self.custody
        try:
            while custody.round(held):
                candidates = wanted if wanted is not None else custody.candidates()
                for job_id in candidates:
                    if job_id in held or (wanted is not None and job_id in results):
                        continue
                    job = self.state.job(job_id)
                    if not job.active:
                        results[job_id] = job.state
                    elif custody.take(job):
                        held[job_id] = self._take(job)
                        results.pop(job_id, None)
                        elsewhere.discard(job_id)
                    elif job_id not in elsewhere:
                        elsewhere.add(job_id)
                        self.display.note(f"{job_id} is supervised by {custody.holder(job)}; leaving it be")
                for job_id, sup in list(held.items()):
                    try:
                        sup.step()
                    except StepDeferred:
                        continue
                    except CustodyLost:
                        sup.finished = True
                    lost = not custody.holds(job_id)
                    self._show(sup)
                    if lost:  # another supervisor has it now: let it go without a word to the store
                        self.display.note(f"{job_id}: another supervisor has taken it over; leaving it be")
                        self.state.release(job_id, self.pid, self.ident)
                        del held[job_id]
                    elif sup.finished or (until_launched and sup.launched):
                        custody.give_back(job_id)
                        del held[job_id]
                        results[job_id] = self.state.job(job_id).state
                if not held and not forever:
                    if wanted is not None:
                        results.update({j: self.state.job(j).state for j in wanted if j not in results})
                    return results
                time.sleep(POLL_SECONDS)
            return results
        finally:
            for job_id in held:
                custody.give_back(job_id)

    def _take(self, job: st.JobRow) -> JobSupervisor:
        sup = JobSupervisor(self.state, job.id, self.environ)
        self.custody.adopt(sup)
        events = self.state.events(job.id)
        self._seen_event[job.id] = 0 if len(events) <= 1 else events[-1].id
        if len(events) > 1:  # another runner process worked on it and is gone: say who supervises it now
            attempt = self.state.current_attempt(job.id)
            now = f"; attempt {attempt.number} is {attempt.state}, adopted as it is" if attempt else ""
            self.state.add_event(job.id, "supervising", f"{self.custody.me()} supervises the job{now}",
                                 attempt.id if attempt else None)
        return sup

    def _show(self, sup: JobSupervisor) -> None:
        job = self.state.job(sup.job.id)
        for event in self.state.events(job.id, self._seen_event.get(job.id, 0)):
            self.display.event(job, event)
            self._seen_event[job.id] = event.id
        self.display.progress(job, self.state.current_attempt(job.id), sup.status)
