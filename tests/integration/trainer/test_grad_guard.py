"""The gradient-norm guard (``train.guard.stop_grad_norm``, the seeds' "stop on norms over ~100"):
gradient norms above the limit for ``stop_grad_norm_in_a_row`` steps stop the run with its own exit
code, and the emergency checkpoint is the last good state (before the first of those steps):
complete, loadable, and the very state a run without the spikes had there. A lone spike is only
clipped and warned about."""

from __future__ import annotations

import json

import pytest
import torch

from tests.fixtures.jobs import run_trainer
from trainer import contract
from trainer.checkpoint import sha256_file

pytestmark = pytest.mark.integration


def job_file(folder, options: dict, **train) -> str:
    doc = {"train": {"seed": 5, "model": {"recipe": "tests.fixtures.custom_recipe:build", "options": options},
                     "batch_size": 16, "max_steps": 30, "optimizer": {"lr": 1e-2}, "schedule": {"warmup_steps": 2},
                     "eval": {"every_steps": 100, "batches": 1}, "checkpoint": {"every_steps": 4, "every_minutes": None},
                     "logging": {"every_steps": 1, "progress_bar": False}, "threads": 1, **train}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(json.dumps(doc))
    return str(path)


def test_gradient_spikes_in_a_row_stop_the_run_with_the_last_good_state_checkpointed(tmp_path):
    spiked = tmp_path / "spiked"
    result = run_trainer(job_file(tmp_path / "a", {"spike_at_step": 7, "spike_steps": 3}), str(spiked))
    assert result.returncode == contract.EXIT_GRAD_NORM, result.stderr[-3000:]
    assert "step 9: gradient norm" in result.stderr and "3 steps in a row above guard.stop_grad_norm 100" in result.stderr
    status = json.loads((spiked / contract.STATUS).read_text())
    assert status["state"] == contract.FAILED and status["exit_code"] == contract.EXIT_GRAD_NORM
    assert "the last good state (step 6)" in status["error"]
    assert not (spiked / contract.FINAL_DIR).exists()

    # The emergency checkpoint is complete (its checksum matches) and loads into the job's model.
    latest = spiked / contract.LATEST
    record = json.loads((spiked / (contract.LATEST + contract.CHECKSUM_SUFFIX)).read_text())
    assert record["sha256"] == sha256_file(latest)[0]
    ckpt = torch.load(latest, map_location="cpu", weights_only=True)
    assert ckpt["step"] == 6
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {6}  # before any spike was applied
    from tests.fixtures.custom_recipe import build
    from trainer.config import load_train_config

    cfg, _ = load_train_config(tmp_path / "a" / "job.yaml")
    build(cfg, {}).model.load_state_dict(ckpt["model"], strict=True)

    # It is the state a run without the spikes had after step 6, to the bit.
    clean = tmp_path / "clean"
    result = run_trainer(job_file(tmp_path / "b", {}, checkpoint={"every_steps": 6, "every_minutes": None,
                                                                   "keep_last": 10}), str(clean))
    assert result.returncode == 0, result.stderr[-3000:]
    reference = torch.load(clean / contract.step_checkpoint(6), map_location="cpu", weights_only=True)
    for name, tensor in reference["model"].items():
        assert torch.equal(ckpt["model"][name], tensor), name


def test_a_lone_spike_is_clipped_and_warned_about_and_the_guard_can_be_turned_off(tmp_path):
    result = run_trainer(job_file(tmp_path / "a", {"spike_at_step": 7}, max_steps=10), str(tmp_path / "a" / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 7: gradient norm" in result.stderr  # warn_grad_norm
    result = run_trainer(job_file(tmp_path / "b", {"spike_at_step": 3, "spike_steps": 5}, max_steps=10,
                                  guard={"stop_grad_norm": None}), str(tmp_path / "b" / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
