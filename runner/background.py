"""``submit --detach`` and ``resume --detach`` return as soon as the job is recorded: a runner process of
its own, in a session of its own (it outlives the terminal), builds, pushes and launches it, then ends;
``runner watch`` supervises it from there, as before.

Its pid and start time are the job's launcher (and lease), so ``status`` says who works on the job,
``watch`` waits for it instead of launching the job a second time, and ``logs`` names its output
(``<state dir>/background/<job id>.log``); what each attempt's launch did is in its launch log.

Run as ``python -m runner.background JOB_ID``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner import paths, proc


def log_path(job_id: str) -> Path:
    return paths.state_dir() / "background" / f"{job_id}.log"


def spawn(state: Any, job_id: str) -> tuple[int, Path]:
    """Start the background launcher of ``job_id`` and record it on the job: (its pid, its log)."""
    log = log_path(job_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        child = subprocess.Popen([sys.executable, "-m", "runner.background", job_id], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd(),
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
    state.hand_to_launcher(job_id, child.pid, proc.identity(child.pid), str(log))
    return child.pid, log


def wait_for_launchers(state: Any, job_ids: Iterable[str] | None, console: Any, poll_s: float = 0.5) -> None:
    """Wait while background launchers work on these jobs (default: every active job), saying so once each."""
    told: set[str] = set()
    while True:
        jobs = [state.job(j) for j in job_ids] if job_ids is not None else state.jobs(active=True)
        busy = [j for j in jobs if j.active and j.launching_in_background()]
        if not busy:
            return
        for job in busy:
            if job.id not in told:
                told.add(job.id)
                console.print(f"{job.id} is being launched in the background by runner process {job.launcher_pid} "
                              f"(its output: {job.launcher_log}); waiting for it", highlight=False)
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    """Build, push and launch one job, then end (``watch`` supervises it afterwards). Exit 0 once it
    was launched or ended done; 1 when it could not be launched."""
    from rich.console import Console

    from runner.state import State
    from runner.supervisor import Supervisor
    from runner.view import FollowView, clock

    (job_id,) = argv if argv is not None else sys.argv[1:]
    state = State.open(create=False)
    if state is None:
        print(f"no state at {paths.db_path()}: nothing to launch", file=sys.stderr)
        return 2
    console = Console(file=sys.stdout, force_terminal=False, width=200, highlight=False, soft_wrap=True)
    console.print(f"{clock(time.time())} runner process {os.getpid()} launches {job_id} in the background")
    with FollowView(console) as view:
        Supervisor(state, view).run([job_id], until_launched=True)
    job = state.job(job_id)
    console.print(f"{clock(time.time())} {job.id} {job.state}: {job.reason or 'launched'}")
    if job.state == "running":
        console.print("`runner watch` supervises it from here (relaunches it after a preemption)")
    return 0 if job.state in ("running", "done") else 1


if __name__ == "__main__":
    raise SystemExit(main())
