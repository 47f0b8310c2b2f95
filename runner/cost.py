"""What a job costs: an estimate before launch, and a report of what was billed after.

A billing segment is one attempt's time on a machine (:class:`runner.state.SegmentRow`): the
provider's own record once the backend has settled it, else the runner's observation of start and
end at the rate it launched at. The report adds up, per job: billed GPU hours and dollars (compute
and disk), what the same hours would have cost on-demand, the time a machine was billed but not
training (boot, image pull, loading), preemptions, and the work that preemptions threw away
(steps between the last checkpoint and the preemption, recomputed after the relaunch)."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from runner import interval as iv
from runner import observed
from runner import state as st
from runner.catalog import GpuType, load_catalog

if TYPE_CHECKING:
    from trainer.config import TrainConfig

#: Hours in the month that per-GB-month disk prices are quoted for (RunPod: 730).
HOURS_PER_MONTH = 730.0
#: Billed minutes from asking for a machine to the trainer training on it (pod start, image pull, data
#: and checkpoint load), assumed until earlier attempts on that backend and GPU have shown it.
DEFAULT_RESTART_MINUTES = {"runpod": 5.0, "docker": 1.0, "local": 0.2}


# --- after: the report ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IntervalAdvice:
    """The checkpoint interval Young/Daly call for on this job's GPU, beside the one in use."""

    in_use: str  # "10 min or 1000 steps", "auto (7.2 min)"
    recommended_minutes: float
    checkpoint_seconds: float
    mtbf_hours: float  # math.inf: no preemption expected
    checkpoint_basis: str
    mtbf_basis: str

    def to_dict(self) -> dict[str, Any]:
        return {"in_use": self.in_use, "recommended_minutes": round(self.recommended_minutes, 2),
                "checkpoint_seconds": round(self.checkpoint_seconds, 3), "checkpoint_basis": self.checkpoint_basis,
                "mtbf_hours": None if self.mtbf_hours == math.inf else round(self.mtbf_hours, 3),
                "mtbf_basis": self.mtbf_basis}


@dataclass(frozen=True)
class JobCost:
    job_id: str
    gpu_hours: float  # billed hours x GPUs
    usd: float  # everything billed: compute and disk
    on_demand_usd: float  # the same hours at the on-demand price (and the same disk)
    saving_usd: float
    preemptions: int
    attempts: int
    name: str = ""
    state: str = ""
    gpu: str | None = None
    capacity: str = ""  # "spot", "on-demand", "spot+on-demand", "local"
    compute_usd: float = 0.0
    storage_usd: float = 0.0
    idle_hours: float = 0.0  # billed while the trainer was not training (included in gpu_hours)
    idle_usd: float = 0.0
    lost_steps: int = 0  # steps trained, then thrown away by preemptions and trained again
    lost_hours: float = 0.0
    lost_usd: float = 0.0
    steps: int = 0  # training steps reached
    usd_per_1k_steps: float | None = None
    billed_by: str = "runner"  # "provider" when every segment is the provider's record, "mixed", "runner"
    unit: str = "GPU"  # what gpu_hours are hours of: "GPU", or "machine" for a CPU job (see hours_unit)
    #: A supervisor elsewhere (an always-on machine or a RunPod CPU pod): its hours on this job and this
    #: job's share of its dollars (included in ``usd``, and in ``on_demand_usd``: it costs the same either way).
    supervisor_hours: float = 0.0
    supervisor_usd: float = 0.0
    interval: IntervalAdvice | None = field(default=None, compare=False)

    @property
    def saving_fraction(self) -> float | None:
        return self.saving_usd / self.on_demand_usd if self.on_demand_usd > 0 else None

    def to_dict(self) -> dict[str, Any]:
        out = {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items() if k != "interval"}
        out["interval"] = self.interval.to_dict() if self.interval else None
        return out


