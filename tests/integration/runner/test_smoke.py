"""``runner submit JOB --smoke``: the job's own recipe and data trained here for a few steps, as the
seeds' rule asks before paying for a GPU; the verdict is the exit code, the projection is for the
full job on the chosen GPU."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from tests.fixtures.jobs import ROOT, make_job

pytestmark = pytest.mark.integration


@pytest.mark.serial  # a time budget: not beside another test's load
def test_the_quickstart_smoke_answers_within_a_minute_with_a_falling_loss_and_a_projection(runner):
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    done = runner.run("submit", "jobs/quickstart.yaml", "--smoke", "--json", timeout=300)
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["passed"] and report["job"] == "quickstart"
    (stage,) = report["stages"]
    assert stage["loss_fell"] and stage["loss_end"] < stage["loss_start"]
    assert stage["nonfinite_steps"] == [] and stage["steps"] >= 3
    # The norm before clipping: a healthy quickstart may spike past 100 once at its peak learning rate
    # (the guard stops only on several in a row), so the verdict above is the check; this is a measurement.
    assert math.isfinite(stage["max_grad_norm"]) and stage["max_grad_norm"] > 0
    assert stage["peak_rss_bytes"] > 0 and stage["seconds_per_step"] > 0
    assert stage["batch_size"] == stage["job_batch_size"] == 16 and stage["job_steps"] == 300
    projection = stage["projection"]
    assert projection["gpu"] == "rtx3090" and projection["steps"] == 300
    assert projection["hours"] > 0 and projection["usd"] > 0
    assert projection["speed_ratio"] == pytest.approx(10.0)  # the catalog's tiny_gpt figures, GPU over CPU
    assert "runner/gpus.yaml" in projection["speed_ratio_basis"]
    assert projection["usd"] == pytest.approx(projection["hours"] * 0.34)  # rtx3090 spot
    assert runner.job_ids() == []  # nothing was launched or recorded
    # Under a minute on two cores: the budget counts from the command's start. A machine busy with
    # other work may add the start-up of Python and torch beyond it.
    busy = max(load_before, os.getloadavg()[0]) > (os.cpu_count() or 1)
    assert elapsed < 60 or (busy and elapsed < 75), f"took {elapsed:.0f}s"


def test_the_quickstart_with_a_learning_rate_of_1e3_fails_saying_the_loss_diverged(runner, tmp_path):
    job = make_job(tmp_path, {"train": {"optimizer": {"lr": 1.0e3}}})
    done = runner.run("submit", str(job), "--smoke", "--gpu", "rtx4090", timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "Smoke FAILED: the loss diverged" in done.stdout
    done = runner.run("submit", str(job), "--smoke", "--json", "--smoke-steps", "20", timeout=300)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert not report["passed"] and report["reason"].startswith("the loss diverged")
    assert report["stages"][0]["max_grad_norm"] > 100


def test_smoke_first_launches_only_after_a_smoke_that_passes(runner, tmp_path):
    bad = make_job(tmp_path / "bad", {"train": {"optimizer": {"lr": 1.0e3}}})
    done = runner.run("submit", str(bad), "--smoke-first", "--smoke-steps", "10", timeout=300)
    assert done.returncode == 1 and "Nothing was launched" in done.stderr
    assert runner.job_ids() == []

    good = make_job(tmp_path / "good", {"name": "smoked", "train": {"max_steps": 40}})
    done = runner.run("submit", str(good), "--smoke-first", "--smoke-steps", "20", "--json", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Smoke passed" in done.stderr  # the smoke's report goes to stderr, the job's JSON to stdout
    assert json.loads(done.stdout)["state"] == "done"


@pytest.mark.slow
def test_every_stage_of_the_brad_pipeline_smokes_in_order_from_the_previous_stage(runner, s3_bucket, tmp_path: Path):
    from tests.integration.runner.test_brad_pipeline import brad_inputs

    variables, env = brad_inputs(runner, s3_bucket, tmp_path)
    # Time enough for 60 steps of each stage on a busy machine: this test is about the stages, not the budget.
    args = ["submit", str(ROOT / "jobs" / "brad_finetune.yaml"), "--smoke", "--json", "--smoke-steps", "60",
            "--smoke-seconds", "600"]
    for name, value in variables.items():
        args += ["--env", f"{name}={value}"]
    done = runner.run(*args, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["passed"], report["reason"]
    stages = report["stages"]
    assert [s["stage"] for s in stages] == ["vqvae", "style_encoder", "hybrid"]
    assert [s["recipe"] for s in stages] == ["vqvae", "style_encoder", "hybrid"]
    for s in stages:
        assert s["loss_fell"] and not s["nonfinite_steps"], s
        assert s["projection"]["gpu"] == "rtx3090" and s["projection"]["hours"] > 0  # the job's GPU
    assert any("init_from vqvae: the weights of stage vqvae's smoke run" in n for n in stages[1]["notes"])
    assert any("init_from style_encoder: the weights of stage style_encoder's smoke run" in n for n in stages[2]["notes"])
    assert runner.job_ids() == []

    # One stage alone starts from fresh weights, and says so.
    done = runner.run(*args, "--stage", "hybrid", env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (hybrid,) = json.loads(done.stdout)["stages"]
    assert any("stage vqvae was not smoked here" in n for n in hybrid["notes"])


def test_a_lora_job_smokes_with_its_own_adapter_and_8bit_adam_said_where_it_cannot_run(runner, tmp_path):
    from tests.fixtures.tiny_hf import corpus, make_model_folder, write_jsonl

    make_model_folder(tmp_path / "tiny-gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=64)
    write_jsonl(tmp_path / "songs.jsonl", corpus(120, seed=5), field="song")
    job = tmp_path / "lora.yaml"
    job.write_text(json.dumps({"name": "lora", "train": {
        "model": {"recipe": "causal_lm_lora", "name_or_path": "tiny-gpt2", "gradient_checkpointing": True,
                  "lora": {"r": 4, "alpha": 8, "target_modules": ["c_attn", "c_proj"]}},
        "data": {"format": "jsonl", "train": "songs.jsonl", "text_field": "song", "block_size": 32},
        "batch_size": 4, "grad_accum": 2, "max_steps": 400, "optimizer": {"name": "adamw8bit", "lr": 1e-2},
        "schedule": {"warmup_steps": 100}, "threads": 1}}))
    done = runner.run("submit", str(job), "--smoke", "--json", "--smoke-steps", "30", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (stage,) = json.loads(done.stdout)["stages"]
    assert stage["recipe"] == "causal_lm_lora" and stage["loss_fell"]
    assert stage["trainable_params"] == 2 * 4 * ((32 + 96) + (32 + 32) + (128 + 32)) < stage["params"]
    assert stage["grad_accum"] == 2 and stage["tokens_per_step"] > 0
    assert any("adamw8bit" in n and "used AdamW" in n for n in stage["notes"])
    assert any("warmup compressed from 100 to 6 steps" in n for n in stage["notes"])
    assert stage["projection"]["steps"] == 400


def test_a_custom_recipe_smokes_through_the_same_hooks(runner, tmp_path):
    job = tmp_path / "custom.yaml"
    job.write_text(json.dumps({"name": "custom", "train": {
        "model": {"recipe": "tests.fixtures.custom_recipe:build", "options": {"n_train": 256}},
        "batch_size": 16, "epochs": 3, "optimizer": {"lr": 1e-2}, "schedule": {"warmup_steps": 2}, "threads": 1}}))
    done = runner.run("submit", str(job), "--smoke", "--json", "--smoke-steps", "30", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (stage,) = json.loads(done.stdout)["stages"]
    assert stage["loss_fell"] and stage["job_steps"] == 3 * 256 // 16  # epochs over the whole data
    assert "no catalog CPU figure" in stage["projection"]["speed_ratio_basis"]
    assert "memory" not in stage["projection"]  # a custom model is known once built: the smoke measured it
    assert stage["peak_rss_bytes"] > 0

    # A custom recipe that goes non-finite is caught like any other.
    job.write_text(json.dumps({"name": "custom", "train": {
        "model": {"recipe": "tests.fixtures.custom_recipe:build", "options": {"nan_after_step": 4}},
        "batch_size": 16, "max_steps": 50, "threads": 1}}))
    done = runner.run("submit", str(job), "--smoke", "--json", timeout=300)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["reason"].startswith("the loss diverged: non-finite loss or gradient (NaN/Inf) at step 5")
    assert report["stages"][0]["nonfinite_steps"] == [5, 6, 7, 8, 9]
