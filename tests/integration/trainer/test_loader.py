"""``train.loader``: DataLoader workers collate batches ahead for any recipe (here a custom one), in
the same order as without them, so the weights are the same to the bit, and a run killed mid-way
resumes with exactly the batch that came next (the checkpoint records what was handed out, not how
far the workers had read ahead)."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.interrupt import sigkill_after_checkpoint
from tests.fixtures.jobs import run_trainer, sha256_of
from trainer import contract

pytestmark = pytest.mark.integration


def job_file(folder, **loader) -> str:
    doc = {"train": {"seed": 11, "model": {"recipe": "tests.fixtures.custom_recipe:build", "options": {"n_train": 300}},
                     "batch_size": 8, "grad_accum": 2, "max_steps": 24, "optimizer": {"lr": 1e-2},
                     "schedule": {"warmup_steps": 2}, "eval": {"every_steps": 12, "batches": 2},
                     "checkpoint": {"every_steps": 8, "every_minutes": None},
                     "logging": {"every_steps": 4, "progress_bar": False}, "threads": 1, "loader": loader}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(json.dumps(doc))
    return path


def test_loader_workers_give_the_same_weights_and_resume_exactly(tmp_path):
    plain = tmp_path / "plain"
    assert run_trainer(job_file(tmp_path / "a"), str(plain)).returncode == 0
    ahead = tmp_path / "ahead"
    result = run_trainer(job_file(tmp_path / "b", workers=2, prefetch=3), str(ahead))
    assert result.returncode == 0, result.stderr[-3000:]
    final = contract.FINAL_DIR + "/model.safetensors"
    assert sha256_of(ahead / final) == sha256_of(plain / final)

    killed = tmp_path / "killed"
    job = job_file(tmp_path / "c", workers=2, prefetch=3)
    sigkill_after_checkpoint(job, killed, 8)
    result = run_trainer(job, str(killed))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sha256_of(killed / final) == sha256_of(plain / final)
