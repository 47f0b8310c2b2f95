"""Replay a job against preemptions: what spot costs with this runner's checkpoint interval, with a
fixed interval, and what on-demand costs, in dollars and wall time.

The model (the same as :func:`runner.interval.expected`, which gives its exact expectation under
Poisson preemptions): a job needs ``work_hours`` of training. A launch first boots for
``restart_minutes`` (billed: pod start, image pull, loading the checkpoint). Training then
checkpoints every ``interval`` minutes of training, each checkpoint stalling it ``checkpoint_seconds``.
A preemption, at any moment of billed machine time (a boot included), throws away the work since the
last completed checkpoint; the next machine comes ``relaunch_wait_minutes`` later (unbilled) and
boots again. Preemptions come from a Poisson process at a given mean time between them, or from a
recorded trace of the hours of machine time at which they happened.

Each trial replays every strategy against the same preemption times (common random numbers), so the
difference between strategies is measured with far less noise than either cost alone."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from runner import interval as iv


@dataclass(frozen=True)
class Scenario:
    work_hours: float
    spot_rate: float  # USD per hour for the job's GPUs, spot
    on_demand_rate: float
    checkpoint_seconds: float
    restart_minutes: float = 5.0
    mtbf_hours: float | None = 2.0  # Poisson preemptions; None with a trace
    trace: tuple[float, ...] | None = None  # hours of machine time at which preemptions happen
    fixed_minutes: float = 60.0
    relaunch_wait_minutes: float = 1.0
    storage_rate: float = 0.0  # USD per hour of machine time for disks, the same spot or on-demand
    gpu: str = ""

    @property
    def auto_minutes(self) -> float:
        """The interval this runner chooses for ``every_minutes: auto``: Young/Daly within its bounds."""
        if self.mtbf_hours is None:  # a trace: its own mean time between preemptions
            mtbf = trace_mtbf_hours(self.trace or ())
        else:
            mtbf = self.mtbf_hours
        return iv.optimal_minutes(self.checkpoint_seconds, mtbf * 3600)


@dataclass(frozen=True)
class Strategy:
    name: str
    spot: bool
    interval_minutes: float


@dataclass(frozen=True)
class Trial:
    uptime_h: float  # billed machine hours
    wall_h: float
    usd: float
    preemptions: int
    lost_h: float  # training thrown away and done again
    restart_h: float  # boots after preemptions
    checkpoint_h: float


@dataclass(frozen=True)
class Stat:
    mean: float
    stderr: float  # standard error of the mean (0 for a single trial)

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        if len(values) < 2:
            return cls(values[0] if values else math.nan, 0.0)
        return cls(statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values)))


@dataclass(frozen=True)
class Result:
    strategy: Strategy
    trials: int
    usd: Stat
    wall_h: Stat
    uptime_h: Stat
    preemptions: Stat
    lost_h: Stat
    lost_usd: Stat
    restart_h: Stat
    checkpoint_h: Stat
    expected: iv.Expectation | None = None  # exact, under Poisson preemptions
    expected_usd: float | None = None
    samples_usd: list[float] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"strategy": self.strategy.name, "spot": self.strategy.spot,
                               "interval_minutes": round(self.strategy.interval_minutes, 3), "trials": self.trials}
        for key in ("usd", "wall_h", "uptime_h", "preemptions", "lost_h", "lost_usd", "restart_h", "checkpoint_h"):
            stat = getattr(self, key)
            out[key] = round(stat.mean, 6)
            out[key + "_stderr"] = round(stat.stderr, 6)
        out["expected"] = {k: round(v, 6) for k, v in asdict(self.expected).items()} if self.expected else None
        out["expected_usd"] = round(self.expected_usd, 6) if self.expected_usd is not None else None
        return out


def trace_mtbf_hours(trace: Iterable[float]) -> float:
    """Mean machine time between the preemptions of a trace (its span over its count)."""
    times = sorted(trace)
    return times[-1] / len(times) if times else math.inf


def poisson_times(rng: random.Random, mtbf_hours: float) -> Iterator[float]:
    t = 0.0
    while True:
        t += rng.expovariate(1.0 / mtbf_hours)
        yield t


def replay(work_h: float, interval_min: float, checkpoint_s: float, restart_min: float, preemptions: Iterator[float],
           rate: float, wait_min: float = 0.0) -> Trial:
    """One run of the job against preemptions at the given machine-time hours (increasing)."""
    tau, c, r = interval_min / 60.0, checkpoint_s / 3600.0, restart_min / 60.0
    nxt = next(preemptions, math.inf)
    u = done = lost = restart = ckpt = 0.0
    count = 0

    def boot(after_preemption: bool) -> None:
        """Boot until one boot gets through; its whole time is a restart cost after a preemption (the
        first launch's boot, preempted or not, is the job's start-up and counted in neither)."""
        nonlocal u, nxt, count, restart
        start = u
        while u + r > nxt:
            u, count, nxt = nxt, count + 1, next(preemptions, math.inf)
        u += r
        if after_preemption:
            restart += u - start

    boot(False)
    while done < work_h - 1e-12:
        step = min(tau, work_h - done)
        last = done + step >= work_h - 1e-12
        stretch = step + (0.0 if last else c)
        if u + stretch <= nxt:
            u += stretch
            done += step
            ckpt += stretch - step
        else:
            lost += nxt - u
            u, count, nxt = nxt, count + 1, next(preemptions, math.inf)
            boot(True)
    return Trial(u, u + count * wait_min / 60.0, u * rate, count, lost, restart, ckpt)


def strategies(s: Scenario) -> list[Strategy]:
    return [Strategy(f"spot, auto ({s.auto_minutes:.1f} min)", True, s.auto_minutes),
            Strategy(f"spot, every {s.fixed_minutes:g} min", True, s.fixed_minutes),
            Strategy("on-demand", False, s.fixed_minutes)]


def simulate(s: Scenario, trials: int = 2000, seed: int = 0) -> list[Result]:
    """Every strategy over ``trials`` replays (one with a trace: it is what it is)."""
    if s.trace is not None:
        trials = 1
    runs: dict[str, list[Trial]] = {}
    plans = strategies(s)
    for i in range(trials):
        for plan in plans:
            if not plan.spot:
                times: Iterator[float] = iter(())
            elif s.trace is not None:
                times = iter(sorted(s.trace))
            else:
                times = poisson_times(random.Random(seed * 1_000_003 + i), s.mtbf_hours)
            rate = (s.spot_rate if plan.spot else s.on_demand_rate) + s.storage_rate
            runs.setdefault(plan.name, []).append(replay(s.work_hours, plan.interval_minutes, s.checkpoint_seconds,
                                                         s.restart_minutes, times, rate, s.relaunch_wait_minutes))
    results = []
    for plan in plans:
        got = runs[plan.name]
        rate = (s.spot_rate if plan.spot else s.on_demand_rate) + s.storage_rate
        expected = expected_usd = None
        if s.trace is None or not plan.spot:
            mtbf = (s.mtbf_hours or math.inf) if plan.spot else math.inf
            expected = iv.expected(s.work_hours, plan.interval_minutes, s.checkpoint_seconds, mtbf, s.restart_minutes)
            expected_usd = expected.uptime_h * rate
        usd = [t.usd for t in got]
        results.append(Result(
            plan, len(got), Stat.of(usd), Stat.of([t.wall_h for t in got]), Stat.of([t.uptime_h for t in got]),
            Stat.of([float(t.preemptions) for t in got]), Stat.of([t.lost_h for t in got]),
            Stat.of([t.lost_h * rate for t in got]), Stat.of([t.restart_h for t in got]),
            Stat.of([t.checkpoint_h for t in got]), expected, expected_usd, usd))
    return results


def paired_difference(a: Result, b: Result) -> Stat:
    """Mean and standard error of a's cost minus b's, trial by trial (the trials share their preemptions)."""
    return Stat.of([x - y for x, y in zip(a.samples_usd, b.samples_usd, strict=True)])


def summary(s: Scenario, results: list[Result]) -> list[str]:
    """What the numbers mean, in sentences."""
    auto, fixed, od = results
    lines = []

    def versus(r: Result) -> str:
        diff = 1 - r.usd.mean / od.usd.mean
        return f"{abs(diff):.0%} {'less' if diff >= 0 else 'more'} than on-demand"

    lines.append(f"Spot with this runner's interval ({auto.strategy.interval_minutes:.1f} min) is expected to cost "
                 f"${auto.usd.mean:.2f}, {versus(auto)} (${od.usd.mean:.2f}): ${od.usd.mean - auto.usd.mean:.2f} "
                 f"{'cheaper' if auto.usd.mean <= od.usd.mean else 'dearer'}, in {auto.wall_h.mean:.1f} h of wall time "
                 f"against {od.wall_h.mean:.1f} h.")
    lines.append(f"Its {auto.preemptions.mean:.1f} preemptions throw away {auto.lost_h.mean:.2f} h of work "
                 f"(${auto.lost_usd.mean:.2f}) and cost {auto.restart_h.mean:.2f} h of relaunches; checkpoints take "
                 f"{auto.checkpoint_h.mean:.2f} h.")
    lines.append(f"With a fixed {s.fixed_minutes:g}-min interval instead: ${fixed.usd.mean:.2f} ({versus(fixed)}), "
                 f"{fixed.lost_h.mean:.2f} h of work lost (${fixed.lost_usd.mean:.2f}).")
    if auto.trials > 1:
        d = paired_difference(fixed, auto)
        lines.append(f"The auto interval saves ${d.mean:.2f} ± {d.stderr:.2f} a run against the fixed one "
                     f"({auto.trials} paired trials).")
    return lines


def parse_trace(text: str) -> tuple[float, ...]:
    """Preemption times in hours of machine time: one per line, or comma-separated, or a JSON list."""
    import json

    text = text.strip()
    if text.startswith("["):
        values = json.loads(text)
    else:
        values = [v for line in text.splitlines() for v in line.split("#")[0].replace(",", " ").split()]
    times = tuple(sorted(float(v) for v in values))
    if any(t < 0 for t in times):
        raise ValueError("preemption times must be hours >= 0")
    return times


def trace_from_job(segments: list[Any]) -> tuple[float, ...]:
    """A recorded job's preemptions as hours of its machine time (its billing segments, in order)."""
    t, times = 0.0, []
    for seg in segments:
        t += seg.hours()
        if seg.end_reason == "interrupted":
            times.append(t)
    return tuple(times)


