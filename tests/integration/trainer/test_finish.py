"""The finish through the real trainer: final/ holds the best weights (not the last), a LoRA adapter
merged into a folder that transformers alone loads to the same logits, MIDI samples from the music
recipes, and a SIGTERM during the finish that a relaunch completes without training again."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures.jobs import (
    ROOT,
    custom_recipe_job,
    make_job,
    run_trainer,
    sha256_of,
    start_trainer,
    trainer_env,
    wait_for,
)
from trainer import contract
from trainer.checkpoint import evaluated_weights


def tensor_sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def best_weights(run: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """best.pt's step and its weights as evaluated: with EMA on, the averaged ones."""
    best = torch.load(run / contract.BEST, map_location="cpu", weights_only=True)
    return best["step"], evaluated_weights(best)


def report_of(run: Path) -> dict:
    return json.loads((run / contract.REPORT_JSON).read_text())


def test_final_holds_the_best_weights_and_the_report_says_which(tmp_path):
    # min_delta out of reach: the first evaluation (step 5) is the best, training goes on to step 15.
    job = custom_recipe_job(tmp_path, eval={"every_steps": 5, "batches": 4, "early_stop_patience": 2, "min_delta": 100.0})
    run = tmp_path / "run"
    result = run_trainer(job, str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    best_step, best = best_weights(run)
    latest = torch.load(run / contract.LATEST, map_location="cpu", weights_only=True)
    assert (best_step, latest["step"]) == (5, 15)
    final = load_file(run / "final" / "model.safetensors")
    assert {k: tensor_sha(v) for k, v in final.items()} == {k: tensor_sha(best[k]) for k in final}
    assert any(not torch.equal(final[k], latest["model"][k]) for k in final)  # not the last weights

    report = report_of(run)
    assert report["final"] == {"chosen": "best", "asked": "best", "step": 5}
    logged = {int(s): float(v) for s, v in re.findall(r"step (\d+): val loss ([\d.]+)", result.stderr)}
    assert report["validation"]["best"]["loss"] == pytest.approx(logged[5], abs=1e-4)
    assert report["validation"]["last"]["loss"] == pytest.approx(logged[15], abs=1e-4)
    assert report["steps"] == 15 and report["early_stopped"] is True
    assert report["preemptions"] is None and report["resumes"] == 0  # started by hand: no runner figures
    assert "`final/` holds the weights of step 5 (the best validation loss)" in (run / contract.REPORT_MD).read_text()
    assert json.loads((run / contract.STATUS).read_text())["state"] == contract.DONE


def test_a_sigterm_during_the_finish_is_completed_by_a_relaunch_without_training(tmp_path):
    # Long samples on purpose: the signal lands while they are written.
    job = make_job(tmp_path, {"train": {"max_steps": 20, "eval": {"every_steps": 10}, "checkpoint": {"every_steps": 10},
                                        "finish": {"samples": {"count": 2, "max_new_tokens": 1000}}}})
    run, log = tmp_path / "run", tmp_path / "first.log"
    proc = start_trainer(job, str(run), log_path=log)
    try:
        wait_for(lambda: "writing 2 sample(s)" in log.read_text() or proc.poll() is not None, 300, interval=0.05,
                 what="the finish to write samples")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == contract.EXIT_INTERRUPTED, log.read_text()[-3000:]
    finally:
        proc.kill()
        proc.wait()
    status = json.loads((run / contract.STATUS).read_text())
    assert (status["state"], status["step"]) == (contract.INTERRUPTED, 20)
    assert not (run / contract.REPORT_JSON).exists()
    final_before = sha256_of(run / "final" / "model.safetensors")

    again = run_trainer(job, str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoints/" in again.stderr
    assert not re.search(r"step \d+/20 loss", again.stderr)  # no training step
    assert re.search(r"finishing at step 20: final = best weights \(final(, samples)? done already\)", again.stderr)
    assert sha256_of(run / "final" / "model.safetensors") == final_before
    assert json.loads((run / contract.STATUS).read_text())["state"] == contract.DONE
    report = report_of(run)
    assert report["resumes"] == 1 and len(report["files"]["samples"]) == 3  # 2 samples + samples.json
    assert all((run / key).is_file() for key in report["files"]["samples"])


# --- LoRA: the merged model ----------------------------------------------------------------------
LOAD_MERGED = """
import sys, torch
sys.modules["peft"] = None  # transformers alone: importing peft would fail
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
"""


def test_lora_merged_model_loads_with_transformers_alone_and_gives_the_adapted_logits(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.fixtures.tiny_hf import corpus, make_model_folder, write_jsonl

    make_model_folder(tmp_path / "tiny-gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=64)
    write_jsonl(tmp_path / "songs.jsonl", corpus(120, seed=5))
    doc = {"train": {"seed": 7, "model": {"recipe": "causal_lm_lora", "name_or_path": "tiny-gpt2",
                                          "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                     "data": {"format": "jsonl", "train": "songs.jsonl", "block_size": 32, "val_fraction": 0.1},
                     "batch_size": 4, "max_steps": 12, "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
                     "schedule": {"warmup_steps": 2}, "eval": {"every_steps": 6, "batches": 2},
                     "checkpoint": {"every_steps": 6}, "logging": {"progress_bar": False}, "threads": 1,
                     "finish": {"samples": {"count": 2, "max_new_tokens": 12}}}}
    job = tmp_path / "lora.yaml"
    job.write_text(json.dumps(doc))
    run = tmp_path / "run"
    result = run_trainer(job, str(run))
    assert result.returncode == 0, result.stderr[-3000:]

    merged = run / contract.MERGED_DIR
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")
    loaded = subprocess.run([sys.executable, "-c", LOAD_MERGED, str(merged), str(tmp_path / "ids.pt"),
                             str(tmp_path / "merged_logits.pt")], capture_output=True, text=True, timeout=300,
                            env=trainer_env(), cwd=ROOT)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    merged_logits = torch.load(tmp_path / "merged_logits.pt")

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny-gpt2").eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, run / contract.FINAL_DIR).eval()
        adapted_logits = adapted(ids).logits
    assert torch.allclose(merged_logits, adapted_logits, atol=1e-5, rtol=0)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)  # the adapter is in it

    report = report_of(run)
    validation = report["validation"]
    assert validation["base"]["loss"] > validation["best"]["loss"]  # the tuned model beside the base model
    assert validation["base"]["perplexity"] == pytest.approx(2.718281828 ** validation["base"]["loss"], rel=1e-4)
    assert report["files"]["merged"] and "base model (no adapter)" in (run / contract.REPORT_MD).read_text()
    samples = json.loads((run / contract.SAMPLES_DIR / "samples.json").read_text())
    assert len(samples) == 2 and all(s["prompt"] and s["continuation"] for s in samples)


# --- music: MIDI samples ---------------------------------------------------------------------------
def test_music_samples_parse_as_midi_and_hold_notes(tmp_path):
    import mido
    from symusic import Score

    from tests.fixtures.midi_gen import write_dataset

    write_dataset(tmp_path / "data", seed=0, pieces=8, beats=128)
    common = {"seed": 1, "batch_size": 32, "schedule": {"warmup_steps": 5}, "checkpoint": {"every_steps": 50},
              "logging": {"progress_bar": False}, "threads": 2, "finish": {"samples": 2},
              "data": {"format": "midi", "train": str(tmp_path / "data"), "val_fraction": 0.25,
                       "midi": {"window": 64, "cache_dir": str(tmp_path / "cache")}}}
    stages = {
        "vqvae": {"model": {"recipe": "vqvae", "size": "tiny"}, "max_steps": 20,
                  "optimizer": {"lr": 3e-3, "weight_decay": 0.0}, "eval": {"every_steps": 10, "batches": 2}},
        "hybrid": {"model": {"recipe": "hybrid", "size": "tiny", "new_params_lr": 3e-3},
                   "init_from": {"vqvae": str(tmp_path / "vqvae") + "/best"}, "max_steps": 10,
                   "optimizer": {"lr": 5e-6, "weight_decay": 0.0}, "eval": {"every_steps": 5, "batches": 2}},
    }
    written = {"vqvae": ("sample-{n}.mid", "sample-{n}.original.mid"), "hybrid": ("sample-{n}.mid", "sample-{n}.style.mid")}
    for name, train in stages.items():
        job = tmp_path / f"{name}.yaml"
        job.write_text(json.dumps({"train": {**common, **train}}))
        result = run_trainer(job, str(tmp_path / name), timeout=600,
                             env={**trainer_env(), "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
        assert result.returncode == 0, result.stderr[-3000:]
        files = sorted(p.name for p in (tmp_path / name / contract.SAMPLES_DIR).iterdir())
        assert files == sorted(f.format(n=n) for n in (1, 2) for f in written[name])
        for file in files:
            path = tmp_path / name / contract.SAMPLES_DIR / file
            score = Score(str(path))
            assert score.note_num() > 0, f"{name}: {file} holds no note"
            assert any(m.type == "note_on" for track in mido.MidiFile(path).tracks for m in track)
        assert [f"{contract.SAMPLES_DIR}/{f}" for f in files] == report_of(tmp_path / name)["files"]["samples"]
