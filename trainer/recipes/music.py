"""What the three music recipes (vqvae → style_encoder → hybrid) share: piano-roll windows as a
dataset, the convolutional encoder/decoder over time, and the vector quantiser.

A window is ``[88, T]`` (pitches x frames, velocity 0..127). The encoder treats the 88 pitches as
input channels of 1-D convolutions over time and halves the time axis ``downsample`` times, so a
window becomes ``T / 2**downsample`` codes: the token sequence the hybrid's transformer models.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trainer.config import Data, MusicRecipe, TrainConfig, resolve_path
from trainer.dataset_cache import is_remote, local_path
from trainer.midi_prep import N_PITCHES, Prepared, PrepSettings, prepare

log = logging.getLogger("trainer")


# --- data -----------------------------------------------------------------------------------------
def local_data_folder(job_path: str | Path, value: str) -> Path:
    """The local folder a ``data.train``/``data.val`` entry names. The one place a data location is
    turned into a folder: a remote one (``s3://…``) is to be downloaded into a local cache here."""
    full = resolve_path(job_path, value)
    if is_remote(full):  # downloaded once into the machine's data cache, reused by the next attempt
        return local_path(full if full.endswith("/") else full + "/")
    folder = Path(full)
    if not folder.is_dir():
        raise FileNotFoundError(f"MIDI folder not found: {value!r} (looked for {folder}); give a folder of "
                                ".mid/.midi files; relative paths are relative to the job file's folder")
    return folder


class Windows:
    """Piano-roll windows and their pianist labels; an item is ``(roll uint8 [88, T], label)``,
    label -1 for a window whose pianist the training data does not have."""

    def __init__(self, windows: np.ndarray, rows: np.ndarray, labels: np.ndarray):
        self.windows, self.rows, self.labels = windows, rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = int(self.rows[i])
        return torch.from_numpy(np.array(self.windows[row], dtype=np.uint8)), int(self.labels[i])


def collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """``roll``: float [B, 88, T] in 0..1 (velocity / 127); ``label``: int64 [B]."""
    return {"roll": torch.stack([r for r, _ in items]).float().div_(127.0),
            "label": torch.tensor([label for _, label in items], dtype=torch.int64)}


def _held_out_files(prep: Prepared, fraction: float) -> set[int]:
    """The files held out for validation: the last ``fraction`` of each pianist's files (at least one
    when a pianist has two or more), so every pianist is in both halves and no piece is in both."""
    by_label: dict[str, list[int]] = {}
    for i in sorted(set(prep.file_index.tolist())):
        by_label.setdefault(prep.labels[i], []).append(i)
    held: set[int] = set()
    for files in by_label.values():
        if fraction > 0 and len(files) >= 2:
            held.update(files[-max(1, round(len(files) * fraction)) :])
    return held


def load_windows(data: Data, job_path: str | Path, progress: bool = True) -> tuple[Windows, Windows | None, list[str]]:
    """``(train, val, pianists)`` for a ``format: midi`` data section. With no ``val`` folder, whole
    files are held out (``val_fraction`` of each pianist's), so validation windows are from unseen pieces."""
    assert data.midi is not None
    m = data.midi
    settings = PrepSettings(frames_per_beat=m.frames_per_beat, window=m.window, hop=m.hop, min_notes=m.min_notes)
    cache = resolve_path(job_path, m.cache_dir) if m.cache_dir else None

    def prep(value: str) -> Prepared:
        return prepare(local_data_folder(job_path, value), settings, cache, m.workers, progress)

    train_prep = prep(data.train)
    pianists = train_prep.pianists
    train_labels = train_prep.window_labels()
    all_rows = np.arange(len(train_prep.windows))
    if data.val:
        val_prep = prep(data.val)
        index = {name: i for i, name in enumerate(pianists)}
        val_labels = np.array([index.get(val_prep.labels[f], -1) for f in val_prep.file_index.tolist()], dtype=np.int64)
        return (Windows(train_prep.windows, all_rows, train_labels),
                Windows(val_prep.windows, np.arange(len(val_prep.windows)), val_labels), pianists)
    held = _held_out_files(train_prep, data.val_fraction)
    is_val = np.isin(train_prep.file_index, sorted(held))
    train = Windows(train_prep.windows, all_rows[~is_val], train_labels[~is_val])
    val = Windows(train_prep.windows, all_rows[is_val], train_labels[is_val]) if is_val.any() else None
    if len(train) == 0:
        raise ValueError(f"no training window left after holding out val_fraction {data.val_fraction} of the files "
                         f"under {data.train}; add files, give data.val, or lower val_fraction")
    return train, val, pianists


def check_window(cfg: TrainConfig) -> int:
    """The window length, checked against the encoder's downsampling (it must divide evenly)."""
    assert cfg.data is not None and cfg.data.midi is not None and isinstance(cfg.model, MusicRecipe)
    window, factor = cfg.data.midi.window, 2 ** cfg.model.downsample
    if window % factor:
        raise ValueError(f"data.midi.window {window} is not a multiple of 2**model.downsample = {factor}: "
                         f"use a window of {window // factor * factor or factor} or {(window // factor + 1) * factor} frames")
    return window


# --- layers ---------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.GELU(), nn.Conv1d(channels, channels, 3, padding=1), nn.GELU(),
                                 nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class RollEncoder(nn.Module):
    """``[B, 88, T]`` → ``[B, code_dim, T / 2**downsample]``."""

    def __init__(self, cfg: MusicRecipe):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(N_PITCHES, cfg.channels, 3, padding=1)]
        for _ in range(cfg.downsample):
            layers += [nn.GELU(), nn.Conv1d(cfg.channels, cfg.channels, 4, stride=2, padding=1)]
        layers += [ResBlock(cfg.channels) for _ in range(cfg.res_blocks)]
        layers += [nn.GELU(), nn.Conv1d(cfg.channels, cfg.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, roll: torch.Tensor) -> torch.Tensor:
        return self.net(roll)


class RollDecoder(nn.Module):
    """``[B, code_dim, L]`` → logits ``[B, 88, L * 2**downsample]`` of each cell's velocity / 127."""

    def __init__(self, cfg: MusicRecipe):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(cfg.code_dim, cfg.channels, 3, padding=1)]
        layers += [ResBlock(cfg.channels) for _ in range(cfg.res_blocks)]
        for _ in range(cfg.downsample):
            layers += [nn.GELU(), nn.ConvTranspose1d(cfg.channels, cfg.channels, 4, stride=2, padding=1)]
        layers += [nn.GELU(), nn.Conv1d(cfg.channels, N_PITCHES, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VectorQuantizer(nn.Module):
    """A codebook updated by exponential moving averages of the encoder outputs assigned to each code
    (VQ-VAE-2's rule: more stable than learning it by gradient), with a commitment loss pulling the
    encoder towards its codes and a straight-through gradient. Codes whose running usage falls below
    ``dead_threshold`` are dead; with ``restart`` they are moved onto random encoder outputs of the
    batch (Jukebox's restart), so the whole codebook stays in use.

    The codebook and its statistics are buffers: saved in every checkpoint, never touched by the optimizer."""

    def __init__(self, size: int, dim: int, decay: float = 0.99, dead_threshold: float = 1.0, restart: bool = True):
        super().__init__()
        self.size, self.dim, self.decay = size, dim, decay
        self.dead_threshold, self.restart = dead_threshold, restart
        embed = torch.randn(size, dim) / math.sqrt(dim)
        self.register_buffer("embed", embed)
        self.register_buffer("embed_sum", embed.clone())
        # Usage starts at 0, so every code counts as dead at the first step and is restarted onto an
        # encoder output: a codebook initialised from the data, not from noise far from it.
        self.register_buffer("usage", torch.zeros(size))

    def dead_codes(self) -> torch.Tensor:
        """How many codes are dead now (a tensor: reading it waits for the device, so only when logged)."""
        return (self.usage < self.dead_threshold).sum()

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """The index of the nearest code for each row of ``flat`` [N, dim] (float32)."""
        embed = self.embed.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed.t() + embed.pow(2).sum(1)
        return dist.argmin(1)

    def forward(self, z: torch.Tensor, update: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z`` [B, dim, L] → ``(quantised z with a straight-through gradient, codes [B, L],
        commitment MSE, perplexity of this batch's code usage)``, all float32. ``update`` (and training
        mode) moves the codebook."""
        b, d, length = z.shape
        flat = z.float().permute(0, 2, 1).reshape(-1, d)
        codes = self.nearest(flat)
        onehot = F.one_hot(codes, self.size).float()
        if update and self.training:
            self._ema_update(flat.detach(), onehot)
        q = self.embed.float()[codes]
        commitment = F.mse_loss(flat, q.detach())
        q_st = flat + (q - flat).detach()
        probs = onehot.mean(0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return q_st.view(b, length, d).permute(0, 2, 1), codes.view(b, length), commitment, perplexity

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, onehot: torch.Tensor) -> None:
        self.usage.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.usage.sum()
        smoothed = (self.usage + 1e-5) / (n + self.size * 1e-5) * n  # Laplace smoothing: no division by 0
        self.embed.copy_(self.embed_sum / smoothed.unsqueeze(1))
        dead = self.usage < self.dead_threshold
        if self.restart and dead.any():
            # torch's global generator: seeded by the trainer and restored on resume, so restarts replay.
            picks = flat[torch.randint(len(flat), (int(dead.sum()),), device=flat.device)]
            self.embed[dead] = picks
            self.embed_sum[dead] = picks * self.dead_threshold
            self.usage[dead] = self.dead_threshold

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, L] → their vectors [B, dim, L]."""
        return self.embed[codes].permute(0, 2, 1)


def freeze_as_buffers(module: nn.Module) -> None:
    """Turn every parameter of ``module`` into a buffer of the same name: no gradient, no optimizer
    state, but still in ``state_dict`` and so in every checkpoint (a resume needs no init file)."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, p.detach())


def load_part(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, what: str) -> int:
    """Load the entries of ``state`` under ``prefix`` into ``module`` (strict: every weight of
    ``module`` must be there, with the same shape). Returns how many tensors were loaded."""
    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(part, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{what} does not fit this model ({str(e).splitlines()[0]}...): the model's size "
                         "settings (size, channels, res_blocks, downsample, code_dim, codebook_size, embed_dim) must "
                         "be those of the run it comes from") from None
    return len(part)


def lr_scales(model: nn.Module, new_prefixes: Iterable[str], new_lr: float | None, base_lr: float) -> dict[str, float]:
    """Learning-rate multipliers (of the optimizer's lr) for the parameters under ``new_prefixes``."""
    if new_lr is None:
        return {}
    prefixes = tuple(new_prefixes)
    return {n: new_lr / base_lr for n, _ in model.named_parameters() if n.startswith(prefixes)}
