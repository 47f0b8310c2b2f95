"""Hostile job files: the worst case's peak memory and time, against a normal job file in the same run.

    python bench/bench_jobfile.py [--runs 5]

Each file of the hostile corpus (tests/fixtures/hostile_jobs.py: alias bombs up to 12 levels of 9
aliases, merge-key bombs, recursive aliases, a 50 MB file, deep nesting, huge strings, binary
garbage, ...) is handed to `python -m runner submit FILE --dry-run`, and so is jobs/quickstart.yaml as
the baseline. For each: the exit code, the whole command's wall time and peak RSS (VmHWM of the
process) as the median of RUNS runs, and the time `trainer.jobfile.load_yaml` alone takes in this
process (median of RUNS). Ratios are against the baseline's. Targets (issue 19): every hostile file
refused (exit 2) well under a second and under 100 MB RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures import hostile_jobs  # noqa: E402
from tests.fixtures.jobs import trainer_env  # noqa: E402
from trainer.jobfile import JobFileError, load_yaml  # noqa: E402


def load_ms(path: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        with contextlib.suppress(JobFileError):
            load_yaml(path)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = trainer_env(RUNNER_HOME=str(folder / "runner-home"))
        files = {"baseline: jobs/quickstart.yaml": ROOT / "jobs" / "quickstart.yaml"}
        files.update({name: hostile_jobs.write(folder, name) for name in sorted(hostile_jobs.CORPUS)})
        rows = []
        for label, path in files.items():
            runs = [hostile_jobs.measure("runner", ["submit", str(path), "--dry-run"], env, ROOT)
                    for _ in range(args.runs)]
            codes = {r[0] for r in runs}
            rows.append((label, path.stat().st_size, "/".join(map(str, sorted(codes))),
                         statistics.median(r[2] for r in runs), statistics.median(r[3] for r in runs),
                         load_ms(path, args.runs)))
    _, _, _, base_s, base_mb, base_ms = rows[0]
    print(f"{args.runs} runs each; ratios against the baseline, a normal job file, measured in the same run\n")
    print("| job file | bytes | exit | command wall | x baseline | peak RSS | x baseline | load_yaml alone |")
    print("|---|---|---|---|---|---|---|---|")
    for label, size, codes, s, mb, ms in rows:
        print(f"| {label} | {size:,} | {codes} | {s:.2f} s | {s / base_s:.2f} | {mb:.1f} MB | {mb / base_mb:.2f} | "
              f"{ms:.1f} ms |")
    hostile = rows[1:]
    worst_s = max(hostile, key=lambda r: r[3])
    worst_mb = max(hostile, key=lambda r: r[4])
    worst_ms = max(hostile, key=lambda r: r[5])
    print(f"\nworst wall: {worst_s[0]} {worst_s[3]:.2f} s ({worst_s[3] / base_s:.2f}x baseline); "
          f"worst peak RSS: {worst_mb[0]} {worst_mb[4]:.1f} MB ({worst_mb[4] / base_mb:.2f}x); "
          f"slowest load_yaml: {worst_ms[0]} {worst_ms[5]:.1f} ms")
    refused = all(r[2] == "2" for r in hostile)
    ok = refused and worst_mb[4] < 100 and worst_ms[5] < 1000
    print("target met" if ok else "TARGET MISSED", "(every hostile file exit 2, peak RSS < 100 MB, load < 1 s)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