def _fraction(seg: st.SegmentRow, since: float | None, now: float) -> float:
    """The share of a segment's billed time that falls on or after ``since``."""
    if since is None:
        return 1.0
    end = seg.ended if seg.ended is not None else now
    length = end - seg.started
    if length <= 0:
        return 1.0 if seg.started >= since else 0.0
    return min(1.0, max(0.0, (end - max(seg.started, since)) / length))


def lost_work(attempt: st.AttemptRow, seg: st.SegmentRow, job_seconds_per_step: float | None,
          now: float) -> tuple[int, float, float]:
    """(steps, hours, dollars) an interrupted attempt trained beyond its last checkpoint."""
    if attempt.end_step is None or attempt.last_checkpoint_step is None:
        return 0, 0.0, 0.0
    steps = max(0, attempt.end_step - attempt.last_checkpoint_step)
    if not steps:
        return 0, 0.0, 0.0
    per_step = job_seconds_per_step
    trained = attempt.end_step - (attempt.start_step or 0)
    if attempt.train_started is not None and attempt.train_ended is not None and trained > 0:
        per_step = (attempt.train_ended - attempt.train_started) / trained
    if per_step is None:
        return steps, 0.0, 0.0
    hours = steps * per_step / 3600.0
    seg_hours = seg.hours(now)
    rate = seg.cost(now) / seg_hours if seg_hours > 0 else seg.rate_per_hour  # what this machine really cost
    return steps, hours, hours * rate


def _interval_in_use(job: st.JobRow, attempts: list[st.AttemptRow]) -> str:
    policy = job.spec.train.checkpoint
    minutes, steps = policy.every_minutes, policy.every_steps
    if minutes == "auto":
        chosen = [a.checkpoint_every_minutes for a in attempts if a.checkpoint_every_minutes]
        text = f"auto ({chosen[-1]:.1f} min)" if chosen else "auto"
    else:
        text = f"every {float(minutes):g} min" if minutes else ""
    if steps:
        text += (" or " if text else "") + f"every {steps} steps"
    return text


def advise_interval(state: st.State, job: st.JobRow, gpu: str | None, spot: bool,
                    attempts: list[st.AttemptRow] | None = None, memo: dict | None = None) -> IntervalAdvice:
    """``memo`` keeps observations between the jobs of one report (they depend on the GPU and job name only)."""
    memo = {} if memo is None else memo
    key = ("rate", gpu, spot, job.backend)
    if key not in memo:
        memo[key] = observed.preemption_rate(state, gpu, spot, job.backend)
    rate = memo[key]
    key = ("checkpoint", job.name, gpu)
    if key not in memo:
        memo[key] = observed.checkpoint_cost(state, job.name, gpu)
    cost = memo[key]
    minutes = iv.optimal_minutes(cost.seconds, rate.mtbf_hours * 3600)
    return IntervalAdvice(_interval_in_use(job, attempts if attempts is not None else state.attempts(job.id)), minutes,
                          cost.seconds, rate.mtbf_hours, cost.basis, rate.basis)


