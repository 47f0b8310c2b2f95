"""Examples from disk: token shards, text and jsonl through a tokenizer, and the seeded sampler
whose position is part of every checkpoint (so a resumed run sees exactly the batches it would
have seen)."""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from trainer.config import Data, resolve_path

log = logging.getLogger("trainer")


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: 256 symbols, needs no files, good for the quickstart."""

    vocab_size = 256
    pad_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face tokenizer from a hub id or a local folder."""

    def __init__(self, name_or_path: str):
        from transformers import AutoTokenizer  # slow import: only for jobs that use it

        self.tok = AutoTokenizer.from_pretrained(name_or_path)
        self.vocab_size = len(self.tok)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)


def load_tokenizer(name: str | None) -> Tokenizer:
    return ByteTokenizer() if name in (None, "bytes") else HFTokenizer(name)


class TokenWindows:
    """Non-overlapping windows of ``block_size + 1`` tokens over one or more token arrays.

    Each item is a 1-D int64 tensor; the model predicts tokens 1.. from tokens ..-1."""

    def __init__(self, arrays: Sequence[np.ndarray], block_size: int):
        self.arrays = list(arrays)
        self.block = block_size + 1
        self.counts = [max(0, (len(a) - 1) // block_size) for a in self.arrays]
        self.block_size = block_size
        self.offsets = np.cumsum([0, *self.counts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> torch.Tensor:
        shard = int(np.searchsorted(self.offsets, i, side="right") - 1)
        start = (i - int(self.offsets[shard])) * self.block_size
        window = self.arrays[shard][start : start + self.block]
        return torch.from_numpy(np.asarray(window, dtype=np.int64))


class Sequences:
    """Independent examples (one jsonl line each), cut to ``block_size + 1`` tokens."""

    def __init__(self, examples: Sequence[Sequence[int]]):
        self.examples = [torch.tensor(e, dtype=torch.int64) for e in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.examples[i]


def pad_collate(items: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest item: ``(ids [B, T], mask [B, T])`` with mask 1 on real tokens."""
    longest = max(len(t) for t in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(items), longest), dtype=torch.int64)
    for row, t in enumerate(items):
        ids[row, : len(t)] = t
        mask[row, : len(t)] = 1
    return ids, mask


def _paths(job_path: str | Path, spec: str | list[str]) -> list[str]:
    specs = [spec] if isinstance(spec, str) else spec
    found: list[str] = []
    for s in specs:
        full = resolve_path(job_path, s)
        matches = sorted(glob.glob(full)) if any(c in full for c in "*?[") else [full]
        if not matches or not all(Path(m).is_file() for m in matches):
            raise FileNotFoundError(f"data file not found: {s} (looked for {full})")
        found.extend(matches)
    return found


def _read_tokens(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    return np.memmap(path, dtype=np.uint16, mode="r")  # nanoGPT's prepare.py writes raw uint16


def _read_jsonl(path: str, field: str) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record: Any = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON: {e.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise ValueError(f"{path}:{n}: expected an object with a text field {field!r}")
            texts.append(record[field])
    return texts


def load_datasets(data: Data, job_path: str | Path, tokenizer: Tokenizer | None):
    """``(train_set, val_set)`` for a ``data:`` section. With no ``val``, the tail of the training
    data is held out (``val_fraction``), so validation never overlaps training."""

    def build(spec: str | list[str]):
        paths = _paths(job_path, spec)
        if data.format == "tokens":
            return [_read_tokens(p) for p in paths]
        if data.format == "text":
            assert tokenizer is not None
            return [np.asarray(tokenizer.encode(Path(p).read_text(encoding="utf-8")), dtype=np.int64) for p in paths]
        assert tokenizer is not None
        return [tokenizer.encode(t)[: data.block_size + 1] for p in paths for t in _read_jsonl(p, data.text_field)]

    train_parts = build(data.train)
    val_parts = build(data.val) if data.val else None
    wrap = Sequences if data.format == "jsonl" else (lambda parts: TokenWindows(parts, data.block_size))

    if val_parts is None and data.val_fraction > 0:
        if data.format == "jsonl":
            cut = len(train_parts) - max(1, int(len(train_parts) * data.val_fraction))
            train_parts, val_parts = train_parts[:cut], train_parts[cut:]
        else:
            last = train_parts[-1]
            cut = len(last) - max(data.block_size + 1, int(len(last) * data.val_fraction))
            train_parts, val_parts = [*train_parts[:-1], last[:cut]], [last[cut:]]
    train_set = wrap(train_parts)
    val_set = wrap(val_parts) if val_parts else None
    if len(train_set) == 0:
        raise ValueError(f"training data has no complete example of block_size {data.block_size}")
    return train_set, val_set


class EpochSampler:
    """Batches of indices from a fresh seeded permutation each epoch, this rank's share only.

    The state is two integers (epoch, position), saved in every checkpoint."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.per_rank = n // world_size
        if self.per_rank < batch_size:
            raise ValueError(f"{n} training examples cannot fill a batch of {batch_size} on each of {world_size} process(es)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._perm_epoch, self._perm = -1, None

    @property
    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size

    def _permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            full = torch.randperm(self.n, generator=g)[: self.per_rank * self.world_size]
            self._perm, self._perm_epoch = full[self.rank :: self.world_size], self.epoch
        return self._perm

    def next_batch(self) -> list[int]:
        if self.position + self.batch_size > self.per_rank:  # drop the ragged tail, start a new epoch
            self.epoch, self.position = self.epoch + 1, 0
        batch = self._permutation()[self.position : self.position + self.batch_size].tolist()
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "n": self.n, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n"] != self.n or state["world_size"] != self.world_size:
            log.warning(
                "data changed since the checkpoint (%d examples on %d processes, now %d on %d): "
                "continuing at epoch %d from its start", state["n"], state["world_size"], self.n, self.world_size,
                state["epoch"],
            )
            self.epoch, self.position = state["epoch"], 0
            return
        self.epoch, self.position = state["epoch"], state["position"]
