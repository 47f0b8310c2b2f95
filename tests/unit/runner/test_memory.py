"""Memory fit before launch (runner/memory.py): parameter counts that equal the models the trainer
builds, and a job that cannot fit its GPU refused at submit with the numbers and what to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from runner import memory
from runner.spec import load_job
from tests.fixtures.jobs import ROOT, make_job
from trainer.config import TrainConfig


def train_config(model: dict, **data) -> TrainConfig:
    midi = model["recipe"] in ("vqvae", "style_encoder", "hybrid")
    base = {"format": "midi", "train": "x", "midi": {"window": 64}} if midi else {"format": "text", "train": "x"}
    return TrainConfig.model_validate({"model": model, "data": {**base, **data}, "max_steps": 10})


def numel(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@pytest.mark.parametrize("bias", [True, False])
def test_tiny_gpt_parameters_are_counted_exactly(bias):
    from trainer.recipes.tiny_gpt import GPT

    cfg = train_config({"recipe": "tiny_gpt", "n_layer": 3, "n_head": 4, "n_embd": 64, "bias": bias}, block_size=96)
    est = memory.estimate(cfg, ROOT / "job.yaml")
    assert est.params == est.trainable == numel(GPT(cfg.model, 256, 96))


@pytest.mark.parametrize("size", [{"size": "tiny"}, {"size": "tiny", "channels": 48, "res_blocks": 2, "downsample": 3}])
def test_music_parameters_are_counted_exactly(size):
    from trainer.recipes.hybrid import HybridModel
    from trainer.recipes.style_encoder import StyleNet
    from trainer.recipes.vqvae import VQVAEModel

    vq = train_config({"recipe": "vqvae", **size})
    est = memory.estimate(vq, ROOT / "job.yaml")
    model = VQVAEModel(vq.model)
    assert est.params == numel(model) and est.buffers == sum(b.numel() for b in model.buffers())

    style = train_config({"recipe": "style_encoder", **size})
    assert memory.estimate(style, ROOT / "job.yaml").params == numel(StyleNet(style.model, 4))

    hybrid = train_config({"recipe": "hybrid", **size})
    model = HybridModel(hybrid.model, 64 // 2 ** hybrid.model.downsample)
    model.freeze_vqvae()
    est = memory.estimate(hybrid, ROOT / "job.yaml")
    assert est.trainable == numel(model, trainable_only=True)
    assert est.buffers == sum(b.numel() for n, b in model.named_buffers() if not n.startswith("style.centroids"))


def test_gpt2_lora_counts_match_peft_and_the_seeds():
    from transformers import GPT2Config, GPT2LMHeadModel

    from trainer.config import LoRA
    from trainer.recipes.causal_lm_lora import wrap_with_lora

    lora = LoRA(r=4, target_modules=["c_attn", "c_proj"])
    config = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "vocab_size": 300, "n_positions": 64}
    model = wrap_with_lora(GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=300, n_positions=64)),
                           lora)
    params, trainable, *_ = memory.causal_lm_counts(config, lora)
    assert (params, trainable) == (numel(model), numel(model, trainable_only=True))
    # GPT-2 small with the seeds' adapter: 811,008 trainable parameters (0.65%).
    _, seeds, *_ = memory.causal_lm_counts(memory.hf_config("gpt2", ROOT / "job.yaml"), LoRA(r=8))
    assert seeds == 811_008


def big_job(folder: Path, gpu, **train) -> Path:
    """The quickstart as a 1.3B-parameter GPT on a docker GPU (no engine needed to check it)."""
    return make_job(folder, {"backend": "docker", "resources": {"gpu": gpu}, "train": {
        "model": {"n_layer": 24, "n_head": 16, "n_embd": 2048}, "data": {"block_size": 1024}, "batch_size": 16,
        "ema": None, **train}})


def test_a_job_that_cannot_fit_is_refused_with_the_numbers_and_what_to_change(tmp_path):
    job = load_job(big_job(tmp_path, "a4000"))
    with pytest.raises(memory.MemoryFitError) as e:
        memory.check_fit(job)
    message = str(e.value)
    assert "a4000 has 16 GiB" in message and "train: needs about" in message
    assert "1,211,224,064 parameters" in message  # 24 x 12 x 2048^2 + biases, norms and embeddings
    assert "optimizer (adamw) 9.02 GiB" in message and "activations at batch 16" in message
    assert "optimizer.name: adamw8bit" in message and "precision: bf16" in message and "smaller model" in message
    assert "batch_size" not in message  # weights, gradients and AdamW alone are 18 GiB: no batch fits 16 GiB


def test_the_batch_it_suggests_fits(tmp_path):
    with pytest.raises(memory.MemoryFitError) as e:
        memory.check_fit(load_job(big_job(tmp_path, "a6000")))
    assert "a6000 has 48 GiB" in str(e.value)
    assert "batch_size 4 with grad_accum 4 (the same examples per step)" in str(e.value)
    assert memory.check_fit(load_job(big_job(tmp_path / "b", "a6000", batch_size=4, grad_accum=4))) == []


def test_8bit_adam_is_counted_as_such_and_a_failover_list_is_checked_gpu_by_gpu(tmp_path):
    plain = load_job(big_job(tmp_path / "a", "h200", batch_size=1))
    eight = load_job(big_job(tmp_path / "b", "h200", batch_size=1, optimizer={"name": "adamw8bit"}))
    a, b = memory.estimate(plain.train, plain.path), memory.estimate(eight.train, eight.path)
    assert a.optimizer_bytes == 8 * a.trainable and b.optimizer_bytes == 2 * b.trainable
    assert b.total_bytes < a.total_bytes

    job = load_job(big_job(tmp_path / "c", ["h200", "a4000", "rtx4090"]))
    with pytest.raises(memory.MemoryFitError) as e:
        memory.check_fit(job)
    assert "a4000 has 16 GiB" in str(e.value) and "rtx4090 has 24 GiB" in str(e.value)
    assert "h200" not in str(e.value)


def test_submit_refuses_before_anything_is_built_or_recorded(tmp_path, runner_home):
    from runner import actions

    job = load_job(make_job(tmp_path, {"resources": {"gpu": "a4000"}, "train": {
        "model": {"n_layer": 24, "n_head": 16, "n_embd": 2048}, "data": {"block_size": 1024}}}))
    with pytest.raises(actions.ActionError) as e:
        actions.submit(job)
    assert "does not fit in GPU memory" in str(e.value) and "Nothing was built or launched" in str(e.value)
    assert not runner_home.exists()  # no state: nothing recorded


def test_8bit_adam_where_bitsandbytes_cannot_run_is_said_at_submit(tmp_path):
    job = load_job(make_job(tmp_path, {"backend": "docker", "train": {"optimizer": {"name": "adamw8bit"}}}))
    (note,) = memory.check_fit(job)
    assert "adamw8bit needs bitsandbytes on CUDA" in note and "32-bit AdamW" in note
    assert "train.optimizer.name" in note
    on_gpu = load_job(make_job(tmp_path / "gpu", {"backend": "docker", "resources": {"gpu": "rtx3090"},
                                                  "train": {"optimizer": {"name": "adamw8bit"}}}))
    assert memory.check_fit(on_gpu) == []


def test_the_users_jobs_fit_their_gpus(tmp_path):
    for name in ("brad_finetune.yaml", "gpt2_lora.yaml"):
        job = load_job(ROOT / "jobs" / name)
        assert memory.check_fit(job) == []
    brad = load_job(ROOT / "jobs" / "brad_finetune.yaml")
    vqvae = memory.estimate(brad.spec.stages["vqvae"].train, brad.path)
    assert 40e6 < vqvae.params < 60e6  # docs/music_sizes.md: 51 M
    lora = memory.estimate(load_job(ROOT / "jobs" / "gpt2_lora.yaml").train, ROOT / "jobs" / "gpt2_lora.yaml")
    assert lora.trainable == 811_008 and lora.total_bytes < 4 * memory.GIB  # the seeds saw 0.5 GB


def test_a_custom_recipe_is_not_estimated():
    cfg = TrainConfig.model_validate({"model": {"recipe": "tests.fixtures.custom_recipe:build"}, "max_steps": 5})
    assert memory.estimate(cfg, ROOT / "job.yaml") is None


def test_a_local_model_folder_is_read(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64,
                                                            "intermediate_size": 128, "num_hidden_layers": 2,
                                                            "num_attention_heads": 4, "num_key_value_heads": 2,
                                                            "vocab_size": 100}))
    cfg = yaml.safe_load("""
model: {recipe: causal_lm_lora, name_or_path: m, lora: {target_modules: [q_proj, v_proj]}}
data: {format: jsonl, train: x, block_size: 32}
max_steps: 5
""")
    est = memory.estimate(TrainConfig.model_validate(cfg), tmp_path / "job.yaml")
    # q: 64->64, v: 64->32 (two of four heads share keys and values), r=8, two layers.
    assert est.trainable == 2 * 8 * ((64 + 64) + (64 + 32))
