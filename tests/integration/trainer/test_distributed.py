"""The same job on 2 processes through torchrun (gloo on CPU), with the same resume guarantees."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.jobs import ROOT, make_job, sha256_of, trainer_env, wait_for
from trainer import contract

DDP_JOB = {
    "train": {
        "max_steps": 80,
        "threads": 1,  # two processes on two cores
        "checkpoint": {"every_steps": 10, "keep_last": 2},
        "eval": {"every_steps": 20, "batches": 4},
        "logging": {"heartbeat_seconds": 0.1, "every_steps": 2},
    }
}


def torchrun(job: Path, run: Path, nproc: int = 2, log: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "trainer", "run", str(job), "--run-uri", str(run)]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=trainer_env(OMP_NUM_THREADS="1"))


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every rank at once, as a lost machine would (torchrun starts each rank in
    a session of its own, so killing torchrun's process group would miss them)."""
    for pid in [proc.pid, *_ranks(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def run_to_end(job: Path, run: Path, nproc: int = 2, timeout: float = 300) -> None:
    log = run.parent / f"{run.name}.out"
    proc = torchrun(job, run, nproc, log)
    try:
        assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_all(proc)


def final(run: Path) -> str:
    return sha256_of(run / contract.FINAL_DIR / "model.safetensors")


def _status(run: Path) -> dict:
    try:
        return json.loads((run / contract.STATUS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _ranks(torchrun_pid: int) -> list[int]:
    """The worker processes torchrun started (its children running the trainer)."""
    out = subprocess.run(["pgrep", "-P", str(torchrun_pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


@pytest.fixture(scope="module")
def ddp_job(tmp_path_factory) -> Path:
    return make_job(tmp_path_factory.mktemp("ddp-job"), DDP_JOB)


@pytest.fixture(scope="module")
def reference(ddp_job, tmp_path_factory) -> str:
    run = tmp_path_factory.mktemp("ddp-reference") / "run"
    run_to_end(ddp_job, run)
    log = (run / contract.TRAINER_LOG).read_text()
    assert "x 2 process(es) x accumulation 1 = 32 examples per optimizer step" in log
    return final(run)


def test_sigkill_of_the_whole_group_then_resume_is_bit_exact(ddp_job, reference, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "torchrun.out"
    rng = random.Random(8)
    for round_no in range(3):
        # A random step of each round's stretch, each past the one before (so every round resumes and
        # trains on) and short of the end: on an idle machine a round trains 20 steps a second, too
        # fast for a random delay to land before the run is done.
        target = 12 + 20 * round_no + rng.randint(0, 8)
        proc = torchrun(ddp_job, run, log=log)
        try:
            wait_for(lambda p=proc, t=target: (_status(run).get("pid") in _ranks(p.pid)
                                               and _status(run).get("step", 0) >= t) or p.poll() is not None,
                     timeout=90, interval=0.01, what=f"rank 0 of this launch at step {target}")
            assert proc.poll() is None, f"round {round_no}: torchrun ended early: {log.read_text()[-2000:]}"
        finally:
            ranks = _ranks(proc.pid)
            kill_all(proc)
        wait_for(lambda r=ranks: not any(Path(f"/proc/{pid}").exists() for pid in r), timeout=30, what="the ranks to die")
    run_to_end(ddp_job, run)
    assert final(run) == reference
    text = (run / contract.TRAINER_LOG).read_text()
    assert len(re.findall(r"resuming from \S+ \(step \d+, xxh3_128 \S+ verified\)", text)) >= 2, text[-3000:]


def test_sigterm_to_one_rank_stops_all_ranks_with_one_checkpoint_and_resumes_exactly(ddp_job, reference, tmp_path):
    """Under the container entrypoint (restart-loop --nproc 2): every rank stops at the same step,
    rank 0 writes one emergency checkpoint, and the loop exits 75 instead of restarting."""
    run = tmp_path / "run"
    log = tmp_path / "restart-loop.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "restart-loop", str(ddp_job), "--run-uri", str(run), "--nproc", "2"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT, env=trainer_env(OMP_NUM_THREADS="1"),  # noqa: SIM115
    )
    try:
        wait_for(lambda: (run / (contract.step_checkpoint(20) + contract.CHECKSUM_SUFFIX)).exists() or proc.poll() is not None,
                 timeout=120, what="step 20's checkpoint")
        torchrun_pid = _ranks(proc.pid)[0]
        ranks = _ranks(torchrun_pid)
        assert len(ranks) == 2
        rank0 = _status(run)["pid"]
        other = next(p for p in ranks if p != rank0)
        t0 = time.monotonic()
        os.kill(other, signal.SIGTERM)  # the rank that does NOT write checkpoints
        code = proc.wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            kill_all(proc)
    assert elapsed < 60
    assert code == contract.EXIT_INTERRUPTED, log.read_text()[-3000:]
    assert "restart 1" not in log.read_text()
    status = _status(run)
    assert status["state"] == contract.INTERRUPTED, log.read_text()[-3000:]
    text = (run / contract.TRAINER_LOG).read_text()
    assert len(re.findall(r"emergency checkpoint at step \d+", text)) == 1
    assert json.loads((run / (contract.LATEST + contract.CHECKSUM_SUFFIX)).read_text())["step"] == status["step"]
    run_to_end(ddp_job, run)
    assert final(run) == reference


def test_two_processes_and_one_with_the_same_global_batch_train_alike(tmp_path):
    """Same examples per optimizer step on 1 and on 2 processes: the losses agree closely but not
    exactly. Each rank draws its own dropout masks and sees its half of each batch, and the gradient
    is averaged over ranks in a different order of float additions than one big batch."""
    global_job = {"train": {**DDP_JOB["train"], "batch_size": None, "global_batch_size": 32, "max_steps": 80}}
    job = make_job(tmp_path, global_job)
    one, two = tmp_path / "one", tmp_path / "two"
    run_to_end(job, one, nproc=1)
    run_to_end(job, two, nproc=2)

    def val_losses(run: Path) -> list[float]:
        return [float(v) for v in re.findall(r"val loss ([\d.]+)", (run / contract.TRAINER_LOG).read_text())]

    a, b = val_losses(one), val_losses(two)
    assert len(a) == len(b) == 4
    assert a[-1] < a[0] and b[-1] < b[0], "both learn"
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) / x < 0.03, (a, b)
    assert "batch 32 per process x 1 process(es)" in (one / contract.TRAINER_LOG).read_text()
    assert "batch 16 per process x 2 process(es)" in (two / contract.TRAINER_LOG).read_text()


def test_a_crash_on_one_rank_is_recorded_by_rank_0_naming_that_rank(tmp_path):
    """Rank 1 raises; rank 0 then fails only with gloo's "connection closed by peer". status.json,
    written by rank 0 alone, still ends with rank 1's own error, which is what the runner shows."""
    job = make_job(tmp_path, {"train": {**DDP_JOB["train"], "model": {
        "recipe": "tests.fixtures.crash_once:build", "n_embd": None, "n_layer": None, "n_head": None, "dropout": None,
        "options": {"crash_at_call": 15, "rank": 1, "model": {"n_embd": 64, "n_layer": 2, "n_head": 4}},
    }}})
    run, log = tmp_path / "run", tmp_path / "torchrun.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "trainer", "run",
         str(job), "--run-uri", str(run)], stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT,  # noqa: SIM115
        env=trainer_env(OMP_NUM_THREADS="1", CRASH_ONCE_MARKER=str(tmp_path / "crashed")))
    try:
        assert proc.wait(timeout=180) == 1, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_all(proc)
    status = contract.Status.from_json((run / contract.STATUS).read_bytes())
    assert status.state == contract.FAILED and status.exit_code == contract.EXIT_FAILED
    assert status.pid != 0 and "rank 0:" in status.error, status.error
    assert status.error.strip().splitlines()[-1] == "rank 1 failed first: RuntimeError: simulated transient crash"
