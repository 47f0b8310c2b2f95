"""The checkpoint manager on local storage: atomic publish, checksums, fallback, retention, safety."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest
import torch
import xxhash

from trainer import contract
from trainer.checkpoint import CheckpointManager
from trainer.config import Checkpoint
from trainer.storage import LocalStorage


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((64, 64), float(step))}, "rng": torch.get_rng_state()}


def _manager(tmp_path, keep_last: int = 2, every_steps: int = 10) -> CheckpointManager:
    return CheckpointManager(LocalStorage(tmp_path / "run"), Checkpoint(every_steps=every_steps, every_minutes=None, keep_last=keep_last))


def test_save_then_load_returns_newest_verified(tmp_path):
    mgr = _manager(tmp_path)
    for step in (10, 20, 30):
        mgr.save(step, _state(step))
        assert mgr.flush(timeout=30)
    payload, key = mgr.load()
    assert key == contract.LATEST and payload["step"] == 30
    assert torch.equal(payload["model"]["w"], torch.full((64, 64), 30.0))
    sidecar = json.loads((tmp_path / "run" / (contract.LATEST + contract.CHECKSUM_SUFFIX)).read_text())
    assert sidecar["step"] == 30 and len(sidecar["sha256"]) == 64
    mgr.close()


def test_keep_last_removes_older_history_and_their_checksums(tmp_path):
    mgr = _manager(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        mgr.save(step, _state(step))
        assert mgr.flush(timeout=30)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == [
        "latest.pt", "latest.pt.sha256",
        "step-000000030.pt", "step-000000030.pt.sha256",
        "step-000000040.pt", "step-000000040.pt.sha256",
    ]
    mgr.close()


def test_corrupt_latest_falls_back_to_previous_good_one_and_says_so(tmp_path, caplog):
    mgr = _manager(tmp_path, keep_last=3)
    for step in (10, 20):
        mgr.save(step, _state(step))
        assert mgr.flush(timeout=30)
    mgr.close()
    # latest.pt and step-20 share bytes (a hard link): flipping one byte tears both.
    latest = tmp_path / "run" / contract.LATEST
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    caplog.set_level(logging.INFO, logger="trainer")
    payload, key = _manager(tmp_path, keep_last=3).load()
    assert payload["step"] == 10 and key == contract.step_checkpoint(10)
    assert "do not match its checksum" in caplog.text


def test_truncated_file_is_never_loaded(tmp_path, caplog):
    mgr = _manager(tmp_path, keep_last=3)
    for step in (10, 20):
        mgr.save(step, _state(step))
        assert mgr.flush(timeout=30)
    mgr.close()
    for key in (contract.LATEST, contract.step_checkpoint(20)):
        path = tmp_path / "run" / key
        os.unlink(path)  # break the hard link first, then write a torn copy
        path.write_bytes(b"PK\x03\x04 torn")
    payload, _ = _manager(tmp_path).load()
    assert payload["step"] == 10


def test_file_without_checksum_is_skipped(tmp_path, caplog):
    """A crash between writing the file and its sidecar leaves a file a reader must not trust."""
    mgr = _manager(tmp_path, keep_last=3)
    for step in (10, 20):
        mgr.save(step, _state(step))
        assert mgr.flush(timeout=30)
    mgr.close()
    run = tmp_path / "run"
    (run / (contract.LATEST + contract.CHECKSUM_SUFFIX)).unlink()
    (run / (contract.step_checkpoint(20) + contract.CHECKSUM_SUFFIX)).unlink()
    caplog.set_level(logging.INFO, logger="trainer")
    payload, _ = _manager(tmp_path).load()
    assert payload["step"] == 10
    assert "has no checksum" in caplog.text


def test_a_resume_reads_one_record_when_latest_is_the_newest(tmp_path):
    """Each record read is a request to a remote store on the resume's critical path."""
    mgr = _manager(tmp_path, keep_last=3)
    for step in (10, 20, 30):
        mgr.save(step, _state(step))
        assert mgr.flush(timeout=30)
    mgr.close()
    reads = []

    class Counting(LocalStorage):
        def get_bytes(self, key):
            reads.append(key)
            return super().get_bytes(key)

    policy = Checkpoint(every_steps=10, every_minutes=None, keep_last=3)
    payload, key = CheckpointManager(Counting(tmp_path / "run"), policy).load()
    assert (payload["step"], key) == (30, contract.LATEST)
    assert reads == [contract.LATEST + contract.CHECKSUM_SUFFIX]


