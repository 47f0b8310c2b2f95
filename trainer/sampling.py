"""Samples of a finished model, shared by the recipes' ``sample`` hooks: the next token drawn from
logits, text prompts and text files, and piano rolls written as MIDI files with symusic.

Everything random draws from a generator seeded from the job's seed, so a run relaunched during its
finish writes the same samples again."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.config import Samples

#: A piano-roll cell whose predicted velocity (as a fraction of 127) reaches this sounds. The music
#: models predict each cell's expected velocity/127 (0 for silence), so a cell the model is sure of
#: comes out near its velocity; a quiet note (velocity 25) still passes.
NOTE_ON = 0.2
#: MIDI ticks per frame: with ``frames_per_beat`` frames a beat the file has 120 x that ticks a quarter.
TICKS_PER_FRAME = 120
TEMPO_QPM = 120.0


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator every sample is drawn from (on the model's device, where the logits are)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def pick(logits: torch.Tensor, settings: Samples, gen: torch.Generator) -> torch.Tensor:
    """One id per row of ``logits`` [B, V]: sampled at ``temperature`` among the ``top_k`` likeliest."""
    logits = logits.float() / settings.temperature
    if settings.top_k is not None and settings.top_k < logits.size(-1):
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)


@torch.no_grad()
def continue_ids(logits_of: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor, new: int, settings: Samples,
                 gen: torch.Generator, context: int | None = None) -> torch.Tensor:
    """``ids`` [B, T] followed by ``new`` drawn ids. ``logits_of(ids)`` gives logits [B, T, V]; with
    ``context`` the model sees only the last ``context`` ids (a model with learned positions)."""
    for _ in range(new):
        window = ids[:, -context:] if context else ids
        ids = torch.cat([ids, pick(logits_of(window)[:, -1, :], settings, gen).to(ids.dtype)], dim=1)
    return ids


def spread(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)`` (fewer when ``n`` is smaller)."""
    if n <= 0 or count <= 0:
        return []
    return sorted(set(np.linspace(0, n - 1, count).round().astype(int).tolist()))


def text_prompts(settings: Samples, examples: Sequence[torch.Tensor] | None, encode: Callable[[str], list[int]]) -> list[list[int]]:
    """The prompts of ``settings.count`` samples: the job's own (repeated in turn), else the first
    ``prompt_tokens`` tokens of examples spread evenly over ``examples`` (the validation set)."""
    n = settings.count
    if settings.prompts:
        return [encode(settings.prompts[i % len(settings.prompts)]) for i in range(n)]
    return [examples[i][: settings.prompt_tokens].tolist() for i in spread(len(examples or ()), n)]


def write_text_samples(folder: Path, rows: Sequence[tuple[str, str]]) -> list[Path]:
    """``sample-<n>.txt`` (the prompt and what the model wrote after it) for each ``(prompt,
    continuation)``, and ``samples.json`` with both apart."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for n, (prompt, text) in enumerate(rows, 1):
        path = folder / f"sample-{n}.txt"
        path.write_text(prompt + text, encoding="utf-8")
        written.append(path)
    index = [{"file": p.name, "prompt": prompt, "continuation": text} for p, (prompt, text) in zip(written, rows, strict=True)]
    (folder / "samples.json").write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")
    return [*written, folder / "samples.json"]


@dataclass(frozen=True)
class RollStats:
    """What the training windows sound like: the fraction of cells that sound, and their mean velocity."""

    density: float
    velocity: int


def roll_statistics(windows: Sequence, count: int = 64) -> RollStats:
    """:class:`RollStats` of up to ``count`` windows spread over ``windows`` (items ``(roll, label)``)."""
    rolls = [np.asarray(windows[i][0]) for i in spread(len(windows), count)]
    cells = sum(r.size for r in rolls)
    sounding = np.concatenate([r[r > 0] for r in rolls]) if rolls else np.zeros(0)
    return RollStats(len(sounding) / cells if cells else 0.0, int(round(float(sounding.mean()))) if len(sounding) else 64)


def probabilities_to_roll(probs: torch.Tensor | np.ndarray, stats: RollStats) -> np.ndarray:
    """Predicted velocity/127 per cell [88, T] → a uint8 velocity roll.

    A cell sounds when its prediction reaches :data:`NOTE_ON` (at the velocity predicted), and so do
    the likeliest cells up to the training data's density (at its mean velocity): a model still unsure
    of where notes go predicts small values everywhere, and its best guesses are what it has to say."""
    p = probs.detach().float().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, dtype=np.float32)
    keep = int(round(stats.density * p.size))
    ranked = np.zeros(p.shape, dtype=bool)
    if keep > 0:
        order = np.argsort(p, axis=None, kind="stable")[::-1][:keep]
        ranked.flat[order] = p.flat[order] > 0
    sure = p >= NOTE_ON
    velocity = np.where(sure, np.rint(p * 127.0), stats.velocity)
    return np.where(sure | ranked, np.clip(velocity, 1, 127), 0).astype(np.uint8)


def write_midi(roll: np.ndarray, frames_per_beat: int, path: Path, low_pitch: int = 21) -> int:
    """Write a velocity roll [88, T] (row 0 = ``low_pitch``) as a one-track piano MIDI file at
    :data:`TEMPO_QPM`; each run of sounding frames of a key is one note, at the run's loudest velocity.
    Returns the number of notes written."""
    from symusic import Note, Score, Tempo, Track

    roll = np.asarray(roll)
    padded = np.pad(roll > 0, ((0, 0), (1, 1)))
    edges = np.diff(padded.astype(np.int8), axis=1)
    starts_p, starts_t = np.nonzero(edges == 1)
    ends_p, ends_t = np.nonzero(edges == -1)  # same order: row by row, left to right
    assert (starts_p == ends_p).all()
    velocities = [int(roll[p, s:e].max()) for p, s, e in zip(starts_p.tolist(), starts_t.tolist(), ends_t.tolist(), strict=True)]
    score = Score(frames_per_beat * TICKS_PER_FRAME)
    score.tempos.append(Tempo(0, qpm=TEMPO_QPM))
    track = Track("piano", 0, False)
    if len(starts_t):
        track.notes.extend(Note.from_numpy(
            (starts_t * TICKS_PER_FRAME).astype(np.int32), ((ends_t - starts_t) * TICKS_PER_FRAME).astype(np.int32),
            (starts_p + low_pitch).astype(np.int8), np.array(velocities, dtype=np.int8)))
    track.notes.sort()
    score.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(path))
    return len(starts_t)
