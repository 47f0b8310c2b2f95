"""Evaluation through the real trainer: best.pt follows the validation loss, early stopping ends
the run after ``early_stop_patience`` evaluations without improvement, and a run that stopped early
stays stopped when it is relaunched."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.fixtures.jobs import custom_recipe_job, run_trainer, sha256_of
from trainer import contract


def val_losses(log: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in re.findall(r"step (\d+): val loss ([\d.]+)", log)}


def checksum_step(run: Path, key: str) -> int:
    return json.loads((run / (key + contract.CHECKSUM_SUFFIX)).read_text())["step"]


def test_early_stop_after_patience_keeps_best_and_stays_stopped_on_relaunch(tmp_path):
    # min_delta is out of reach after the first evaluation, so evaluations 2 and 3 "do not improve"
    # however the loss moves: the run must stop at step 15 of 40, with best.pt from step 5.
    job = custom_recipe_job(tmp_path, eval={"every_steps": 5, "batches": 4, "early_stop_patience": 2, "min_delta": 100.0},
                    finish={"final": "last"})
    run = tmp_path / "run"
    result = run_trainer(job, str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "early stop: val loss has not improved for 2 evaluations" in result.stderr
    assert sorted(val_losses(result.stderr)) == [5, 10, 15]
    status = json.loads((run / contract.STATUS).read_text())
    assert (status["state"], status["step"]) == (contract.DONE, 15)

    best = torch.load(run / contract.BEST, map_location="cpu", weights_only=True)
    assert best["step"] == checksum_step(run, contract.BEST) == 5
    assert abs(best["progress"]["best_val"] - val_losses(result.stderr)[5]) < 1e-4
    latest = torch.load(run / contract.LATEST, map_location="cpu", weights_only=True)
    assert latest["step"] == 15 and latest["progress"]["early_stopped"] is True
    final = load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(final[k], latest["model"][k]) for k in final)  # final/ is the stopped model, not best

    # Killed after the early-stop checkpoint but before "done" (status and final/ not yet written):
    # the relaunch must finish at step 15, not train on to max_steps.
    before = sha256_of(run / "final" / "model.safetensors")
    (run / contract.STATUS).unlink()
    shutil.rmtree(run / contract.FINAL_DIR)
    again = run_trainer(job, str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr and not val_losses(again.stderr)  # no further training or evaluation
    assert json.loads((run / contract.STATUS).read_text())["step"] == 15
    assert sha256_of(run / "final" / "model.safetensors") == before


def test_best_follows_the_lowest_val_loss(tmp_path):
    run = tmp_path / "run"
    result = run_trainer(custom_recipe_job(tmp_path, max_steps=30), str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = val_losses(result.stderr)
    assert sorted(losses) == [5, 10, 15, 20, 25, 30]
    best_step = min(losses, key=losses.get)
    best = torch.load(run / contract.BEST, map_location="cpu", weights_only=True)
    assert best["step"] == checksum_step(run, contract.BEST) == best_step
    assert abs(best["progress"]["best_val"] - losses[best_step]) < 1e-4
    marked = [int(s) for s in re.findall(r"step (\d+): val loss [\d.]+.*\(best\)", result.stderr)]
    assert marked[-1] == best_step