def test_a_latest_older_than_the_newest_history_file_is_not_taken(tmp_path):
    """A write that published step-30 but not the copy to latest.pt: step-30 is the newest."""
    mgr = _manager(tmp_path, keep_last=3)
    for step in (10, 20, 30):
        mgr.save(step, _state(step))
        assert mgr.flush(timeout=30)
    mgr.close()
    run = tmp_path / "run"
    for suffix in ("", contract.CHECKSUM_SUFFIX):  # latest.pt as it was after step 20
        (run / (contract.LATEST + suffix)).unlink()
        (run / (contract.LATEST + suffix)).write_bytes((run / (contract.step_checkpoint(20) + suffix)).read_bytes())
    payload, key = _manager(tmp_path, keep_last=3).load()
    assert (payload["step"], key) == (30, contract.step_checkpoint(30))


def test_the_record_holds_both_checksums_and_the_fast_one_is_checked(tmp_path, caplog):
    mgr = _manager(tmp_path)
    mgr.save(10, _state(10))
    assert mgr.flush(timeout=30)
    mgr.close()
    latest = tmp_path / "run" / contract.LATEST
    record = json.loads((tmp_path / "run" / (contract.LATEST + contract.CHECKSUM_SUFFIX)).read_text())
    data = latest.read_bytes()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["xxh3_128"] == xxhash.xxh3_128(data).hexdigest() and record["size"] == len(data)
    caplog.set_level(logging.INFO, logger="trainer")
    payload, key = _manager(tmp_path).load()
    assert payload["step"] == 10 and key == contract.LATEST
    assert f"xxh3_128 {record['xxh3_128'][:12]}" in caplog.text


def _rewrite_records(run, keep) -> None:
    for sidecar in (run / "checkpoints").glob("*" + contract.CHECKSUM_SUFFIX):
        record = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps({k: v for k, v in record.items() if k in keep}))


def test_a_record_written_before_xxh3_is_checked_with_sha256(tmp_path, caplog):
    """Checkpoints of an older trainer (sha256 only) still resume, and still refuse torn bytes."""
    mgr = _manager(tmp_path, keep_last=3)
    for step in (10, 20):
        mgr.save(step, _state(step))
        assert mgr.flush(timeout=30)
    mgr.close()
    run = tmp_path / "run"
    _rewrite_records(run, keep={"sha256", "size", "step", "source"})
    caplog.set_level(logging.INFO, logger="trainer")
    payload, key = _manager(tmp_path, keep_last=3).load()
    assert payload["step"] == 20 and key == contract.LATEST and "(step 20, sha256 " in caplog.text
    latest = run / contract.LATEST  # a hard link of step-20: both torn
    data = bytearray(latest.read_bytes())
    data[len(data) // 3] ^= 0x01
    latest.write_bytes(bytes(data))
    caplog.clear()
    payload, key = _manager(tmp_path, keep_last=3).load()
    assert payload["step"] == 10 and key == contract.step_checkpoint(10)
    assert "do not match its checksum (sha256" in caplog.text


def test_a_record_without_a_known_checksum_is_skipped(tmp_path, caplog):
    mgr = _manager(tmp_path, keep_last=3)
    for step in (10, 20):
        mgr.save(step, _state(step))
        assert mgr.flush(timeout=30)
    mgr.close()
    run = tmp_path / "run"
    for key in (contract.LATEST, contract.step_checkpoint(20)):
        sidecar = run / (key + contract.CHECKSUM_SUFFIX)
        record = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps({"md5": "0" * 32, "size": record["size"], "step": record["step"]}))
    caplog.set_level(logging.INFO, logger="trainer")
    payload, key = _manager(tmp_path).load()
    assert payload["step"] == 10 and "checksum file is unreadable" in caplog.text


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, caplog, monkeypatch):
    """A checkpoint from a shared bucket must not be able to run code, even with a valid checksum."""
    monkeypatch.chdir(tmp_path)
    mgr = _manager(tmp_path)
    mgr.save(10, _state(10))
    assert mgr.flush(timeout=30)
    mgr.close()
    run = tmp_path / "run"
    evil = run / contract.step_checkpoint(20)
    torch.save({"step": 20, "payload": _RunsCode()}, evil)
    from trainer.checkpoint import sha256_file

    digest, size = sha256_file(evil)
    (run / (contract.step_checkpoint(20) + contract.CHECKSUM_SUFFIX)).write_text(
        json.dumps({"sha256": digest, "size": size, "step": 20, "source": "x"}))
    caplog.set_level(logging.INFO, logger="trainer")
    payload, _ = _manager(tmp_path).load()
    assert payload["step"] == 10
    assert not (tmp_path / "pwned").exists()
    assert "cannot be loaded" in caplog.text


