"""A job with ``resources.gpu_count: 2`` on the local backend: the runner starts torchrun with two
processes (gloo on this CPU machine), and what happens to the group is judged as a preemption, not
a crash: torchrun killed outright takes its ranks with it, and a SIGTERM to one rank ends in one
emergency checkpoint although torchrun itself exits 1. The run ends byte identical to an
uninterrupted two-process run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from runner import proc
from tests.fixtures.jobs import ROOT, make_job, sha256_of, trainer_env, wait_for
from trainer import contract

OVERRIDES = {
    "resources": {"gpu_count": 2},
    "train": {"max_steps": 120, "threads": 1, "checkpoint": {"every_steps": 10, "keep_last": 2},
              "eval": {"every_steps": 40, "batches": 4},
              "logging": {"heartbeat_seconds": 0.2, "every_steps": 5}},
}


def _ranks(torchrun_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(torchrun_pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def test_two_processes_killed_and_stopped_then_resumed_byte_identical(runner, tmp_path: Path):
    job = make_job(tmp_path / "job", OVERRIDES)
    reference = tmp_path / "reference"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "trainer", "run", str(job), "--run-uri", str(reference)],
                          capture_output=True, text=True, cwd=ROOT, env=trainer_env(OMP_NUM_THREADS="1"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    submit = runner.start("submit", str(job))
    job_id = wait_for(runner.job_ids, timeout=60, what="the job row")[0]

    # 1. The whole machine goes: torchrun is SIGKILLed and its ranks must not train on without it.
    wait_for(lambda: runner.running_step(job_id, 1, 20), timeout=300, what="attempt 1 at step 20")
    torchrun_pid, _ = runner.trainer(f"{job_id}-1")
    ranks = [(pid, proc.identity(pid)) for pid in _ranks(torchrun_pid)]
    assert len(ranks) == 2, "torchrun runs one trainer per GPU asked for"
    os.kill(torchrun_pid, signal.SIGKILL)
    wait_for(lambda: not any(proc.is_alive(*rank) for rank in ranks), timeout=30, what="the ranks to die with torchrun")

    # 2. A preemption notice reaches one rank only: every rank stops, one emergency checkpoint.
    wait_for(lambda: runner.running_step(job_id, 2, 50), timeout=300, what="attempt 2 at step 50")
    torchrun_pid, _ = runner.trainer(f"{job_id}-2")
    rank0 = runner.run_status(runner.job_run_uri(job_id)).pid
    other = next(p for p in _ranks(torchrun_pid) if p != rank0)
    os.kill(other, signal.SIGTERM)

    assert submit.wait(timeout=600) == 0, runner.output(submit)
    record = runner.job(job_id)
    assert record["state"] == "done"
    attempts = record["attempts"]
    assert [a["outcome"] for a in attempts] == ["interrupted", "interrupted", "done"], attempts
    assert "SIGKILL" in attempts[0]["detail"]
    assert attempts[1]["exit_code"] == 1 and "emergency checkpoint" in attempts[1]["detail"], attempts[1]
    assert record["preemptions"] == 2 and record["failures"] == 0
    assert any("torchrun with 2 processes" in e["message"] for e in record["events"]), record["events"]

    run = Path(record["run_uri"])
    final = contract.FINAL_DIR + "/model.safetensors"
    assert sha256_of(run / final) == sha256_of(reference / final)
    log = (run / contract.TRAINER_LOG).read_text()
    assert "x 2 process(es) x accumulation 1 = 32 examples per optimizer step" in log
    assert len(re.findall(r"emergency checkpoint at step \d+", log)) == 1, log[-3000:]
    assert len(re.findall(r"resuming from \S+ \(step \d+, xxh3_128 \S+ verified\)", log)) == 2, log[-3000:]
