"""Precision modes through the real trainer: bf16 autocast and fp16 with a grad scaler resume
bit for bit after SIGKILL; the non-finite guard skips bad steps and stops a diverged run with
exit code 4; EMA weights are what is evaluated and what final/ holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures.interrupt import sigkill_after_checkpoint
from tests.fixtures.jobs import make_job, run_trainer, sha256_of
from trainer import contract

# The quickstart, smaller. fp16 matmuls are slow on CPU, so the model is tiny.
SMALL = {"train": {"model": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "max_steps": 40, "batch_size": 8,
                   "checkpoint": {"every_steps": 10}, "eval": {"every_steps": 20, "batches": 2},
                   "logging": {"every_steps": 1}}}
_STEP_LINE = re.compile(r"step (\d+)/\d+ loss (\S+) lr \S+ grad norm (\S+)")


def first_difference(straight: str, *resumed_logs: str) -> str:
    """Where two runs of the same job part: the first step whose logged loss or gradient norm differs
    (a failure then says whether the resume started wrong or drifted later)."""
    want = {int(m[1]): m.group(0) for m in _STEP_LINE.finditer(straight)}
    got: dict[int, str] = {}
    for log in resumed_logs:  # later logs win: a step trained again after the resume is the one that counts
        got.update({int(m[1]): m.group(0) for m in _STEP_LINE.finditer(log)})
    resumed_at = re.findall(r"resuming from .*", resumed_logs[-1])
    for step in sorted(want):
        if got.get(step) != want[step]:
            return f"{resumed_at}; first difference at step {step}: straight {want[step]!r}, killed+resumed {got.get(step)!r}"
    return f"{resumed_at}; every logged step agrees, so the difference is after the last step (final/ selection)"


def load_ckpt(run: Path, key: str = contract.LATEST) -> dict:
    return torch.load(run / key, map_location="cpu", weights_only=True)


def custom_job(folder: Path, options: dict, **train) -> Path:
    """A job on the fixture recipe ``tests.fixtures.custom_recipe:build``."""
    doc = {"train": {"seed": 3, "model": {"recipe": "tests.fixtures.custom_recipe:build", "options": options},
                     "batch_size": 16, "max_steps": 40, "optimizer": {"lr": 1e-2}, "schedule": {"warmup_steps": 2},
                     "eval": {"every_steps": 20, "batches": 2}, "logging": {"every_steps": 1, "progress_bar": False},
                     "threads": 1, **train}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_sigkill_and_resume_is_bit_exact(tmp_path, precision):
    job = make_job(tmp_path, {**SMALL, "train": {**SMALL["train"], "precision": precision}})
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = run_trainer(job, str(straight))
    assert done.returncode == 0, done.stderr[-3000:]

    sigkill_after_checkpoint(job, killed, step=10, log_path=tmp_path / "killed.log")
    resumed = run_trainer(job, str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoints/" in resumed.stderr
    assert "(step 40," not in resumed.stderr  # it resumed mid-run, not from the end

    final = "final/model.safetensors"
    assert sha256_of(straight / final) == sha256_of(killed / final), first_difference(
        done.stderr, (tmp_path / "killed.log").read_text(errors="replace"), resumed.stderr)
    scaler = load_ckpt(killed)["scaler"]
    if precision == "fp16":  # the scaler's state is part of the checkpoint, and was restored
        assert scaler == load_ckpt(straight)["scaler"] and scaler["scale"] > 0
    else:
        assert scaler is None


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_nonfinite_steps_are_skipped_and_too_many_in_a_row_stop_the_run(tmp_path, precision):
    job = custom_job(tmp_path, {"nan_after_step": 5}, precision=precision, checkpoint={"every_steps": 1},
                     guard={"max_nonfinite_in_a_row": 3})
    result = run_trainer(job, str(tmp_path / "run"))

    assert result.returncode == contract.EXIT_DIVERGED == 4, result.stderr[-3000:]
    for step in (6, 7, 8):
        assert f"step {step} skipped: loss nan" in result.stderr
    assert "3 steps in a row had a non-finite loss or gradient" in result.stderr
    assert "lower the learning rate" in result.stderr
    status = json.loads((tmp_path / "run" / contract.STATUS).read_text())
    assert status["state"] == contract.FAILED and status["exit_code"] == 4
    assert "non-finite" in status["error"]
    # Skipped means not applied: the last checkpoint (step 7) holds an optimizer that stepped 5 times
    # and finite weights.
    last = load_ckpt(tmp_path / "run")
    assert last["step"] == 7
    assert {int(s["step"]) for s in last["optimizer"]["state"].values()} == {5}
    assert all(t.isfinite().all() for t in last["model"].values())
    assert not (tmp_path / "run" / contract.FINAL_DIR).exists()


def test_fp16_overflow_while_the_scaler_calibrates_is_not_divergence(tmp_path):
    # A loss 1000x larger overflows fp16 gradients at the initial scale 65536: the scaler skips
    # those steps and lowers its scale. More of them than the guard's limit must not stop the run.
    # The gradient-norm guard is off: a 1000x loss has 1000x gradients, which it would stop at once.
    job = custom_job(tmp_path, {"loss_multiplier": 1000.0}, precision="fp16",
                     guard={"max_nonfinite_in_a_row": 2, "stop_grad_norm": None})
    result = run_trainer(job, str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    overflowed = result.stderr.count("fp16 gradients overflowed")
    assert overflowed > 2, result.stderr[-3000:]
    assert load_ckpt(tmp_path / "run")["scaler"]["scale"] < 65536


def test_fp16_overflow_that_scaling_cannot_cure_stops_the_run(tmp_path):
    # 1e30x: fp16 gradients overflow even with the scale far below 1: the run has diverged.
    job = custom_job(tmp_path, {"loss_multiplier": 1e30}, precision="fp16",
                     guard={"max_nonfinite_in_a_row": 3, "stop_grad_norm": None})
    result = run_trainer(job, str(tmp_path / "run"))
    assert result.returncode == contract.EXIT_DIVERGED, result.stderr[-3000:]
    assert "fp16 gradients overflowed, loss scale lowered to 1" in result.stderr
    assert "3 steps in a row had a non-finite loss or gradient" in result.stderr


def test_ema_weights_are_evaluated_and_written_to_final(tmp_path):
    from trainer.config import load_train_config
    from trainer.recipes import build_recipe

    # eval.batches large enough that every evaluation covers the whole validation set.
    job = make_job(tmp_path, {"train": {**SMALL["train"], "max_steps": 40, "ema": {"decay": 0.9},
                                        "eval": {"every_steps": 20, "batches": 1000}, "finish": {"final": "last"}}})
    result = run_trainer(job, str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]

    ckpt = load_ckpt(tmp_path / "run")
    final = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert set(final) <= set(ckpt["ema"])
    for name, tensor in final.items():
        assert torch.equal(tensor, ckpt["ema"][name]), name  # final/ holds the averaged weights ...
    assert any(not torch.equal(final[n], ckpt["model"][n]) for n in final)  # ... not the live ones

    # The val loss reported at the last step is that of the EMA weights, not of the live ones.
    cfg, _ = load_train_config(job)
    recipe = build_recipe(cfg, job)
    everything = recipe.collate([recipe.val_set[i] for i in range(len(recipe.val_set))])

    def val_loss(weights: dict) -> float:
        recipe.model.load_state_dict(weights, strict=False)  # lm_head is tied to wte
        recipe.model.eval()
        with torch.no_grad():
            return recipe.forward(recipe.model, everything).loss.item()  # mean over all tokens

    reported = json.loads((tmp_path / "run" / contract.STATUS).read_text())["val_loss"]
    assert val_loss(final) == pytest.approx(reported, rel=1e-5)
    assert val_loss(ckpt["model"]) != pytest.approx(reported, rel=1e-3)
