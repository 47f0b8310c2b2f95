"""What earlier attempts tell about the next one: seconds per step of a job, how often a GPU type's
spot capacity is taken away, and what one checkpoint costs the training loop.

Figures come from the state database; a checkpoint's cost is read at the end of each attempt from
the trainer's TensorBoard events (``checkpoint/stall_seconds``) in the run URI. Where nothing has
been observed yet, each function says what it assumed instead, in words (``basis``)."""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass

from runner import state as st
from trainer import contract

#: Mean spot uptime between preemptions assumed before any has been observed on a GPU type, in hours.
#: A weak prior: it counts as one preemption in this many hours, so a few hours of real spot time
#: outweigh it. Overridable, for a provider or region one knows better.
ENV_PRIOR_MTBF = "RUNNER_SPOT_MTBF_HOURS"
PRIOR_MTBF_HOURS = 4.0
#: What a checkpoint is assumed to cost before one was measured for the job: the loop's stall when a
#: full training state is copied out of a GPU and written (seconds).
DEFAULT_CHECKPOINT_SECONDS = 30.0
STALL_TAG = contract.TAG_CHECKPOINT_STALL


@dataclass(frozen=True)
class PreemptionRate:
    gpu: str | None
    spot: bool
    preemptions: int  # observed
    hours: float  # machine hours observed
    mtbf_hours: float  # the estimate used: math.inf when no preemption is expected
    basis: str

    @property
    def per_hour(self) -> float:
        return 0.0 if self.mtbf_hours == math.inf else 1.0 / self.mtbf_hours


def prior_mtbf_hours() -> float:
    try:
        value = float(os.environ.get(ENV_PRIOR_MTBF, "") or PRIOR_MTBF_HOURS)
    except ValueError:
        return PRIOR_MTBF_HOURS
    return value if value > 0 else PRIOR_MTBF_HOURS


def preemption_rate(state: st.State | None, gpu: str | None, spot: bool, backend: str | None = None,
                    now: float | None = None) -> PreemptionRate:
    """Interruptions per machine hour on ``gpu`` (spot or not), over every job's attempts.

    The estimate is the posterior mean of a Poisson rate under a Gamma prior worth one preemption
    in :data:`PRIOR_MTBF_HOURS` for spot capacity (none for on-demand or this machine):
    (preemptions + 1) / (hours + prior hours). It starts at the prior and follows the observations
    as they accumulate."""
    now = now or time.time()
    n, hours = 0, 0.0
    if state is not None:
        n, seconds = state.preemption_exposure(gpu, spot, backend, now)
        hours = seconds / 3600.0
    where = gpu or "this machine"
    kind = "spot" if spot else "on-demand" if gpu else "local"
    seen = f"{n} preemption{'s' if n != 1 else ''} in {hours:.1f} {kind} hours on {where}"
    if spot:
        prior = prior_mtbf_hours()
        mtbf = (hours + prior) / (n + 1)
        if n == 0 and hours < 0.05:
            basis = f"assumed 1 per {prior:g} h: no {kind} time observed on {where} yet"
        else:
            basis = f"{seen}, with a prior of 1 per {prior:g} h"
        return PreemptionRate(gpu, spot, n, hours, mtbf, basis)
    if n == 0:
        return PreemptionRate(gpu, spot, 0, hours, math.inf, f"none expected ({seen})")
    return PreemptionRate(gpu, spot, n, hours, hours / n, seen)


@dataclass(frozen=True)
class CheckpointCost:
    seconds: float
    samples: int  # checkpoints measured; 0 when assumed
    basis: str


def checkpoint_cost(state: st.State | None, job_name: str, gpu: str | None = None) -> CheckpointCost:
    """What one checkpoint costs the loop for this job: the median of what its earlier attempts
    measured, on the same GPU type when there are any, else on any."""
    rows = state.checkpoint_stalls_of(job_name) if state is not None else []
    same = [r for r in rows if r[0] == gpu] or rows
    if not same:
        return CheckpointCost(DEFAULT_CHECKPOINT_SECONDS, 0,
                              f"assumed {DEFAULT_CHECKPOINT_SECONDS:g} s: no checkpoint of {job_name} measured yet")
    seconds = statistics.median(r[1] for r in same)
    count = sum(r[2] for r in same)
    where = f" on {gpu}" if gpu and same is not rows else ""
    return CheckpointCost(seconds, count, f"median stall of {len(same)} earlier attempt(s) of {job_name}{where} "
                                          f"({count} checkpoints)")


def seconds_per_step(state: st.State, name: str, backend: str, gpu: str | None) -> tuple[float, int] | None:
    """Seconds per training step of earlier attempts of the job ``name`` on this backend and GPU:
    (seconds, steps measured). Training time when the trainer reported it, else the attempt's time."""
    pace = state.training_pace(name, backend, gpu)
    if pace is None:
        return None
    seconds, steps = pace
    return seconds / steps, steps


def checkpoint_stalls(run_uri: str, since: float, until: float | None = None) -> list[float]:
    """The checkpoint stalls (seconds) the trainer logged to TensorBoard under ``run_uri`` between
    ``since`` and ``until`` (unix seconds). Reads only the event files created in that window: one
    per attempt. Empty when there are none or the storage cannot be read."""
    from runner.tbscalars import file_created, scalars
    from trainer import contract
    from trainer.storage import open_storage

    until = until or time.time()
    try:
        storage = open_storage(run_uri)
        keys = storage.list(contract.TENSORBOARD_DIR + "/")
        stalls = []
        for key in keys:
            created = file_created(key)
            if created is None or not (since - 60 <= created <= until):
                continue
            data = storage.get_bytes(key)
            if data:
                stalls += [s.value for s in scalars(data, {STALL_TAG}) if since - 60 <= s.wall_time <= until + 60]
        return stalls
    except Exception:  # a report and a launch must not fail because a log could not be read
        return []
