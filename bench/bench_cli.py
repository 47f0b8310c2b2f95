"""Start-up time of the runner's command line, against a bare Python start in the same run.

    python bench/bench_cli.py [--runs 20] [--jobs 1000]

Times `python -m runner --help` and `python -m runner status` with JOBS jobs in a fresh state
database (each with attempts, events and a billing segment, a few of them still active), and
`python -c pass` as the baseline. The commands run interleaved, round after round, so a burst of
load on a shared machine hits all of them alike; the median of each is reported, with its minimum.
Bytecode caching is left on (PYTHONDONTWRITEBYTECODE is dropped), as on a user's machine.
Target: each runner command under 0.3 s above `python -c pass`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_S = 0.3


def fill_state(home: Path, jobs: int) -> None:
    """``jobs`` jobs as a busy user's state holds them: mostly done, some failed or cancelled, a few
    still active (relaunching, with nobody supervising them)."""
    os.environ["RUNNER_HOME"] = str(home)
    from runner import state as st
    from runner.spec import load_job

    spec = load_job(ROOT / "jobs" / "quickstart.yaml")
    state = st.State.open()
    record = spec.spec  # the validated job, as submit records it
    for i in range(jobs):
        job_id = f"quickstart-{i:06x}"
        with state.transaction():
            state.create_job(id=job_id, name="quickstart", job_file=str(spec.path), job_sha256=spec.sha256, spec=record,
                             workdir=str(ROOT), backend="local", run_uri=str(home / "runs" / job_id), max_steps=300)
            for number in range(1, 1 + (1 if i % 5 else 3)):
                attempt = state.add_attempt(job_id, backend="local", gpu=None, gpu_count=1, spot=False,
                                            start_step=(number - 1) * 100)
                state.attempt_started(attempt, {"pid": 0, "ident": None, "attempt_dir": "-"}, gpu=None, spot=False,
                                      rate_per_hour=0.0, on_demand_rate_per_hour=0.0)
                state.attempt_ended(state.attempt(attempt.id), outcome="done", exit_code=0, detail="done at step 300",
                                    end_step=300)
            if i >= jobs - 3:
                state.set_job_state(job_id, st.WAITING, "attempt 1 interrupted; relaunching", "preempted", step=150)
            else:
                final = st.DONE if i % 10 else (st.FAILED if i % 20 else st.CANCELLED)
                state.set_job_state(job_id, final, f"{final} (benchmark data)", final, step=300)
    state.close()


def time_once(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        home = Path(tmp) / "runner-home"
        fill_state(home, args.jobs)
        env = {**os.environ, "RUNNER_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -m runner --help": [sys.executable, "-m", "runner", "--help"],
            f"python -m runner status ({args.jobs} jobs)": [sys.executable, "-m", "runner", "status"],
        }
        for cmd in commands.values():  # warm the file cache and the bytecode caches
            time_once(cmd, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                times[name].append(time_once(cmd, env))

    base = statistics.median(times["python -c pass"])
    print(f"{args.runs} interleaved runs each, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end\n")
    print("| command | median | min | median above `python -c pass` |")
    print("|---|---|---|---|")
    worst = 0.0
    for name, values in times.items():
        median, above = statistics.median(values), statistics.median(values) - base
        if name != "python -c pass":
            worst = max(worst, above)
        extra = "" if name == "python -c pass" else f"{above * 1000:.0f} ms"
        print(f"| `{name}` | {median * 1000:.0f} ms | {min(values) * 1000:.0f} ms | {extra} |")
    verdict = "meets" if worst < TARGET_S else "misses"
    print(f"\nWorst overhead {worst * 1000:.0f} ms: {verdict} the target of {TARGET_S * 1000:.0f} ms above `python -c pass`.")


if __name__ == "__main__":
    main()
