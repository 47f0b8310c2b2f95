"""Stage 1 of the music pipeline: a VQ-VAE over piano-roll windows.

``recon, vq_loss, perplexity = model(piano_roll)``; the loss is ``recon + vq_loss``. The
reconstruction is a cross-entropy of each cell's predicted velocity/127 against the real one (0 for
silence), so it learns both which keys sound and how loud; ``vq_loss`` is the weighted commitment
term (the codebook itself moves by moving averages, see :class:`~trainer.recipes.music.VectorQuantizer`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from trainer.config import VQVAE, Samples, TrainConfig
from trainer.recipes.base import LossOutput, Recipe, save_weights
from trainer.recipes.music import (
    RollDecoder,
    RollEncoder,
    VectorQuantizer,
    check_window,
    collate,
    load_windows,
)
from trainer.sampling import probabilities_to_roll, roll_statistics, spread, write_midi


class VQVAEModel(nn.Module):
    def __init__(self, cfg: VQVAE):
        super().__init__()
        self.commitment = cfg.commitment
        self.encoder = RollEncoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.ema_decay, cfg.dead_code_threshold,
                                         cfg.restart_dead_codes)
        self.decoder = RollDecoder(cfg)

    def forward(self, roll: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``roll`` [B, 88, T] in 0..1 → ``(reconstruction logits [B, 88, T], vq_loss, perplexity)``."""
        q, _codes, commitment, perplexity = self.quantizer(self.encoder(roll))
        return self.decoder(q), self.commitment * commitment, perplexity

    @torch.no_grad()
    def encode(self, roll: torch.Tensor) -> torch.Tensor:
        """The codes of a window: [B, T / 2**downsample]."""
        return self.quantizer(self.encoder(roll), update=False)[1]


def recon_loss(logits: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Per-cell binary cross-entropy against velocity/127, in float32."""
    return F.binary_cross_entropy_with_logits(logits.float(), roll.float())


def build(cfg: TrainConfig, job_path: str | Path, init: dict[str, dict[str, torch.Tensor]] | None = None) -> Recipe:
    model_cfg = cfg.model
    assert isinstance(model_cfg, VQVAE) and cfg.data is not None
    window = check_window(cfg)
    train_set, val_set, _ = load_windows(cfg.data, job_path, cfg.logging.progress_bar)
    model = VQVAEModel(model_cfg)

    def forward(m: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        recon, vq_loss, perplexity = m(batch["roll"])
        rec = recon_loss(recon, batch["roll"])
        quantizer = (m.module if hasattr(m, "module") else m).quantizer  # under DDP the model is wrapped
        metrics = {"recon_loss": rec.detach(), "commitment_loss": vq_loss.detach(), "codebook_perplexity": perplexity,
                   "dead_codes": quantizer.dead_codes()}
        return LossOutput(rec + vq_loss, metrics=metrics)

    def save_final(m: nn.Module, folder: Path) -> None:
        config = {**model_cfg.model_dump(), "window": window, "frames_per_beat": cfg.data.midi.frames_per_beat}
        save_weights(m, folder, config)

    def sample(m: nn.Module, folder: Path, settings: Samples) -> list[Path]:
        """The reconstructions of held-out windows (``sample-<n>.mid``) beside the windows themselves
        (``sample-<n>.original.mid``): what the codes keep of the music, by ear."""
        windows = val_set or train_set
        stats = roll_statistics(train_set)
        device = next(m.parameters()).device
        written = []
        for n, i in enumerate(spread(len(windows), settings.count), 1):
            roll, _ = windows[i]
            recon, _, _ = m(roll.float().div(127.0).unsqueeze(0).to(device))
            for name, notes in ((f"sample-{n}.mid", probabilities_to_roll(torch.sigmoid(recon[0]), stats)),
                                (f"sample-{n}.original.mid", roll.numpy())):
                write_midi(notes, cfg.data.midi.frames_per_beat, folder / name)
                written.append(folder / name)
        return written

    return Recipe(model, train_set, val_set, collate, forward, save_final, sample=sample)
