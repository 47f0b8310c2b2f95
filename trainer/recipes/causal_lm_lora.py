"""A Hugging Face causal LM (hub id or local folder) with a peft LoRA adapter.

The seed setup is GPT-2 small with r=8, alpha=16, dropout=0.05 on ``c_attn``/``c_proj``: 811,008
trainable parameters. Only the adapter is trained, checkpointed and written to ``final/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from trainer.config import CausalLMLoRA, TrainConfig
from trainer.data import load_datasets, load_tokenizer, pad_collate
from trainer.recipes import LossOutput, Recipe, token_loss

log = logging.getLogger("trainer")


def build(cfg: TrainConfig, job_path: str | Path) -> Recipe:
    # transformers takes seconds to import: only jobs that use this recipe pay for it.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model_cfg, data = cfg.model, cfg.data
    assert isinstance(model_cfg, CausalLMLoRA) and data is not None
    source = _local_or_hub(model_cfg.name_or_path, job_path)
    tokenizer = load_tokenizer(data.tokenizer or source) if data.format != "tokens" else None
    train_set, val_set = load_datasets(data, job_path, tokenizer)
    pad_id = tokenizer.pad_id if tokenizer else 0

    base = AutoModelForCausalLM.from_pretrained(source, revision=model_cfg.revision, dtype=torch.float32)
    if model_cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    lora = model_cfg.lora
    model = get_peft_model(
        base,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
            # GPT-2 stores c_attn/c_proj as Conv1D (transposed weights); peft must know.
            fan_in_fan_out=getattr(base.config, "model_type", "") == "gpt2",
        ),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA r=%d alpha=%g on %s: %s trainable parameters of %s (%.2f%%)", lora.r, lora.alpha,
             ",".join(lora.target_modules), f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    def collate(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, mask = pad_collate(items, pad_id)
        return {"input_ids": ids, "attention_mask": mask}

    def forward(m: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
        return token_loss(logits[:, :-1], targets)

    def save_final(m: nn.Module, folder: Path) -> None:
        m.save_pretrained(str(folder), safe_serialization=True)  # adapter_model.safetensors + adapter_config.json

    return Recipe(model, train_set, val_set, collate, forward, save_final)


def _local_or_hub(name_or_path: str, job_path: str | Path) -> str:
    """A relative path that exists next to the job file wins over a hub id of the same spelling."""
    candidate = Path(job_path).resolve().parent / name_or_path
    return str(candidate) if candidate.exists() else name_or_path