def test_a_newer_checkpoint_supersedes_one_not_yet_written(tmp_path):
    mgr = _manager(tmp_path, keep_last=10)
    big = {"w": torch.zeros(2_000_000)}
    for step in range(1, 21):
        mgr.save(step, {"step": step, "model": big})
    assert mgr.flush(timeout=60)
    steps = [contract.parse_step_checkpoint(k) for k in mgr.storage.list("checkpoints/step-")]
    steps = [s for s in steps if s is not None]
    assert steps[-1] == 20, "the newest checkpoint is always written"
    assert mgr.superseded >= 1 and len(steps) < 20, "older pending snapshots were dropped, not queued"
    assert mgr.load()[0]["step"] == 20
    mgr.close()


def test_snapshot_is_a_copy_so_training_can_continue_while_it_is_written(tmp_path):
    mgr = _manager(tmp_path)
    weights = torch.ones(1000)
    mgr.save(10, {"step": 10, "model": {"w": weights}})
    weights.mul_(5)  # the loop keeps training right after save() returns
    assert mgr.flush(timeout=30)
    assert torch.equal(mgr.load()[0]["model"]["w"], torch.ones(1000))
    mgr.close()


def test_stale_temp_files_from_a_killed_writer_are_removed(tmp_path):
    staging = tmp_path / "run" / "checkpoints"
    staging.mkdir(parents=True)
    (staging / ".step-000000010.pt.123.tmp").write_bytes(b"partial")
    mgr = _manager(tmp_path)
    assert not list(staging.glob(".*.tmp"))
    assert mgr.load() is None
    mgr.close()


def test_due_every_n_steps_or_every_t_minutes(tmp_path):
    mgr = CheckpointManager(LocalStorage(tmp_path), Checkpoint(every_steps=5, every_minutes=0.001, keep_last=2))
    assert mgr.due(5) and mgr.due(10)
    mgr._last_save_time -= 1.0  # 1 s ago is past 0.06 s: due by the clock on a step that is not a multiple
    assert mgr.due(7)
    mgr.save(7, {"step": 7})
    assert not mgr.due(8)
    mgr.close()


def test_failed_write_surfaces_at_flush(tmp_path):
    mgr = _manager(tmp_path)
    mgr.save(10, {"step": 10, "bad": lambda: 0})  # a lambda cannot be pickled
    assert mgr.flush(timeout=30) is False
    assert mgr.last_error is not None
    mgr.close()


def test_policy_needs_a_trigger():
    from pydantic import ValidationError

    from trainer.config import TrainConfig

    with pytest.raises(ValidationError, match="every_steps, every_minutes or both"):
        TrainConfig.model_validate({
            "model": {"recipe": "tiny_gpt"}, "data": {"format": "text", "train": "x"}, "max_steps": 1,
            "checkpoint": {"every_steps": None, "every_minutes": None},
        })


