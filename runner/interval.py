"""How often to checkpoint when the machine can be taken away: Young's and Daly's interval, and the
expected time a job takes under exponential (Poisson) preemptions.

Checkpointing costs time every interval; a preemption costs the work since the last checkpoint.
Young (1974) showed the interval that minimises the sum is about sqrt(2 x C x M) for a checkpoint
that costs C seconds and a mean time between preemptions M; Daly (2006) refined it for intervals
that are not small against M. Both are pure arithmetic here, torch-free and state-free: the
runner's observations (:mod:`runner.observed`) supply C and M."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: An interval shorter than this is not worth it even if the formula says so: the stall measured by
#: the loop is only the copy of the state into memory; the background write (and upload) that follows
#: must finish before the next checkpoint, or the newer one supersedes it and the write was wasted.
MIN_MINUTES = 2.0
#: Without preemptions (on-demand, or a very long MTBF) the formula's interval grows without bound;
#: crashes and cancellations still happen, so never go longer than this.
MAX_MINUTES = 60.0


def young_seconds(checkpoint_s: float, mtbf_s: float) -> float:
    """Young's first-order optimum: sqrt(2 C M)."""
    return math.sqrt(2.0 * checkpoint_s * mtbf_s)


def daly_seconds(checkpoint_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum of the compute time between checkpoints (his eq. 37): within a
    fraction of a percent of the exact optimum for exponential preemptions, and equal to Young's
    when C is small against M. For C >= 2M checkpointing cannot pay: the whole mean life, M."""
    if not (checkpoint_s > 0 and mtbf_s > 0):
        raise ValueError(f"checkpoint cost and MTBF must be positive (got {checkpoint_s}, {mtbf_s})")
    if mtbf_s == math.inf:
        return math.inf
    if checkpoint_s >= 2 * mtbf_s:
        return mtbf_s
    x = checkpoint_s / (2 * mtbf_s)
    return math.sqrt(2 * checkpoint_s * mtbf_s) * (1 + math.sqrt(x) / 3 + x / 9) - checkpoint_s


def optimal_minutes(checkpoint_s: float, mtbf_s: float, *, lo: float = MIN_MINUTES, hi: float = MAX_MINUTES) -> float:
    """The interval to use, in minutes: Daly's optimum kept within [lo, hi]."""
    if mtbf_s == math.inf:
        return hi
    return min(hi, max(lo, daly_seconds(checkpoint_s, mtbf_s) / 60.0))


@dataclass(frozen=True)
class Expectation:
    """What one job is expected to take under Poisson preemptions (all in hours of machine time)."""

    uptime_h: float  # billed machine time: boots, training, checkpoints, work redone
    preemptions: float
    lost_h: float  # work done and thrown away by preemptions (recomputed after a relaunch)
    restart_h: float  # boots after a preemption (the first boot is in boot_h)
    checkpoint_h: float  # time spent checkpointing
    boot_h: float  # the first boot


def expected(work_h: float, interval_min: float, checkpoint_s: float, mtbf_h: float, restart_min: float) -> Expectation:
    """Expected machine time to finish ``work_h`` hours of training that checkpoints every
    ``interval_min`` minutes of training (each checkpoint stalls it ``checkpoint_s``), when
    preemptions arrive as a Poisson process over machine time with mean ``mtbf_h`` and every
    (re)launch needs ``restart_min`` minutes of billed time before training resumes (a boot can be
    preempted too). The last stretch of work needs no periodic checkpoint.

    For a stretch of s hours that must run uninterrupted, with rate L = 1/M: each try fails with
    probability 1 - e^(-L s), so e^(L s) - 1 preemptions are expected before it gets through, each
    after (on average) 1/L - s / (e^(L s) - 1) hours of work that is thrown away, and each followed by
    a boot that takes B = (e^(L R) - 1) / L hours with its own e^(L R) - 1 preemptions. Summed, a
    stretch takes e^(L R) (e^(L s) - 1) / L hours (Daly 2006, eq. 13)."""
    tau, c, r = interval_min / 60.0, checkpoint_s / 3600.0, restart_min / 60.0
    if work_h <= 0 or tau <= 0:
        raise ValueError(f"work and interval must be positive (got {work_h} h, {interval_min} min)")
    full = math.ceil(work_h / tau - 1e-9) - 1  # stretches that end in a periodic checkpoint
    rest = work_h - full * tau  # the last stretch ends with the job, not with a periodic checkpoint
    stretches = ((tau + c, full), (rest, 1))
    checkpoint_h = full * c
    if mtbf_h == math.inf:
        return Expectation(r + work_h + checkpoint_h, 0.0, 0.0, 0.0, checkpoint_h, r)
    lam = 1.0 / mtbf_h
    boot = math.expm1(lam * r) / lam  # expected time to get one boot through
    fails = sum(n * math.expm1(lam * s) for s, n in stretches)  # preemptions while training
    lost = sum(n * (math.expm1(lam * s) / lam - s) for s, n in stretches)
    restart = fails * boot
    preemptions = math.expm1(lam * r) + fails * math.exp(lam * r)  # boots can be preempted too
    uptime = boot + work_h + checkpoint_h + lost + restart
    return Expectation(uptime, preemptions, lost, restart, checkpoint_h, boot)
