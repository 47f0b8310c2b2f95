"""A full disk: a small real filesystem (tmpfs, mounted by the test as root) fills up while the
trainer runs. The error names ENOSPC and the folder, with what was needed and what was free;
status.json's last checkpoint is the newest one that verifies; the run resumes from it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from tests.fixtures.jobs import make_job, run_trainer, start_trainer, wait_for
from trainer import contract
from trainer.checkpoint import CheckpointManager, DiskFull
from trainer.config import Checkpoint
from trainer.storage import LocalStorage


@pytest.fixture
def small_fs(tmp_path: Path):
    """A folder on its own 8 MB filesystem; unmounted at the end."""
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """Take all of ``folder``'s filesystem but ``leave`` bytes."""
    ballast = folder / "ballast"
    with open(ballast, "ab") as f:
        room = shutil.disk_usage(folder).free - leave
        while room > 0:
            f.write(b"\0" * min(room, 1 << 20))
            room = shutil.disk_usage(folder).free - leave
            f.flush()
            os.fsync(f.fileno())
    return ballast


def figures(message: str, folder: Path) -> tuple[float, float]:
    """The needed and free MB of "no space left on FOLDER: needed ~N MB, free M MB (ENOSPC)"."""
    m = re.match(rf"no space left on {re.escape(str(folder))}: needed ~([\d.]+) MB, free ([\d.]+) MB \(ENOSPC\); ",
                 message)
    assert m, message
    return float(m.group(1)), float(m.group(2))


def _state(step: int, mb: float = 1.0) -> dict:
    return {"step": step, "w": torch.rand(int(mb * 1e6 / 4))}


def _manager(run: Path) -> CheckpointManager:
    return CheckpointManager(LocalStorage(run), Checkpoint(every_steps=10, every_minutes=None, keep_last=2))


def _newest_verified_step(run: Path) -> int | None:
    mgr = _manager(run)
    try:
        found = mgr.load()
        return int(found[0]["step"]) if found else None
    finally:
        mgr.close()


def test_a_save_with_no_room_is_refused_before_writing_and_keeps_the_last_good_one(small_fs: Path):
    run = small_fs / "run"
    mgr = _manager(run)
    told: list[tuple[int | None, str | None]] = []
    mgr.on_progress = lambda step, error: told.append((step, error))
    for step in (10, 20):
        mgr.save(step, _state(step))
        assert mgr.flush(timeout=60)
    assert told[-1] == (20, None)
    fill(small_fs, leave=300_000)
    mgr.save(30, _state(30))
    assert not mgr.flush(timeout=60)
    error = mgr.last_error
    assert isinstance(error, DiskFull) and mgr.permanent_error is error
    message = str(error)
    needed, free = figures(message, run / "checkpoints")
    assert 2.0 <= needed <= 2.2 and 0.2 <= free <= 0.4, message  # 1 MB of state, 1 MiB kept free beside it
    assert mgr.last_written_step == 20 and told[-1][0] == 20 and "no space left on" in told[-1][1]
    assert not list((run / "checkpoints").glob(".*.tmp"))
    mgr.close()
    assert _newest_verified_step(run) == 20


def test_enospc_in_the_middle_of_a_write_is_named_as_such(small_fs: Path):
    """The space check passes (something else filled the disk after it): torch.save meets ENOSPC,
    which used to come out as torch's "unexpected pos"."""
    run = small_fs / "run"
    mgr = _manager(run)
    mgr.save(10, _state(10))
    assert mgr.flush(timeout=60)
    mgr._make_room = lambda needed: None  # as if the disk filled between the check and the write
    fill(small_fs, leave=500_000)
    mgr.save(20, _state(20, mb=2))
    assert not mgr.flush(timeout=60)
    message = str(mgr.last_error)
    assert isinstance(mgr.last_error, DiskFull), message
    needed, free = figures(message, run / "checkpoints")
    assert 3.0 <= needed <= 3.2 and 0.4 <= free <= 0.6, message  # the partial file's room is free again
    assert "unexpected pos" not in message
    assert not list((run / "checkpoints").glob(".*.tmp")), "the partial file is removed, its room given back"
    mgr.close()
    assert _newest_verified_step(run) == 10


def test_with_s3_a_full_cache_disk_is_refused_too_and_the_bucket_keeps_the_last_good_one(
        small_fs: Path, tmp_path: Path, s3_bucket, monkeypatch: pytest.MonkeyPatch):
    from trainer.storage_s3 import S3Storage

    for name, value in s3_bucket.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    uri = f"s3://{s3_bucket.bucket}/disk-full-{uuid.uuid4().hex[:6]}"
    policy = Checkpoint(every_steps=10, every_minutes=None, keep_last=2)
    mgr = CheckpointManager(S3Storage(uri, work_dir=small_fs / "cache"), policy)
    mgr.save(10, _state(10))
    assert mgr.flush(timeout=120)
    fill(small_fs, leave=300_000)
    mgr.save(20, _state(20))
    assert not mgr.flush(timeout=120)
    assert isinstance(mgr.last_error, DiskFull) and mgr.last_written_step == 10
    figures(str(mgr.last_error), small_fs / "cache" / "checkpoints")
    mgr.close()
    fresh = CheckpointManager(S3Storage(uri, work_dir=tmp_path / "fresh-cache"), policy)
    try:
        found = fresh.load()
        assert found is not None and found[0]["step"] == 10
    finally:
        fresh.close()


def test_trainer_on_a_filling_disk_stops_says_why_and_resumes_from_its_last_good_checkpoint(small_fs: Path,
                                                                                             tmp_path: Path):
    run = small_fs / "run"
    job = make_job(tmp_path, {"train": {
        "max_steps": 40, "model": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "data": {"block_size": 32},
        "batch_size": 8, "eval": None, "checkpoint": {"every_steps": 5, "every_minutes": None, "keep_last": 3},
        "logging": {"heartbeat_seconds": 0.5},
    }})
    log = tmp_path / "trainer.log"
    proc = start_trainer(job, str(run), log_path=log)
    try:
        wait_for(lambda: (run / (contract.step_checkpoint(10) + contract.CHECKSUM_SUFFIX)).exists(), 240,
                 what="the checkpoint of step 10")
        ballast = fill(small_fs, leave=200_000)
        code = proc.wait(timeout=240)
    finally:
        proc.kill()
    output = log.read_text()
    assert code == contract.EXIT_STORAGE, output
    status = contract.Status.from_json((run / contract.STATUS).read_bytes())
    assert status.state == contract.FAILED and status.exit_code == contract.EXIT_STORAGE
    assert f"no space left on {run / 'checkpoints'}: needed ~" in status.error and "(ENOSPC)" in status.error
    assert "no space left on" in output and "Traceback" not in output
    newest = _newest_verified_step(run)
    assert newest is not None and newest >= 10
    assert status.last_checkpoint_step == newest, (status, newest)
    assert status.step < 40

    ballast.unlink()
    done = run_trainer(job, str(run), timeout=600)
    assert done.returncode == contract.EXIT_DONE, done.stderr
    assert f"(step {newest}, xxh3_128" in done.stderr  # "resuming from ... (step N, xxh3_128 ... verified)"
    final = json.loads((run / contract.STATUS).read_text())
    assert final["state"] == contract.DONE and final["last_checkpoint_step"] == 40 and final["checkpoint_error"] is None
