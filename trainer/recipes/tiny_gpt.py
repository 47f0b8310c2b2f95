"""A small GPT built from a config, in the shape of nanoGPT: the quickstart model."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from trainer.config import Samples, TinyGPT, TrainConfig
from trainer.data import load_datasets, load_tokenizer, pad_collate
from trainer.recipes.base import LossOutput, Recipe, check_vocab, save_weights, token_loss
from trainer.sampling import continue_ids, generator, text_prompts, write_text_samples

log = logging.getLogger("trainer")


class Block(nn.Module):
    def __init__(self, cfg: TinyGPT):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias),
            nn.Dropout(cfg.dropout),
        )
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        x = x + self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: TinyGPT, vocab_size: int, block_size: int):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.size(1)
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build(cfg: TrainConfig, job_path: str | Path) -> Recipe:
    model_cfg, data = cfg.model, cfg.data
    assert isinstance(model_cfg, TinyGPT) and data is not None
    tokenizer = None if data.format == "tokens" else load_tokenizer(data.tokenizer)
    vocab = model_cfg.vocab_size or data.vocab_size or (tokenizer.vocab_size if tokenizer else 0)
    train_set, val_set = load_datasets(data, job_path, tokenizer)
    pad_id = tokenizer.pad_id if tokenizer else 0
    model = GPT(model_cfg, vocab, data.block_size)

    def collate(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, mask = pad_collate(items, pad_id)
        check_vocab(ids, vocab)
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return {"idx": ids[:, :-1], "targets": targets}

    def forward(m: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        return token_loss(m(batch["idx"]), batch["targets"])

    def save_final(m: nn.Module, folder: Path) -> None:
        config = {**model_cfg.model_dump(), "vocab_size": vocab, "block_size": data.block_size, "tied": "lm_head.weight=wte.weight"}
        save_weights(m, folder, config, leave_out="lm_head.weight")

    def sample(m: nn.Module, folder: Path, settings: Samples) -> list[Path]:
        if tokenizer is None:  # token shards: nothing to turn the ids back into text with
            log.info("no text samples: data of format tokens has no tokenizer to decode them with")
            return []
        device = next(m.parameters()).device
        gen = generator(cfg.seed, device)
        prompts = text_prompts(settings, val_set or train_set, tokenizer.encode)
        continued: dict[int, list[int]] = {}
        for length in sorted({len(p) for p in prompts}):  # prompts of one length are drawn as one batch
            group = [i for i, p in enumerate(prompts) if len(p) == length]
            ids = continue_ids(m, torch.tensor([prompts[i] for i in group], device=device), settings.max_new_tokens,
                               settings, gen, context=data.block_size)
            continued.update({i: ids[row, length:].tolist() for row, i in enumerate(group)})
        return write_text_samples(folder, [(tokenizer.decode(p), tokenizer.decode(continued[i])) for i, p in enumerate(prompts)])

    return Recipe(model, train_set, val_set, collate, forward, save_final, sample=sample)