def job_cost(state: st.State, job: st.JobRow, now: float | None = None, since: float | None = None,
             advice: bool = False, memo: dict | None = None) -> JobCost:
    """The cost report of one job; with ``since``, only billed time on or after it (unix seconds)."""
    now = now or time.time()
    segments = state.segments(job.id)
    attempts = {a.id: a for a in state.attempts(job.id)}
    gpu_hours = compute = storage = on_demand = idle_h = idle_usd = lost_h = lost_usd = 0.0
    preemptions = lost_steps = 0
    kinds, sources, counted = set(), set(), []
    trained = [a for a in attempts.values() if a.train_started is not None and a.train_ended is not None
               and a.end_step is not None and a.end_step > (a.start_step or 0)]
    job_per_step = (sum(a.train_ended - a.train_started for a in trained)
                    / sum(a.end_step - (a.start_step or 0) for a in trained)) if trained else None
    for seg in segments:
        f = _fraction(seg, since, now)
        if f <= 0:
            continue
        counted.append(seg)
        hours = seg.hours(now) * f
        gpu_hours += hours * seg.gpu_count
        compute += seg.cost(now) * f
        storage += seg.storage_cost(now) * f
        on_demand += hours * seg.on_demand_rate_per_hour + seg.storage_cost(now) * f
        if seg.train_seconds is not None:
            idle = max(0.0, seg.hours(now) - seg.train_seconds / 3600.0) * f
            idle_h += idle
            idle_usd += idle * (seg.cost(now) / seg.hours(now) if seg.hours(now) > 0 else seg.rate_per_hour)
        kinds.add("local" if own_machine(job.backend) else "spot" if seg.spot else "on-demand")
        sources.add("provider" if seg.provider_usd is not None else "runner")
        attempt = attempts.get(seg.attempt_id)
        if seg.end_reason == "interrupted" and (since is None or (seg.ended or now) >= since):
            preemptions += 1
            if attempt is not None:
                s, h, d = lost_work(attempt, seg, job_per_step, now)
                lost_steps, lost_h, lost_usd = lost_steps + s, lost_h + h, lost_usd + d
    supervisor_h = supervisor_usd = 0.0
    for sseg in state.supervisor_segments(job.id):
        f = _fraction(sseg, since, now)  # type: ignore[arg-type]  (started/ended, as a billing segment)
        supervisor_h += sseg.hours(now) * f
        supervisor_usd += sseg.cost(now) * f
    usd = compute + storage + supervisor_usd
    on_demand += supervisor_usd
    steps = job.step
    spot_wanted = job.spec.resources.spot
    wanted = job.wanted_gpus()
    gpu = counted[-1].gpu if counted else (wanted[0] if len(wanted) == 1 else None)
    capacity = "+".join(k for k in ("spot", "on-demand", "local") if k in kinds) or (
        "local" if own_machine(job.backend) else "spot" if spot_wanted else "on-demand")
    billed_by = "mixed" if len(sources) > 1 else (sources.pop() if sources else "runner")
    interval = None
    if advice:
        spot = bool(counted[-1].spot) if counted else spot_applies(job.backend, spot_wanted)
        interval = advise_interval(state, job, gpu, spot, list(attempts.values()), memo)
    return JobCost(job.id, gpu_hours, usd, on_demand, on_demand - usd, preemptions, len(counted), name=job.name,
                   state=job.state, gpu=gpu, capacity=capacity, compute_usd=compute, storage_usd=storage,
                   idle_hours=idle_h, idle_usd=idle_usd, lost_steps=lost_steps, lost_hours=lost_h, lost_usd=lost_usd,
                   steps=steps, usd_per_1k_steps=usd / steps * 1000 if steps else None, billed_by=billed_by,
                   unit=hours_unit(job), interval=interval, supervisor_hours=supervisor_h,
                   supervisor_usd=supervisor_usd)


def hours_label(units: set[str]) -> str:
    """What a sum of billed hours is hours of, for jobs of these units: "GPU", "machine", or "GPU or machine"."""
    return " or ".join(sorted(units)) if units else "GPU"


@dataclass(frozen=True)
class Report:
    jobs: list[JobCost]
    since: float | None
    generated: float

    def total(self) -> dict[str, Any]:
        keys = ("gpu_hours", "usd", "compute_usd", "storage_usd", "on_demand_usd", "saving_usd", "idle_hours",
                "idle_usd", "preemptions", "lost_steps", "lost_hours", "lost_usd", "steps", "attempts", "supervisor_hours",
                "supervisor_usd")
        total: dict[str, Any] = {k: sum(getattr(c, k) for c in self.jobs) for k in keys}
        total["usd_per_1k_steps"] = total["usd"] / total["steps"] * 1000 if total["steps"] else None
        total["unit"] = hours_label({c.unit for c in self.jobs})
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in total.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since, "generated": self.generated, "jobs": [c.to_dict() for c in self.jobs],
                "total": self.total()}


