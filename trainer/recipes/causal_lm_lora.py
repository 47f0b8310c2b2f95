"""A Hugging Face causal LM (hub id or local folder) with a peft LoRA adapter.

The seed setup is GPT-2 small with r=8, alpha=16, dropout=0.05 on ``c_attn``/``c_proj``: 811,008
trainable parameters. Only the adapter is trained, checkpointed and written to ``final/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config import CausalLMLoRA, LoRA, Samples, TrainConfig
from trainer.data import load_datasets, load_tokenizer, pad_collate
from trainer.recipes.base import LossOutput, Recipe, check_vocab, token_loss
from trainer.sampling import text_prompts, write_text_samples

log = logging.getLogger("trainer")


def build(cfg: TrainConfig, job_path: str | Path) -> Recipe:
    # transformers takes seconds to import: only jobs that use this recipe pay for it.
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its weight-loading bars would clutter the trainer's log
    model_cfg, data = cfg.model, cfg.data
    assert isinstance(model_cfg, CausalLMLoRA) and data is not None
    source = _local_or_hub(model_cfg.name_or_path, job_path)
    tokenizer = load_tokenizer(data.tokenizer or source) if data.format != "tokens" else None
    train_set, val_set = load_datasets(data, job_path, tokenizer)
    pad_id = tokenizer.pad_id if tokenizer else 0

    base = AutoModelForCausalLM.from_pretrained(source, revision=model_cfg.revision, dtype=torch.float32)
    positions = getattr(base.config, "max_position_embeddings", None)
    if positions and data.block_size + 1 > positions:
        # An example is block_size + 1 tokens (inputs and the shifted targets come from one sequence).
        raise ValueError(f"data.block_size {data.block_size} is too long for {model_cfg.name_or_path}, which "
                         f"takes at most {positions} positions: set data.block_size to {positions - 1} or less")
    vocab = base.get_input_embeddings().num_embeddings
    if model_cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs and replays dropout with the same RNG.
        if hasattr(base, "activation_checkpointing_enable"):  # the old name is deprecated in transformers 5
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False  # a KV cache is useless in training and conflicts with checkpointing
    model = wrap_with_lora(base, model_cfg.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    lora = model_cfg.lora
    log.info("LoRA r=%d alpha=%g dropout=%g on %s: %s trainable parameters of %s (%.2f%%)", lora.r, lora.alpha,
             lora.dropout, ",".join(lora.target_modules), f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    def collate(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, mask = pad_collate(items, pad_id)
        check_vocab(ids, vocab)
        return {"input_ids": ids, "attention_mask": mask}

    def forward(m: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
        return token_loss(logits[:, :-1], targets)

    def save_final(m: nn.Module, folder: Path) -> None:
        m.save_pretrained(str(folder), safe_serialization=True)  # adapter_model.safetensors + adapter_config.json

    def sample(m: nn.Module, folder: Path, settings: Samples) -> list[Path]:
        if tokenizer is None:
            log.info("no text samples: data of format tokens has no tokenizer to decode them with")
            return []
        device = next(m.parameters()).device
        torch.manual_seed(cfg.seed)  # generate() draws from the global generator: the same samples on a relaunch
        rows = []
        for prompt in text_prompts(settings, val_set or train_set, tokenizer.encode):
            # A model with learned positions cannot read past them: the continuation stops there.
            room = settings.max_new_tokens if not positions else min(settings.max_new_tokens, positions - len(prompt))
            if room < 1:
                log.warning("sample prompt of %d tokens leaves no room in the model's %d positions", len(prompt), positions)
                continue
            ids = torch.tensor([prompt], device=device)
            out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=room, do_sample=True,
                             temperature=settings.temperature, top_k=settings.top_k or 0, pad_token_id=pad_id,
                             use_cache=True)
            rows.append((tokenizer.decode(prompt), tokenizer.decode(out[0, len(prompt):].tolist())))
        return write_text_samples(folder, rows)

    def merge(m: nn.Module, folder: Path) -> None:
        merged = m.merge_and_unload()  # W + (alpha / r) * B @ A in each adapted layer; the adapter is gone
        merged.config.use_cache = True  # switched off for gradient checkpointing, a training-only setting
        merged.save_pretrained(str(folder), safe_serialization=True)
        if tokenizer is not None and hasattr(tokenizer, "tok"):
            tokenizer.tok.save_pretrained(str(folder))  # the folder is a model a user loads as it is

    return Recipe(model, train_set, val_set, collate, forward, save_final, sample=sample, merge=merge,
                  base_model=lambda m: m.disable_adapter())


def wrap_with_lora(base: nn.Module, lora: LoRA) -> Any:
    """``base`` with a LoRA adapter on the modules named ``lora.target_modules``; only the adapter trains."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    wanted = set(lora.target_modules)
    targeted = [m for name, m in base.named_modules() if name.rsplit(".", 1)[-1] in wanted]
    if not targeted:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, (nn.Linear, Conv1D))})
        raise ValueError(f"model.lora.target_modules {sorted(wanted)} match no layer of this model; "
                         f"its linear layers are named: {', '.join(names)}")
    # GPT-2 and its kin store these projections as transformers' Conv1D, whose weight is [in, out], the
    # transpose of nn.Linear's. peft must know (fan_in_fan_out) or it merges the update transposed; decide
    # from the layers actually targeted, not from the model's name.
    fan_in_fan_out = any(isinstance(m, Conv1D) for m in targeted)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=sorted(wanted),
        task_type="CAUSAL_LM",
        fan_in_fan_out=fan_in_fan_out,
    )
    return get_peft_model(base, config)


def _local_or_hub(name_or_path: str, job_path: str | Path) -> str:
    """A relative path that exists next to the job file wins over a hub id of the same spelling."""
    candidate = Path(job_path).resolve().parent / name_or_path
    return str(candidate) if candidate.exists() else name_or_path
