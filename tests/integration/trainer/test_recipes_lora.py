"""causal_lm_lora through the real trainer, offline: a tiny GPT-2 and a trained BPE tokenizer saved
with save_pretrained, jsonl and text data, LoRA on c_attn/c_proj with gradient checkpointing.
Only the adapter is trained, checkpointed and written; peft loads it back onto the base; a run
SIGKILLed mid-way resumes to the same adapter bytes (LoRA and GPT-2 dropout draw from the RNG)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures.interrupt import sigkill_after_checkpoint
from tests.fixtures.jobs import run_trainer, sha256_of
from tests.fixtures.tiny_hf import corpus, make_model_folder, write_jsonl
from trainer import contract

N_EMBD, N_LAYER, R = 32, 2, 4
# Per layer: c_attn (32 -> 96), attn.c_proj (32 -> 32), mlp.c_proj (128 -> 32); LoRA adds r * (in + out) each.
ADAPTER_PARAMS = N_LAYER * R * ((N_EMBD + 3 * N_EMBD) + (N_EMBD + N_EMBD) + (4 * N_EMBD + N_EMBD))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    make_model_folder(root / "tiny-gpt2", n_embd=N_EMBD, n_layer=N_LAYER, n_head=2, n_positions=64)
    write_jsonl(root / "songs.jsonl", corpus(120, seed=5), field="song")
    (root / "notes.txt").write_text("\n".join(corpus(150, seed=6)))
    return root


def lora_job(folder: Path, name: str, **train) -> Path:
    doc = {"train": {
        "seed": 7,
        "model": {"recipe": "causal_lm_lora", "name_or_path": "tiny-gpt2", "gradient_checkpointing": True,
                  "lora": {"r": R, "alpha": 8, "dropout": 0.1, "target_modules": ["c_attn", "c_proj"]}},
        "data": {"format": "jsonl", "train": "songs.jsonl", "text_field": "song", "block_size": 32, "val_fraction": 0.1},
        "batch_size": 4, "grad_accum": 2, "max_steps": 40,
        "optimizer": {"lr": 1e-2, "weight_decay": 0.01},
        "schedule": {"warmup_steps": 4},
        "eval": {"every_steps": 20, "batches": 2},
        "checkpoint": {"every_steps": 5, "keep_last": 2},
        "logging": {"every_steps": 10, "progress_bar": False},
        "threads": 1,
        **train,
    }}
    path = folder / name  # beside the model and data: relative paths resolve from here
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def straight_run(workspace) -> tuple[Path, str]:
    """The jsonl job, run once without interruption: the reference the other tests compare to."""
    job = lora_job(workspace, "jsonl.yaml")
    result = run_trainer(job, str(workspace / "straight"))
    assert result.returncode == 0, result.stderr[-3000:]
    return workspace / "straight", result.stderr


def test_trains_only_the_adapter_and_checkpoints_only_the_adapter(workspace, straight_run):
    run, log = straight_run
    assert f"LoRA r={R} alpha=8 dropout=0.1 on c_attn,c_proj: {ADAPTER_PARAMS:,} trainable parameters of" in log
    assert f"training {ADAPTER_PARAMS:,} trainable parameters for 40 steps" in log

    ckpt = torch.load(run / contract.LATEST, map_location="cpu", weights_only=True)
    assert all(".lora_A." in k or ".lora_B." in k for k in ckpt["model"])
    assert sum(t.numel() for t in ckpt["model"].values()) == ADAPTER_PARAMS
    # The whole checkpoint (adapter, its AdamW moments, RNGs) is smaller than the frozen base model.
    assert (run / contract.LATEST).stat().st_size < (workspace / "tiny-gpt2" / "model.safetensors").stat().st_size


def test_final_is_a_peft_adapter_that_loads_onto_the_base(workspace, straight_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _ = straight_run
    final = run / contract.FINAL_DIR
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in final.iterdir()}
    assert not (final / "model.safetensors").exists()  # never the base weights
    config = json.loads((final / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (R, 8, 0.1)
    assert sorted(config["target_modules"]) == ["c_attn", "c_proj"] and config["fan_in_fan_out"] is True

    adapter = load_file(final / "adapter_model.safetensors")
    ckpt = torch.load(run / contract.LATEST, map_location="cpu", weights_only=True)["model"]
    assert {k.replace(".default", "") for k in ckpt} == set(adapter)
    for name, tensor in ckpt.items():
        assert torch.equal(adapter[name.replace(".default", "")], tensor)  # no EMA: the trained weights
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # lora_B starts at 0: it trained

    base = AutoModelForCausalLM.from_pretrained(workspace / "tiny-gpt2")
    tok = AutoTokenizer.from_pretrained(workspace / "tiny-gpt2")
    ids = tok("the piano plays a slow chord", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = base(ids).logits.clone()
        model = PeftModel.from_pretrained(base, final).eval()
        adapted = model(ids).logits
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert all(torch.equal(loaded[k], ckpt[k]) for k in ckpt)
    assert not torch.allclose(plain, adapted)


def test_sigkill_and_resume_gives_the_same_adapter_bytes(workspace, straight_run):
    straight, _ = straight_run
    job = lora_job(workspace, "jsonl.yaml")
    killed = workspace / "killed"
    sigkill_after_checkpoint(job, killed, step=10, log_path=workspace / "killed.log")
    resumed = run_trainer(job, str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoints/" in resumed.stderr and "(step 40," not in resumed.stderr
    adapter = "final/adapter_model.safetensors"
    assert sha256_of(killed / adapter) == sha256_of(straight / adapter)


def test_text_data_through_the_models_own_tokenizer_with_bf16_and_ema(workspace):
    job = lora_job(workspace, "text.yaml", max_steps=6, precision="bf16", ema={"decay": 0.9},
                   data={"format": "text", "train": "notes.txt", "block_size": 32, "val_fraction": 0.1},
                   eval={"every_steps": 3, "batches": 2}, checkpoint={"every_steps": 3}, finish={"final": "last"})
    result = run_trainer(job, str(workspace / "text"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val loss" in result.stderr and "bf16" in result.stderr
    ckpt = torch.load(workspace / "text" / contract.LATEST, map_location="cpu", weights_only=True)
    adapter = load_file(workspace / "text" / "final" / "adapter_model.safetensors")
    for name, tensor in ckpt["ema"].items():  # with EMA on, final/ holds the averaged adapter
        assert torch.equal(adapter[name.replace(".default", "")], tensor)