def report(state: st.State | None, jobs: list[st.JobRow], *, since: float | None = None,
           now: float | None = None) -> Report:
    """The cost of ``jobs``; with ``since``, only what was billed from then on (and only the jobs
    that were billed, or submitted, since)."""
    now = now or time.time()
    costs, memo = [], {}
    for job in jobs:
        c = job_cost(state, job, now, since, advice=True, memo=memo)
        if since is None or c.attempts or job.created >= since:
            costs.append(c)
    return Report(costs, since, now)


CSV_COLUMNS = ("job_id", "name", "state", "gpu", "capacity", "attempts", "gpu_hours", "compute_usd", "storage_usd", "usd",
               "on_demand_usd", "saving_usd", "idle_hours", "idle_usd", "preemptions", "lost_steps", "lost_hours",
               "lost_usd", "steps", "usd_per_1k_steps", "billed_by", "checkpoint_interval", "recommended_interval_min",
               "supervisor_hours", "supervisor_usd")


def to_csv(rep: Report) -> str:
    """One row per job, then a total row; numbers unrounded beyond the cent where they are dollars."""
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in rep.jobs:
        d = c.to_dict()
        d["checkpoint_interval"] = c.interval.in_use if c.interval else ""
        d["recommended_interval_min"] = round(c.interval.recommended_minutes, 2) if c.interval else ""
        w.writerow(["" if d.get(k) is None else d.get(k) for k in CSV_COLUMNS])
    t = rep.total()
    w.writerow(["total", "", "", "", "", *["" if t.get(k) is None else t.get(k) for k in CSV_COLUMNS[5:20]], "", "", "",
                *[t[k] for k in CSV_COLUMNS[23:]]])
    return out.getvalue()


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([hdw])$")


def parse_since(text: str, now: float | None = None) -> float:
    """``2026-11-20``, ``2026-11-20T14:00`` (local time unless it says otherwise), or ``12h``/``7d``/``2w`` ago."""
    text = str(text).strip()
    m = _RELATIVE.match(text)
    if m:
        return (now or time.time()) - float(m.group(1)) * {"h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: expected a date (2026-11-20), a date and time (2026-11-20T14:00), "
                         f"or a span ago (12h, 7d, 2w)") from None
    return when.timestamp()  # naive: local time