class _Tied(torch.nn.Module):
    """A GPT's shape in small: the output layer is the token embedding (one tensor, two names)."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = torch.nn.Embedding(8, 4)
        self.head = torch.nn.Linear(4, 8, bias=False)
        self.head.weight = self.wte.weight


def test_a_tied_weight_is_saved_once_and_its_average_is_taken_under_both_names(tmp_path):
    """With EMA on, the weights a run was evaluated with are the averaged ones: a tied weight's average
    (kept under its first name) must reach the second name too, or loading puts the live values back."""
    from trainer.checkpoint import evaluated_weights
    from trainer.loop import EMA

    model = _Tied()
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model.wte.weight.add_(1.0)  # live weights move away from the average
    assert list(ema.shadow) == ["wte.weight"]
    mgr = _manager(tmp_path)
    mgr.save(1, {"step": 1, "model": model.state_dict(), "ema": ema.state_dict()})
    assert mgr.flush(timeout=30)
    mgr.close()
    payload, _key = _manager(tmp_path).load()
    saved = payload["model"]
    assert saved["wte.weight"].untyped_storage().data_ptr() == saved["head.weight"].untyped_storage().data_ptr()
    weights = evaluated_weights(payload)
    assert torch.equal(weights["wte.weight"], ema.shadow["wte.weight"])
    assert torch.equal(weights["head.weight"], ema.shadow["wte.weight"])
    fresh = _Tied()
    fresh.load_state_dict(weights)
    assert torch.equal(fresh.head.weight, ema.shadow["wte.weight"])


class _Crash(Exception):
    """What a SIGKILL does to the writer, at one chosen storage call: nothing after it happens."""


class _CrashingStorage(LocalStorage):
    """Local storage that fails its ``crash_at``-th write, delete or copy (counted from 0)."""

    crash_at: int | None = None
    calls = 0

    def _tick(self) -> None:
        if self.crash_at is not None:
            if self.calls == self.crash_at:
                raise _Crash(f"killed at storage call {self.calls}")
            self.calls += 1

    def put_file(self, *args, **kwargs):
        self._tick()
        return super().put_file(*args, **kwargs)

    def put_bytes(self, *args, **kwargs):
        self._tick()
        return super().put_bytes(*args, **kwargs)

    def copy(self, *args, **kwargs):
        self._tick()
        return super().copy(*args, **kwargs)

    def delete(self, *args, **kwargs):
        self._tick()
        return super().delete(*args, **kwargs)


@pytest.mark.parametrize("superseded", [False, True], ids=["best-is-latest", "best-superseded"])
def test_a_kill_at_any_point_of_a_save_never_resumes_past_a_best_that_best_pt_lacks(tmp_path, superseded):
    """The loop's progress in a checkpoint says which step was the best, and final/ is best.pt: a resume
    from a checkpoint at or after a new best must find that best in best.pt, wherever the kill landed."""
    policy = Checkpoint(every_steps=10, every_minutes=None, keep_last=3)
    outcomes = set()
    for crash_at in range(40):
        storage = _CrashingStorage(tmp_path / f"run{crash_at}")
        mgr = CheckpointManager(storage, policy)
        mgr.save(10, _state(10), best=True)
        assert mgr.flush(timeout=30)
        storage.crash_at = crash_at
        storage.calls = 0
        with mgr._cond:  # the writer cannot take a job until both are queued
            mgr.save(20, _state(20), best=True)
            if superseded:
                mgr.save(25, _state(25))
        finished = mgr.flush(timeout=30)
        mgr.close()

        resumed = CheckpointManager(LocalStorage(storage.root), policy)
        payload, _ = resumed.load()
        best = resumed.load_key(contract.BEST)
        resumed.close()
        if payload["step"] >= 20:
            held = "nothing that verifies" if best is None else f"step {best['step']}"
            assert best is not None and best["step"] == 20, (
                f"killed at storage call {crash_at}: resumed from step {payload['step']} but best.pt holds "
                f"{held}, not the best (step 20)")
        outcomes.add(payload["step"])
        if finished:  # the crash point is past the last call: every point was tried
            break
    else:
        pytest.fail("the save never finished: more storage calls than the test tries")
    assert outcomes == ({10, 25} if superseded else {10, 20}), "kills landed both before and after the new checkpoint"
