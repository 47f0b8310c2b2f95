"""Stage 3 of the music pipeline: an autoregressive transformer over the VQ-VAE's codes,
conditioned on the style embedding, started from both earlier stages.

A window is encoded by the VQ-VAE into ``T / 2**downsample`` codes; the transformer reads a style
token (the style encoder's embedding of the window, projected) followed by the codes' codebook
vectors (projected), and predicts each next code. New windows in a pianist's style are generated
code by code and rendered by the VQ-VAE's decoder, which ships in the final weights.

What trains:
* The VQ-VAE (encoder, codebook, decoder) is frozen, kept as buffers (so it is still in every
  checkpoint). Its codes are the transformer's vocabulary and targets: if the encoder moved, the
  targets would move under the model, and the decoder would no longer render the codes it predicts.
* The style encoder fine-tunes at the optimizer's learning rate (the seeds' gentle 5e-6): loaded
  weights adapt to the new pianist without forgetting PiJAMA's style space.
* The transformer is new. At 5e-6 it would hardly move in a short run, so ``new_params_lr`` gives
  it (and the projections into it) a learning rate of its own: loaded weights fine-tune gently,
  new layers learn.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from trainer.config import Hybrid, Samples, TinyGPT, TrainConfig
from trainer.recipes.base import LossOutput, Recipe, save_weights, token_loss
from trainer.recipes.music import (
    RollDecoder,
    RollEncoder,
    VectorQuantizer,
    check_window,
    collate,
    freeze_as_buffers,
    load_part,
    load_windows,
    lr_scales,
)
from trainer.recipes.style_encoder import StyleNet
from trainer.recipes.tiny_gpt import Block
from trainer.sampling import (
    continue_ids,
    generator,
    probabilities_to_roll,
    roll_statistics,
    spread,
    write_midi,
)

log = logging.getLogger("trainer")

#: The parts that are new in this stage (the rest comes from init_from).
NEW_PARTS = ("style_proj.", "code_proj.", "wpe", "blocks.", "ln_f.", "lm_head.")


class HybridModel(nn.Module):
    def __init__(self, cfg: Hybrid, n_codes: int):
        super().__init__()
        self.encoder = RollEncoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, restart=False)
        self.decoder = RollDecoder(cfg)
        self.style = StyleNet(cfg, 1)
        block_cfg = TinyGPT(recipe="tiny_gpt", n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                            dropout=cfg.dropout)
        self.style_proj = nn.Linear(cfg.embed_dim, cfg.n_embd)
        self.code_proj = nn.Linear(cfg.code_dim, cfg.n_embd)
        self.wpe = nn.Parameter(torch.zeros(n_codes, cfg.n_embd))
        nn.init.normal_(self.wpe, std=0.02)
        self.blocks = nn.ModuleList(Block(block_cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.codebook_size)

    def freeze_vqvae(self) -> None:
        for part in (self.encoder, self.quantizer, self.decoder):
            freeze_as_buffers(part)

    @torch.no_grad()
    def codes(self, roll: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.encoder(roll), update=False)[1]

    def forward(self, roll: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``roll`` [B, 88, T] → ``(logits [B, L, codebook_size], codes [B, L])``: the logits at
        position i predict code i from the style and codes < i."""
        codes = self.codes(roll)
        return self.code_logits(self.style(roll), codes[:, :-1]), codes

    def code_logits(self, style: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Style embeddings [B, embed_dim] and the codes so far [B, n] → logits [B, n + 1, codebook_size]
        (position i predicts code i)."""
        vectors = self.quantizer.lookup(codes).permute(0, 2, 1)  # [B, n, code_dim]
        x = torch.cat([self.style_proj(style).unsqueeze(1), self.code_proj(vectors)], dim=1)
        x = x + self.wpe[: x.size(1)]
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build(cfg: TrainConfig, job_path: str | Path, init: dict[str, dict[str, torch.Tensor]] | None = None) -> Recipe:
    model_cfg = cfg.model
    assert isinstance(model_cfg, Hybrid) and cfg.data is not None
    window = check_window(cfg)
    train_set, val_set, _ = load_windows(cfg.data, job_path, cfg.logging.progress_bar)
    model = HybridModel(model_cfg, window // 2 ** model_cfg.downsample)
    init = init or {}
    if "vqvae" in init:
        n = sum(load_part(part, init["vqvae"], prefix, "train.init_from.vqvae")
                for part, prefix in ((model.encoder, "encoder."), (model.quantizer, "quantizer."), (model.decoder, "decoder.")))
        log.info("VQ-VAE (encoder, codebook, decoder) initialised from init_from.vqvae (%d tensors); frozen", n)
    if "style_encoder" in init:
        state = {k: v for k, v in init["style_encoder"].items() if not k.startswith("centroids")}
        n = load_part(model.style.encoder, state, "encoder.", "train.init_from.style_encoder")
        n += load_part(model.style.head, state, "head.", "train.init_from.style_encoder")
        log.info("style encoder initialised from init_from.style_encoder (%d tensors)", n)
    for name in ("vqvae", "style_encoder"):
        if name not in cfg.init_from:
            log.warning("no init_from.%s: the hybrid's %s starts from random weights", name, name.replace("_", " "))
    model.freeze_vqvae()
    new = NEW_PARTS if "style_encoder" in cfg.init_from else (*NEW_PARTS, "style.")
    scales = lr_scales(model, new, model_cfg.new_params_lr, cfg.optimizer.lr)

    def forward(m: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        logits, codes = m(batch["roll"])
        return token_loss(logits, codes)

    def save_final(m: nn.Module, folder: Path) -> None:
        config = {**model_cfg.model_dump(), "window": window, "frames_per_beat": cfg.data.midi.frames_per_beat}
        save_weights(m, folder, config)

    def sample(m: nn.Module, folder: Path, settings: Samples) -> list[Path]:
        """New windows (``sample-<n>.mid``), code by code, each in the style of a held-out window
        (``sample-<n>.style.mid``), rendered by the VQ-VAE's decoder."""
        windows = val_set or train_set
        stats = roll_statistics(train_set)
        device = next(m.parameters()).device
        gen = generator(cfg.seed, device)
        written = []
        for n, i in enumerate(spread(len(windows), settings.count), 1):
            roll, _ = windows[i]
            style = m.style(roll.float().div(127.0).unsqueeze(0).to(device))
            codes = continue_ids(lambda c, style=style: m.code_logits(style, c), torch.zeros(1, 0, dtype=torch.long,
                                 device=device), m.wpe.size(0), settings, gen)
            probs = torch.sigmoid(m.decoder(m.quantizer.lookup(codes))[0])
            for name, notes in ((f"sample-{n}.mid", probabilities_to_roll(probs, stats)), (f"sample-{n}.style.mid", roll.numpy())):
                write_midi(notes, cfg.data.midi.frames_per_beat, folder / name)
                written.append(folder / name)
        return written

    return Recipe(model, train_set, val_set, collate, forward, save_final, scales, sample=sample)