# --- before: the estimate ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    rate_per_hour: float  # USD per hour for all the job's GPUs
    on_demand_rate_per_hour: float
    steps: int | None
    seconds_per_step: float | None
    basis: str  # where seconds_per_step comes from, in words
    storage_rate_per_hour: float = 0.0
    preemption: observed.PreemptionRate | None = None
    checkpoint: observed.CheckpointCost | None = None
    interval_minutes: float | None = None  # the time-based interval the job will checkpoint at
    interval_basis: str = ""
    restart_minutes: float = 0.0
    restart_basis: str = ""
    #: A supervisor elsewhere for the whole job (``supervisor: docker|runpod``), USD per hour, and where from.
    supervisor_rate_per_hour: float = 0.0
    supervisor_basis: str = ""
    expectation: iv.Expectation | None = None  # with preemptions at the observed rate

    @property
    def hours(self) -> float | None:
        """Training time alone: steps x seconds per step."""
        if self.steps is None or self.seconds_per_step is None:
            return None
        return self.steps * self.seconds_per_step / 3600

    @property
    def usd(self) -> float | None:
        """Training time alone at the job's rate."""
        return None if self.hours is None else self.hours * self.rate_per_hour

    @property
    def expected_hours(self) -> float | None:
        """Billed machine time with boots, checkpoints and the expected preemptions."""
        return self.expectation.uptime_h if self.expectation else self.hours

    @property
    def expected_usd(self) -> float | None:
        h = self.expected_hours
        return None if h is None else h * (self.rate_per_hour + self.storage_rate_per_hour + self.supervisor_rate_per_hour)

    @property
    def on_demand_usd(self) -> float | None:
        """The same training on-demand: no preemptions, one boot, the same checkpoints."""
        if self.expectation is None:
            return None if self.hours is None else self.hours * self.on_demand_rate_per_hour
        e = self.expectation
        return (self.hours + e.checkpoint_h + self.restart_minutes / 60) * (self.on_demand_rate_per_hour
                                                                            + self.storage_rate_per_hour)

    def to_dict(self) -> dict[str, Any]:
        e = self.expectation
        return {
            "rate_per_hour": round(self.rate_per_hour, 4), "on_demand_rate_per_hour": round(self.on_demand_rate_per_hour, 4),
            "storage_rate_per_hour": round(self.storage_rate_per_hour, 6), "steps": self.steps,
            "seconds_per_step": self.seconds_per_step, "estimate_basis": self.basis,
            "training_hours": self.hours, "training_usd": self.usd,
            "expected_hours": self.expected_hours, "expected_usd": self.expected_usd,
            "on_demand_usd": self.on_demand_usd,
            "expected_preemptions": e.preemptions if e else None, "expected_lost_hours": e.lost_h if e else None,
            "expected_restart_hours": (e.restart_h + e.boot_h) if e else None,
            "expected_checkpoint_hours": e.checkpoint_h if e else None,
            "preemption_mtbf_hours": (None if self.preemption is None or self.preemption.mtbf_hours == math.inf
                                      else self.preemption.mtbf_hours),
            "preemption_basis": self.preemption.basis if self.preemption else None,
            "checkpoint_seconds": self.checkpoint.seconds if self.checkpoint else None,
            "checkpoint_basis": self.checkpoint.basis if self.checkpoint else None,
            "checkpoint_interval_minutes": self.interval_minutes, "checkpoint_interval_basis": self.interval_basis,
            "restart_minutes": self.restart_minutes, "restart_basis": self.restart_basis,
            "supervisor_rate_per_hour": self.supervisor_rate_per_hour, "supervisor_basis": self.supervisor_basis,
            "expected_supervisor_usd": (None if self.expected_hours is None
                                        else self.expected_hours * self.supervisor_rate_per_hour),
        }


#: Backends that run on machines of yours (this one, or a Docker engine you run): no provider bills
#: them, so they are free unless the job says what an hour costs you (``resources.price_per_hour``, or
#: ``RUNNER_LOCAL_USD_PER_HOUR`` for every job); there is no spot capacity and no catalog price.
OWN_MACHINE_BACKENDS = ("local", "docker")
#: What an hour of a machine of yours costs, in USD, for a job that does not say (default: free).
ENV_LOCAL_RATE = "RUNNER_LOCAL_USD_PER_HOUR"


def own_machine(backend: str) -> bool:
    return backend in OWN_MACHINE_BACKENDS


def own_machine_rate(price_per_hour: float | None = None) -> float:
    """USD per hour of a machine of yours: the job's ``resources.price_per_hour``, else
    ``RUNNER_LOCAL_USD_PER_HOUR``, else nothing."""
    if price_per_hour is not None:
        return float(price_per_hour)
    try:
        return max(0.0, float(os.environ.get(ENV_LOCAL_RATE, "0") or 0))
    except ValueError:
        raise ValueError(f"{ENV_LOCAL_RATE}={os.environ[ENV_LOCAL_RATE]!r} is not a number of "
                         f"dollars per hour") from None


def spot_applies(backend: str, spot: bool) -> bool:
    """Spot capacity is a provider's: a machine of yours is neither spot nor preempted by anyone."""
    return bool(spot) and not own_machine(backend)


def hours_unit(job: Any) -> str:
    """What a job's billed hours are hours of: "GPU" when it asks for a GPU on a provider or a Docker
    engine, "machine" for a CPU job (or one on this machine, whose devices are whatever it has)."""
    return "GPU" if job.backend != "local" and job.wanted_gpus() else "machine"


