"""Stage 2 of the music pipeline: a window → a style embedding, trained so that windows of the
same pianist are closer than windows of different ones.

The encoder is the VQ-VAE's (``init_from: {vqvae: …}`` loads its weights), pooled over time (mean
and max) and projected to ``embed_dim``, L2-normalised. The loss is the supervised contrastive loss
of Khosla et al. (2020): every other window of the same pianist in the batch is a positive. A
running centroid per pianist (a buffer, so it is checkpointed and ships with the weights) gives
the held-out metric: a validation window counts as right when its nearest centroid is its pianist's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from trainer.config import StyleEncoder, TrainConfig
from trainer.recipes.base import LossOutput, Recipe, save_weights
from trainer.recipes.music import RollEncoder, check_window, collate, load_part, load_windows, lr_scales

log = logging.getLogger("trainer")

#: How fast the pianist centroids follow the training embeddings.
CENTROID_MOMENTUM = 0.9


class StyleNet(nn.Module):
    def __init__(self, cfg: StyleEncoder | object, n_pianists: int):
        super().__init__()
        self.encoder = RollEncoder(cfg)
        self.head = nn.Sequential(nn.Linear(2 * cfg.code_dim, cfg.channels), nn.GELU(),
                                  nn.Linear(cfg.channels, cfg.embed_dim))
        self.register_buffer("centroids", torch.zeros(max(n_pianists, 1), cfg.embed_dim))

    def forward(self, roll: torch.Tensor) -> torch.Tensor:
        """``roll`` [B, 88, T] → unit-length style embeddings [B, embed_dim], float32."""
        h = self.encoder(roll).float()
        pooled = torch.cat([h.mean(-1), h.amax(-1)], dim=1)
        return F.normalize(self.head(pooled).float(), dim=-1)

    @torch.no_grad()
    def update_centroids(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        for c in labels.unique().tolist():
            if c >= 0:
                mean = z[labels == c].mean(0)
                self.centroids[c].mul_(CENTROID_MOMENTUM).add_(mean, alpha=1 - CENTROID_MOMENTUM)

    def centroid_logits(self, z: torch.Tensor, temperature: float) -> torch.Tensor:
        """Cosine similarity to each pianist's centroid: the argmax is the nearest centroid."""
        return z @ F.normalize(self.centroids, dim=-1).t() / temperature


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss over unit vectors ``z`` [B, E] (float32); anchors without a
    positive in the batch are left out."""
    sim = z @ z.t() / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = sim.masked_fill(eye, float("-inf")).log_softmax(dim=1)
    positives = (labels[:, None] == labels[None, :]) & ~eye & (labels[:, None] >= 0)
    count = positives.sum(1)
    has = count > 0
    if not has.any():
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(1)[has] / count[has])
    return per_anchor.mean()


def build(cfg: TrainConfig, job_path: str | Path, init: dict[str, dict[str, torch.Tensor]] | None = None) -> Recipe:
    model_cfg = cfg.model
    assert isinstance(model_cfg, StyleEncoder) and cfg.data is not None
    check_window(cfg)
    train_set, val_set, pianists = load_windows(cfg.data, job_path, cfg.logging.progress_bar)
    if len(pianists) < 2:
        raise ValueError(f"the style encoder needs windows of at least 2 pianists, found {len(pianists)} "
                         f"({', '.join(pianists) or 'none'}) under {cfg.data.train}: lay the files out as "
                         "<train>/<pianist>/.../*.mid")
    log.info("style encoder over %d pianists: %s", len(pianists), ", ".join(pianists))
    model = StyleNet(model_cfg, len(pianists))
    init = init or {}
    if "vqvae" in init:
        n = load_part(model.encoder, init["vqvae"], "encoder.", "train.init_from.vqvae")
        log.info("encoder initialised from the VQ-VAE (%d tensors)", n)
    elif "vqvae" not in cfg.init_from:
        log.warning("no init_from.vqvae: the style encoder's encoder starts from random weights")
    # The head is new whatever happens; the encoder is new only when no VQ-VAE is configured to load
    # (decided by the config, not by this start, so a resume builds the same optimizer groups).
    new = ("head.",) if "vqvae" in cfg.init_from else ("head.", "encoder.")
    scales = lr_scales(model, new, model_cfg.new_params_lr, cfg.optimizer.lr)

    def forward(m: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        net = m.module if hasattr(m, "module") else m  # under DDP the model is wrapped
        z = m(batch["roll"])
        labels = batch["label"]
        loss = supcon_loss(z, labels, model_cfg.temperature)
        if net.training:
            net.update_centroids(z.detach(), labels)
        logits = net.centroid_logits(z, model_cfg.temperature)
        known = labels >= 0
        accuracy = (logits.argmax(-1) == labels)[known].float().mean() if known.any() else torch.zeros(())
        return LossOutput(loss, logits, labels.masked_fill(~known, -100), metrics={"pianist_accuracy": accuracy.detach()})

    def save_final(m: nn.Module, folder: Path) -> None:
        save_weights(m, folder, {**model_cfg.model_dump(), "pianists": pianists})

    return Recipe(model, train_set, val_set, collate, forward, save_final, scales)