class ScenarioError(ValueError):
    """A figure of the scenario that cannot be had: the message says which and what to give."""


def build_scenario(state: Any, job: Any, gpu: Any, hours: Any, mtbf_hours: Any, checkpoint_seconds: Any,
                   restart_minutes: Any, fixed_minutes: Any, wait_minutes: Any, trace: Any,
                   trace_job: Any) -> tuple[Scenario, list[str]]:
    """The scenario to replay from ``runner simulate``'s options, every figure not given taken from the
    job file and earlier runs in ``state``; and, in words, where each figure comes from."""
    from runner import observed
    from runner.catalog import load_catalog
    from runner.cost import estimate_stages, storage_rate
    from runner.cost import restart_minutes as observed_restart
    from runner.state import StateError

    notes: list[str] = []
    count, spec_job, disks = 1, None, 0.0
    if job is not None:
        from runner.spec import load_job
        from trainer.jobfile import JobFileError

        try:
            spec_job = load_job(str(job), gpu=None if gpu is None else str(gpu))
        except JobFileError as e:
            raise ScenarioError(str(e)) from None
        count = spec_job.spec.resources.gpu_count
    catalog = load_catalog()
    alias = str(gpu) if gpu is not None else (spec_job.gpus[0].alias if spec_job and spec_job.gpus else "rtx3090")
    gpu_type = catalog.resolve(alias)
    if gpu_type is None:
        raise ScenarioError(f"unknown GPU {alias!r}; `python -m runner gpus` lists them")
    notes.append(f"{gpu_type.alias} x {count}: ${gpu_type.spot * count:.2f}/h spot, ${gpu_type.on_demand * count:.2f}/h "
                 f"on-demand (catalog)")
    stages = estimate_stages(spec_job, state) if spec_job is not None else []
    if spec_job is not None:
        disks = storage_rate("runpod", spec_job.spec.resources.container_disk_gb, spec_job.spec.resources.volume_gb)
        if disks:
            notes.append(f"disks ${disks:.4f}/h ({spec_job.spec.resources.container_disk_gb} GB container, "
                         f"{spec_job.spec.resources.volume_gb} GB volume)")
    if hours is None:
        unknown = [name or spec_job.name for name, est in stages if est.hours is None]
        if not stages or unknown:
            raise ScenarioError("give --hours (the hours of training the job needs) or a job file whose length can "
                                "be estimated" + (f" ({', '.join(unknown)}: {stages[0][1].basis if len(stages) == 1 else 'unknown length'})"
                                                  if unknown else ""))
        hours = sum(est.hours for _name, est in stages)
        each = [f"{est.steps:,} steps x {est.seconds_per_step:.3f} s ({est.basis})" for _name, est in stages]
        if len(stages) == 1:
            notes.append(f"{hours:.2f} h of training: {each[0]}")
        else:  # a pipeline: its stages one after the other, on the same GPU type
            notes.append(f"{hours:.2f} h of training in {len(stages)} stages, one after the other")
            notes += [f"stage {name}: {est.hours:.2f} h, {text}" for (name, est), text in zip(stages, each, strict=True)]
    else:
        notes.append(f"{float(hours):g} h of training (given)")
    name = spec_job.name if spec_job else ""
    if checkpoint_seconds is None:
        measured = observed.checkpoint_cost(state, name, gpu_type.alias) if name else None
        checkpoint_seconds = measured.seconds if measured else observed.DEFAULT_CHECKPOINT_SECONDS
        notes.append(f"a checkpoint costs {checkpoint_seconds:.2f} s ("
                     f"{measured.basis if measured else 'assumed: give --checkpoint-seconds'})")
    else:
        notes.append(f"a checkpoint costs {float(checkpoint_seconds):g} s (given)")
    if restart_minutes is None:
        restart_minutes, why = observed_restart(state, "runpod", gpu_type.alias)
        notes.append(f"{restart_minutes:.1f} min billed per launch before training ({why})")
    else:
        notes.append(f"{float(restart_minutes):g} min billed per launch before training (given)")
    times = None
    if trace is not None or trace_job is not None:
        if trace is not None:
            from pathlib import Path

            try:
                times = parse_trace(Path(str(trace)).read_text())
            except (OSError, ValueError) as e:
                raise ScenarioError(f"--trace {trace}: {e}") from None
            notes.append(f"preemptions at {len(times)} recorded times ({trace})")
        else:
            if state is None:
                raise ScenarioError(f"--trace-job {trace_job}: no job was ever submitted here")
            try:
                recorded = state.find_job(str(trace_job))
            except StateError as e:
                raise ScenarioError(str(e)) from None
            times = trace_from_job(state.segments(recorded.id))
            notes.append(f"preemptions at the {len(times)} times {recorded.id} was preempted")
        mtbf_hours = None
    elif mtbf_hours is None:
        rate = observed.preemption_rate(state, gpu_type.alias, True)
        mtbf_hours = rate.mtbf_hours
        notes.append(f"a preemption every {mtbf_hours:.2f} h of machine time ({rate.basis})")
    else:
        notes.append(f"a preemption every {float(mtbf_hours):g} h of machine time on average (Poisson, given)")
    notes.append(f"{float(wait_minutes):g} min unbilled wait for each new machine")
    try:
        scenario = Scenario(work_hours=float(hours), spot_rate=gpu_type.spot * count, on_demand_rate=gpu_type.on_demand * count,
                            checkpoint_seconds=float(checkpoint_seconds), restart_minutes=float(restart_minutes),
                            mtbf_hours=None if mtbf_hours is None else float(mtbf_hours), trace=times,
                            fixed_minutes=float(fixed_minutes), relaunch_wait_minutes=float(wait_minutes),
                            storage_rate=disks, gpu=gpu_type.alias)
        if scenario.work_hours <= 0 or scenario.checkpoint_seconds <= 0 or scenario.fixed_minutes <= 0 or (
                scenario.mtbf_hours is not None and scenario.mtbf_hours <= 0):
            raise ValueError("hours, mtbf-hours, checkpoint-seconds and fixed-minutes must be positive")
    except (TypeError, ValueError) as e:
        raise ScenarioError(str(e)) from None
    return scenario, notes