def rate(gpu: GpuType | None, count: int, spot: bool, backend: str,
         price_per_hour: float | None = None) -> tuple[float, float]:
    """(rate, on-demand rate) in USD per hour for the whole attempt: a provider's catalog price, or
    for a machine of yours what the job says an hour of it costs (default: nothing)."""
    if own_machine(backend):
        own = own_machine_rate(price_per_hour)
        return own, own
    if gpu is None:
        return 0.0, 0.0
    return gpu.price(spot) * count, gpu.on_demand * count


def supervisor_rate(place: str) -> tuple[float, str]:
    """What a supervisor elsewhere costs an hour (the whole of it: a job alone pays all of it), and why."""
    if place == "runpod":
        return load_catalog().supervisor_pod_usd_per_hour, "a RunPod CPU pod, catalog price"
    if place == "docker":
        told = os.environ.get("RUNNER_SUPERVISOR_USD_PER_HOUR")
        if told:
            return float(told), "your always-on Docker host (RUNNER_SUPERVISOR_USD_PER_HOUR)"
        return 0.0, "your always-on Docker host: free unless RUNNER_SUPERVISOR_USD_PER_HOUR says what it costs"
    return 0.0, ""


def storage_rate(backend: str, container_disk_gb: int, volume_gb: int) -> float:
    """USD per hour for an attempt's disks while it runs (RunPod bills container disk and volume per
    GB-month while a pod runs); the machines of the other backends are yours."""
    if backend != "runpod":
        return 0.0
    prices = load_catalog().storage_usd_per_gb_month
    return (container_disk_gb * prices.get("container_disk", 0.0) + volume_gb * prices.get("volume", 0.0)) / HOURS_PER_MONTH


def restart_minutes(state: st.State | None, backend: str, gpu: str | None) -> tuple[float, str]:
    """Billed minutes from launch to training, the median over earlier attempts on this backend and GPU."""
    rows = state.launch_delays(backend, gpu) if state is not None else []
    if rows:
        import statistics

        return statistics.median(rows) / 60, f"median of {len(rows)} earlier launch(es) on {gpu or backend}"
    default = DEFAULT_RESTART_MINUTES.get(backend, 5.0)
    return default, f"assumed {default:g} min: no earlier launch on {gpu or backend}"


def checkpoint_minutes(train: TrainConfig, job_name: str, gpu: str | None, spot: bool, backend: str,
                       state: st.State | None) -> tuple[float | None, str, observed.PreemptionRate, observed.CheckpointCost]:
    """The time-based interval a launch will use (minutes, and why): the job file's own, or for
    ``every_minutes: auto`` Young/Daly's from the measured cost of a checkpoint of this job and the
    preemption rate observed for this GPU."""
    prate = observed.preemption_rate(state, gpu, spot, backend)
    cost = observed.checkpoint_cost(state, job_name, gpu)
    auto = iv.optimal_minutes(cost.seconds, prate.mtbf_hours * 3600)
    raw = train.checkpoint.every_minutes
    if raw == "auto":
        mtbf = "no preemption expected" if prate.mtbf_hours == math.inf else f"MTBF {prate.mtbf_hours:.2f} h"
        return auto, f"auto: Young/Daly for a {cost.seconds:.2f} s checkpoint at {mtbf}", prate, cost
    if raw is None:
        return None, "steps only", prate, cost
    return float(raw), f"job file; Young/Daly would say {auto:.1f} min", prate, cost


