"""Killed at any instant, the trainer resumes bit for bit: real trainer processes, real signals."""

from __future__ import annotations

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

from tests.fixtures.jobs import ROOT, make_job, run_trainer, sha256_of, start_trainer, trainer_env, wait_for
from trainer import contract

# Big enough that a checkpoint takes a few milliseconds to write (so a kill can land inside one),
# small enough that 200 steps take seconds on 2 cores.
CHAOS_JOB = {
    "train": {
        "model": {"n_embd": 128, "n_layer": 2},
        "max_steps": 200,
        "checkpoint": {"every_steps": 10, "keep_last": 2},
        "eval": {"every_steps": 40},
        "logging": {"heartbeat_seconds": 0.5},
    }
}


def final_weights(run: Path) -> Path:
    return run / contract.FINAL_DIR / "model.safetensors"


@pytest.fixture(scope="module")
def chaos_job(tmp_path_factory) -> Path:
    return make_job(tmp_path_factory.mktemp("job"), CHAOS_JOB)


@pytest.fixture(scope="module")
def reference_run(chaos_job, tmp_path_factory) -> Path:
    """An uninterrupted run of the chaos job."""
    run = tmp_path_factory.mktemp("reference")
    result = run_trainer(chaos_job, str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def reference(reference_run) -> str:
    """sha256 of the final weights of an uninterrupted run."""
    return sha256_of(final_weights(reference_run))


_STEP_LINE = re.compile(r"step (\d+)/\d+ loss (\S+) lr \S+ grad norm (\S+)")


def first_divergence(run: Path, reference_run: Path) -> str:
    """Where a resumed run's logged steps first differ from the uninterrupted run's (for a failure's message):
    before the resume, the interrupted attempt already computed something else; after it, the resume did."""
    def logged(folder: Path) -> dict[int, tuple[str, str]]:
        text = (folder / contract.TRAINER_LOG).read_text(errors="replace")
        return {int(m.group(1)): (m.group(2), m.group(3)) for m in _STEP_LINE.finditer(text)}  # the last wins

    mine, ref = logged(run), logged(reference_run)
    resumes = re.findall(r"resuming from (\S+) \(step (\d+)", (run / contract.TRAINER_LOG).read_text(errors="replace"))
    for step in sorted(ref):
        if mine.get(step) != ref[step]:
            return f"first logged difference at step {step}: {mine.get(step)} vs {ref[step]}; resumes: {resumes}"
    return f"every logged step's loss and gradient norm match the reference; resumes: {resumes}"


def test_same_seed_same_job_gives_identical_weights(chaos_job, reference, tmp_path):
    result = run_trainer(chaos_job, str(tmp_path / "again"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sha256_of(final_weights(tmp_path / "again")) == reference


def test_a_different_seed_gives_different_weights(tmp_path, reference):
    """Guards the test above: equality must come from determinism, not from ignoring the weights."""
    job = make_job(tmp_path, {**CHAOS_JOB, "train": {**CHAOS_JOB["train"], "seed": 7}})
    result = run_trainer(job, str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sha256_of(final_weights(tmp_path / "run")) != reference


def _checkpoint_temp_files(run: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(run / "checkpoints") if e.name.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _status(run: Path) -> dict | None:
    try:
        return json.loads((run / contract.STATUS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_sigkill_at_random_moments_and_mid_checkpoint_resumes_bit_for_bit(chaos_job, reference, reference_run, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "trainer.out"
    rng = random.Random(20261122)
    kills_mid_write = 0
    kills = 0
    # Alternate: kill the moment a checkpoint file is being written, or after a random time.
    for round_no in range(6):
        saved_before = (_status(run) or {}).get("last_checkpoint_step") or 0
        proc = start_trainer(chaos_job, str(run), log_path=log)
        try:
            wait_for(lambda p=proc: (_status(run) or {}).get("pid") == p.pid or p.poll() is not None,
                     timeout=60, what="this trainer process to start training")
            assert proc.poll() is None, f"trainer ended early in round {round_no}: see {log}"
            if round_no % 2 == 0:
                # Spin (no sleep) so the kill lands while the temporary file is still being written.
                deadline = time.monotonic() + 30
                while not _checkpoint_temp_files(run) and proc.poll() is None and time.monotonic() < deadline:
                    pass
            else:
                # Once this round has a checkpoint of its own (so each resume moves on, however slow the
                # machine), a random moment is the point of this round.
                wait_for(lambda p=proc, b=saved_before: ((_status(run) or {}).get("last_checkpoint_step") or 0) > b
                         or p.poll() is not None, timeout=120, what="a checkpoint of this round")
                time.sleep(rng.uniform(0.0, 1.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        kills += 1
        if _checkpoint_temp_files(run):
            kills_mid_write += 1
    assert kills == 6
    assert kills_mid_write >= 1, "no kill landed while a checkpoint was being written"

    result = run_trainer(chaos_job, str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sha256_of(final_weights(run)) == reference, first_divergence(run, reference_run)

    trainer_log = (run / contract.TRAINER_LOG).read_text()
    resumes = re.findall(r"resuming from (\S+) \(step (\d+), xxh3_128 \S+ verified\)", trainer_log)
    assert len(resumes) >= 5, trainer_log[-3000:]
    assert "cannot be loaded" not in trainer_log and "do not match" not in trainer_log
    steps = [int(s) for _, s in resumes]
    assert steps == sorted(steps), "every resume continued from at least where the previous one did"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_writes_emergency_checkpoint_and_loses_at_most_one_step(chaos_job, reference, reference_run,
                                                                             tmp_path, sig):
    run = tmp_path / "run"
    log = tmp_path / "trainer.out"
    proc = start_trainer(chaos_job, str(run), log_path=log)
    try:
        wait_for(lambda: (run / (contract.step_checkpoint(30) + contract.CHECKSUM_SUFFIX)).exists() or proc.poll() is not None,
                 timeout=90, what="step 30's checkpoint")
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == contract.EXIT_INTERRUPTED, log.read_text()[-3000:]

    text = (run / contract.TRAINER_LOG).read_text()
    m = re.search(r"emergency checkpoint at step (\d+) \(the signal came after step (\d+)\) written in ([\d.]+)s", text)
    assert m, text[-3000:]
    saved_step, signal_step = int(m.group(1)), int(m.group(2))
    assert 0 <= saved_step - signal_step <= 1, "only the step in progress may be finished; nothing is lost"
    latest = json.loads((run / (contract.LATEST + contract.CHECKSUM_SUFFIX)).read_text())
    assert latest["step"] == saved_step
    status = _status(run)
    assert status["state"] == contract.INTERRUPTED and status["step"] == saved_step

    result = run_trainer(chaos_job, str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from checkpoints/latest.pt (step {saved_step}" in (run / contract.TRAINER_LOG).read_text()
    assert sha256_of(final_weights(run)) == reference, (
        f"emergency checkpoint at step {saved_step}, signal after step {signal_step}; "
        f"{first_divergence(run, reference_run)}")


def test_a_finished_run_exits_zero_at_once_and_touches_nothing(chaos_job, tmp_path):
    run = tmp_path / "run"
    assert run_trainer(chaos_job, str(run)).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    again = run_trainer(chaos_job, str(run))
    assert again.returncode == 0
    assert "already done" in again.stderr
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert before == after


def test_restart_loop_recovers_from_a_crash_and_stops_when_done(tmp_path, reference):
    """The container entrypoint reruns a crashed trainer; the job still ends bit-for-bit identical."""
    marker = tmp_path / "crashed-once"
    job = make_job(tmp_path, {
        **CHAOS_JOB,
        "train": {**CHAOS_JOB["train"], "model": {
            "recipe": "tests.fixtures.crash_once:build", "n_embd": None, "n_layer": None, "n_head": None, "dropout": None,
            "options": {"crash_at_call": 60, "model": {"n_embd": 128, "n_layer": 2, "n_head": 4, "dropout": 0.1}},
        }},
    })
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "restart-loop", str(job), "--run-uri", str(run), "--backoff", "0.1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=trainer_env(CRASH_ONCE_MARKER=str(marker)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker.exists(), "the recipe did crash once"
    assert "restart 1 of 5" in result.stderr
    assert "restart 2 of" not in result.stderr
    assert sha256_of(final_weights(run)) == reference


def test_restart_loop_does_not_retry_a_bad_job_file(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text("train:\n  model: {recipe: tiny_gpt}\n  max_steps: -3\n")
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "restart-loop", str(job), "--run-uri", str(tmp_path / "run"), "--backoff", "0.1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=trainer_env(),
    )
    assert result.returncode == contract.EXIT_BAD_CONFIG
    assert f"{job}:3: train.max_steps" in result.stderr
    assert "a restart cannot fix that" in result.stderr
    assert not (tmp_path / "run").exists(), "nothing was written for an invalid job"


@pytest.mark.parametrize("change", [{"n_layer": 3}, {"n_embd": 64}], ids=["more-layers", "other-width"])
def test_a_checkpoint_that_does_not_fit_a_changed_model_is_refused(tmp_path, change):
    """Resuming a run whose model settings changed would silently mix trained and fresh weights."""
    small = {"train": {**CHAOS_JOB["train"], "max_steps": 10}}
    run = tmp_path / "run"
    assert run_trainer(make_job(tmp_path, small), str(run)).returncode == 0
    (run / contract.STATUS).unlink()  # pretend it was interrupted, so it resumes
    changed = make_job(tmp_path, {"train": {**small["train"], "model": change}}, name="changed.yaml")
    result = run_trainer(changed, str(run))
    assert result.returncode == contract.EXIT_BAD_CONFIG, result.stderr[-2000:]
    assert "checkpoints/latest.pt does not fit the model this job builds" in result.stderr
    assert "start a new run under another run URI" in result.stderr
