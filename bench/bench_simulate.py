"""The checkpoint interval against spot preemptions, at the seeds' prices: expected cost and wall time
of a 25-hour RTX 3090 job for a range of fixed intervals and for Young/Daly's, by the closed form and
by replay (seeded Monte Carlo), and how fast the simulator replays.

    python bench/bench_simulate.py [--trials 4000] [--mtbf-hours 2] [--checkpoint-seconds 30]

Prints Markdown tables for BENCHMARKS.md."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner import interval as iv  # noqa: E402
from runner.simulate import Scenario, simulate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4000)
    ap.add_argument("--hours", type=float, default=25.0)
    ap.add_argument("--mtbf-hours", type=float, default=2.0)
    ap.add_argument("--checkpoint-seconds", type=float, default=30.0)
    ap.add_argument("--restart-minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    spot, on_demand = 0.34, 0.44
    base = dict(work_hours=args.hours, spot_rate=spot, on_demand_rate=on_demand, checkpoint_seconds=args.checkpoint_seconds,
                restart_minutes=args.restart_minutes, mtbf_hours=args.mtbf_hours, gpu="rtx3090")
    od = iv.expected(args.hours, 60, args.checkpoint_seconds, float("inf"), args.restart_minutes).uptime_h * on_demand
    auto = Scenario(**base).auto_minutes
    print(f"{args.hours:g} h of training, a {args.checkpoint_seconds:g} s checkpoint, a preemption every "
          f"{args.mtbf_hours:g} h, {args.restart_minutes:g} min a launch; on-demand ${od:.2f}; "
          f"Young/Daly interval {auto:.1f} min\n")
    print("| interval | expected cost | replayed (± s.e.) | saved vs on-demand | wall time | work lost | preemptions |")
    print("|---|---|---|---|---|---|---|")
    timings = []
    for minutes in sorted({2.0, 5.0, auto, 20.0, 30.0, 60.0, 120.0}):
        t0 = time.perf_counter()
        res = simulate(Scenario(**base, fixed_minutes=minutes), trials=args.trials, seed=args.seed)
        timings.append(time.perf_counter() - t0)
        fixed = res[1]  # the fixed-interval strategy at `minutes`
        e = fixed.expected
        label = f"**{minutes:.1f} min (auto)**" if minutes == auto else f"{minutes:g} min"
        print(f"| {label} | ${fixed.expected_usd:.2f} | ${fixed.usd.mean:.2f} ± {fixed.usd.stderr:.2f} | "
              f"{1 - fixed.expected_usd / od:.0%} | {fixed.wall_h.mean:.1f} h | {e.lost_h:.2f} h | {e.preemptions:.1f} |")
    per_run = sum(timings) / (len(timings) * args.trials * 3)
    print(f"\nreplay speed: {per_run * 1e6:.0f} µs per simulated run ({args.trials} trials x 3 strategies per row)")


if __name__ == "__main__":
    main()