def estimate(job: Any, state: st.State | None = None) -> Estimate:
    """Time and cost of ``job`` (a validated :class:`runner.spec.Job`, not a pipeline: see
    :func:`estimate_stages`) before it is launched:
    steps x seconds per step, from earlier runs of the same job on the same GPU when there are any,
    else from the catalog's rough throughput for the recipe; then the expected overhead of
    preemptions at the GPU's observed rate, with the checkpoint interval the launch will use."""
    catalog = load_catalog()
    gpu = job.gpus[0] if job.gpus else None
    spot = spot_applies(job.backend, job.spec.resources.spot)
    per_hour, on_demand = rate(gpu, job.spec.resources.gpu_count, spot, job.backend, job.spec.resources.price_per_hour)
    disks = storage_rate(job.backend, job.spec.resources.container_disk_gb, job.spec.resources.volume_gb)
    train = job.train
    steps = train.max_steps
    measured_gpu = gpu.alias if gpu and job.backend != "local" else None  # local attempts record no GPU
    measured = observed.seconds_per_step(state, job.name, job.backend, measured_gpu) if state else None
    minutes, minutes_basis, prate, ccost = checkpoint_minutes(job.train, job.name, measured_gpu, spot, job.backend,
                                                              state)
    restart, restart_basis = restart_minutes(state, job.backend, measured_gpu)
    supervisor, supervisor_basis = supervisor_rate(job.spec.supervisor)
    extra = dict(storage_rate_per_hour=disks, preemption=prate, checkpoint=ccost, interval_minutes=minutes,
                 interval_basis=minutes_basis, restart_minutes=restart, restart_basis=restart_basis,
                 supervisor_rate_per_hour=supervisor, supervisor_basis=supervisor_basis)
    if measured is not None:
        seconds, basis = measured[0], f"measured over {measured[1]} earlier steps of {job.name}"
    else:
        known = {**catalog.tokens_per_second, **catalog.local_cpu_tokens_per_second}
        recipe = train.model.recipe if train.model.recipe in known else "custom"
        # A token is a piano-roll frame for the music recipes (a window of them is one example).
        block = (train.data.midi.window if train.data.format == "midi" else train.data.block_size) if train.data else 256
        tokens_per_step = train.batch_size * train.grad_accum * block
        if job.backend == "local" or (gpu is None and own_machine(job.backend)):  # a CPU of yours
            tps = catalog.local_cpu_tokens_per_second.get(recipe)
            where = "this machine's CPU"
        else:
            ref = catalog.tokens_per_second.get(recipe)
            tps = ref * gpu.relative_speed if (ref and gpu) else None
            where = gpu.alias if gpu else "an unknown GPU"
        if tps is None:
            return Estimate(per_hour, on_demand, steps, None, f"no throughput figure for recipe {recipe!r} on {where} yet",
                            **extra)
        seconds, basis = tokens_per_step / tps, f"catalog figure for {recipe} on {where}: ~{tps:,.0f} tokens/s, rough"
    expectation = None
    if steps is not None:
        work_h = steps * seconds / 3600
        every = _effective_interval_minutes(minutes, train.checkpoint.every_steps, seconds, work_h)
        expectation = iv.expected(work_h, every, ccost.seconds, prate.mtbf_hours, restart)
    return Estimate(per_hour, on_demand, steps, seconds, basis, expectation=expectation, **extra)


def estimate_stages(job: Any, state: st.State | None = None) -> list[tuple[str | None, Estimate]]:
    """:func:`estimate` of each stage of a pipeline, in order, by stage name; of the job itself (name
    None) when it is no pipeline."""
    if not job.spec.stages:
        return [(None, estimate(job, state))]
    from dataclasses import replace

    return [(name, estimate(replace(job, spec=job.spec.stage_spec(name)), state)) for name in job.spec.stages]


def _effective_interval_minutes(minutes: float | None, every_steps: int | None, seconds_per_step: float,
                                work_h: float) -> float:
    """Checkpoints come every ``minutes`` or every ``every_steps`` steps, whichever is first."""
    candidates = [m for m in (minutes, every_steps * seconds_per_step / 60 if every_steps else None) if m]
    return min(candidates) if candidates else work_h * 60
