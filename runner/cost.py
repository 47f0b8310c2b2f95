"""What a job costs: an estimate before launch, and billed segments × rate after.

A billing segment is one attempt's time on a machine at the rate it was launched at. This is the
first version: the runner's own observation of each attempt's start and end, and the catalog (or
backend) rate at launch."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from runner import state as st
from runner.catalog import GpuType, load_catalog


@dataclass(frozen=True)
class JobCost:
    job_id: str
    gpu_hours: float
    usd: float
    on_demand_usd: float  # the same hours at the on-demand price
    saving_usd: float
    preemptions: int
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def job_cost(state: st.State, job: st.JobRow, now: float | None = None) -> JobCost:
    now = now or time.time()
    segments = state.segments(job.id)
    hours = sum(s.hours(now) * s.gpu_count for s in segments)
    usd = sum(s.cost(now) for s in segments)
    on_demand = sum(s.hours(now) * s.on_demand_rate_per_hour for s in segments)
    return JobCost(job.id, hours, usd, on_demand, on_demand - usd, job.preemptions, len(segments))


@dataclass(frozen=True)
class Estimate:
    rate_per_hour: float  # USD per hour for all the job's GPUs
    on_demand_rate_per_hour: float
    steps: int | None
    seconds_per_step: float | None
    basis: str  # where seconds_per_step comes from, in words

    @property
    def hours(self) -> float | None:
        if self.steps is None or self.seconds_per_step is None:
            return None
        return self.steps * self.seconds_per_step / 3600

    @property
    def usd(self) -> float | None:
        return None if self.hours is None else self.hours * self.rate_per_hour


def rate(gpu: GpuType | None, count: int, spot: bool, backend: str) -> tuple[float, float]:
    """(rate, on-demand rate) in USD per hour for the whole attempt."""
    if backend == "local":
        local = float(os.environ.get("RUNNER_LOCAL_USD_PER_HOUR", "0") or 0)
        return local, local
    if gpu is None:
        return 0.0, 0.0
    return gpu.price(spot) * count, gpu.on_demand * count


def estimate(job: Any, state: st.State | None = None) -> Estimate:
    """Time and cost of ``job`` (a validated :class:`runner.spec.Job`) before it is launched:
    steps × seconds per step, from earlier runs of the same job on the same GPU when there are any,
    else from the catalog's rough throughput for the recipe."""
    catalog = load_catalog()
    gpu = job.gpus[0] if job.gpus else None
    spot = job.spec.resources.spot and job.backend != "local"
    per_hour, on_demand = rate(gpu, job.spec.resources.gpu_count, spot, job.backend)
    train = job.train
    steps = train.max_steps
    measured_gpu = gpu.alias if gpu and job.backend != "local" else None  # local attempts record no GPU
    measured = _measured_seconds_per_step(state, job.name, job.backend, measured_gpu) if state else None
    if measured is not None:
        return Estimate(per_hour, on_demand, steps, measured[0], f"measured over {measured[1]} earlier steps of {job.name}")
    recipe = train.model.recipe if train.model.recipe in ("tiny_gpt", "causal_lm_lora") else "custom"
    block = train.data.block_size if train.data else 256
    tokens_per_step = train.batch_size * train.grad_accum * block
    if job.backend == "local":
        tps = catalog.local_cpu_tokens_per_second.get(recipe)
        where = "this machine's CPU"
    else:
        ref = catalog.tokens_per_second.get(recipe)
        tps = ref * gpu.relative_speed if (ref and gpu) else None
        where = gpu.alias if gpu else "an unknown GPU"
    if tps is None:
        return Estimate(per_hour, on_demand, steps, None, f"no throughput figure for recipe {recipe!r} on {where} yet")
    basis = f"catalog figure for {recipe} on {where}: ~{tps:,.0f} tokens/s, rough"
    return Estimate(per_hour, on_demand, steps, tokens_per_step / tps, basis)


def _measured_seconds_per_step(state: st.State, name: str, backend: str, gpu: str | None) -> tuple[float, int] | None:
    row = state.db.execute(
        "SELECT SUM(a.ended - a.started), SUM(a.end_step - a.start_step) FROM attempts a JOIN jobs j ON j.id = a.job_id"
        " WHERE j.name = ? AND a.backend = ? AND a.gpu IS ? AND a.ended IS NOT NULL AND a.started IS NOT NULL"
        " AND a.end_step > a.start_step", (name, backend, gpu)).fetchone()
    if not row or not row[1]:
        return None
    return row[0] / row[1], int(row[1])
