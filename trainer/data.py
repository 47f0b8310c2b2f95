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
from trainer.dataset_cache import is_remote, local_path

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
        # Called on whole text files that are cut into windows afterwards, so the tokenizer's
        # "sequence longer than the model's maximum" warning would be wrong here: silence it.
        return self.tok(text, add_special_tokens=False, verbose=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(name: str | None) -> Tokenizer:
    """``bytes`` (or None) for the byte tokenizer, else a Hugging Face tokenizer id or local folder."""
    return ByteTokenizer() if name in (None, "bytes") else HFTokenizer(name)


class TokenWindows:
    """Windows of ``block_size + 1`` tokens over one or more token arrays, ``block_size`` apart, so
    every token is predicted exactly once (the last token of a window is the first of the next).
    Windows never cross from one array (file) into the next.

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
        # np.array copies: a memmap view would be read-only (and keep the file mapped per item).
        return torch.from_numpy(np.array(window, dtype=np.int64))


class Sequences:
    """Independent examples (one jsonl line each), cut to ``block_size + 1`` tokens."""

    def __init__(self, examples: Sequence[Sequence[int]]):
        self.examples = [torch.as_tensor(e, dtype=torch.int64) for e in examples]

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
    """The files a ``train``/``val`` entry names, in order; glob patterns are expanded and sorted."""
    specs = [spec] if isinstance(spec, str) else spec
    found: list[str] = []
    for s in specs:
        full = resolve_path(job_path, s)
        if is_remote(full):
            found.extend(_remote_paths(full))
            continue
        if "://" in full:
            raise ValueError(f"data path {s!r}: unsupported scheme; give a local path or s3://BUCKET/KEY "
                             "(a file) or s3://BUCKET/PREFIX/ (every file under it)")
        if any(c in full for c in "*?["):
            matches = sorted(m for m in glob.glob(full, recursive=True) if Path(m).is_file())
            if not matches:
                raise FileNotFoundError(f"data: no file matches {s!r} (looked for {full}); "
                                        "relative paths are relative to the job file's folder")
        elif Path(full).is_dir():
            raise IsADirectoryError(f"data path {s!r} is a folder ({full}): name the files, "
                                    f"for example {s.rstrip('/')}/*.bin")
        elif not Path(full).is_file():
            raise FileNotFoundError(f"data file not found: {s!r} (looked for {full}); "
                                    "relative paths are relative to the job file's folder")
        else:
            matches = [full]
        found.extend(matches)
    return found


def _remote_paths(uri: str) -> list[str]:
    """The local copies of an ``s3://`` entry, downloaded into the data cache (reused when unchanged):
    one file, every file under a prefix, or those a pattern matches, sorted by key."""
    if any(c in uri for c in "*?["):
        # The cache holds the folder before the pattern with only the matching objects in it.
        folder = local_path(uri)
        return sorted(str(p) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    path = local_path(uri)
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [str(path)]


def _read_tokens(path: str) -> np.ndarray:
    """A token shard: ``.npy`` of any integer dtype, or raw little-endian uint16 as nanoGPT's prepare.py writes."""
    if path.endswith(".npy"):
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ValueError(f"{path}: a token shard must be a 1-D array of integers, found {arr.ndim}-D {arr.dtype}")
        return arr
    size = Path(path).stat().st_size
    if size % 2:
        raise ValueError(f"{path}: {size} bytes is not a whole number of uint16 tokens; "
                         "a .bin shard must be raw uint16 (nanoGPT's format), other dtypes go in a .npy file")
    if size == 0:
        return np.zeros(0, dtype=np.uint16)  # np.memmap refuses empty files
    return np.memmap(path, dtype=np.uint16, mode="r")


def _read_jsonl(path: str, field: str) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record: Any = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); "
                                 "each line must be one JSON object") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object with a text field {field!r}, "
                                 f"found {type(record).__name__}")
            if not isinstance(record.get(field), str):
                keys = ", ".join(map(repr, record)) or "none"
                raise ValueError(f"{path}:{n}: no text field {field!r} (a string) in this object "
                                 f"(its keys: {keys}); set data.text_field to the field that holds the text")
            texts.append(record[field])
    return texts


def _hold_out_tail(parts: list[np.ndarray], n_val: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split token arrays into (train, val) with the last ``n_val`` tokens, across files if need be,
    going to validation. The two share no token."""
    train, val = list(parts), []
    while n_val > 0 and train:
        last = train.pop()
        take = min(len(last), n_val)
        val.insert(0, last[len(last) - take :])
        if take < len(last):
            train.append(last[: len(last) - take])
        n_val -= take
    return train, val


def load_datasets(
    data: Data, job_path: str | Path, tokenizer: Tokenizer | None
) -> tuple[TokenWindows | Sequences, TokenWindows | Sequences | None]:
    """``(train_set, val_set)`` for a ``data:`` section. With no ``val``, the tail of the training
    data (``val_fraction`` of its tokens, or of its examples for jsonl) is held out, so validation
    never overlaps training. ``val_set`` is None when there is no validation data."""
    if data.format != "tokens" and tokenizer is None:
        raise ValueError(f"data format {data.format!r} needs a tokenizer")

    def build(spec: str | list[str]):
        paths = _paths(job_path, spec)
        if data.format == "tokens":
            return [_read_tokens(p) for p in paths]
        if data.format == "text":
            return [np.asarray(tokenizer.encode(Path(p).read_text(encoding="utf-8")), dtype=np.int64) for p in paths]
        examples = [tokenizer.encode(t)[: data.block_size + 1] for p in paths for t in _read_jsonl(p, data.text_field)]
        # An example needs two tokens to predict one; an empty one would make a batch's loss NaN.
        kept = [e for e in examples if len(e) >= 2]
        if len(kept) < len(examples):
            log.warning("%s: skipped %d of %d examples shorter than 2 tokens", spec, len(examples) - len(kept), len(examples))
        return kept

    train_parts = build(data.train)
    val_parts = build(data.val) if data.val else None

    if val_parts is None and data.val_fraction > 0:
        if data.format == "jsonl":
            n_val = max(1, int(len(train_parts) * data.val_fraction))
            if n_val >= len(train_parts):
                raise ValueError(f"{len(train_parts)} example(s) are too few to hold out val_fraction "
                                 f"{data.val_fraction} for validation; add data, give data.val, or set val_fraction: 0")
            train_parts, val_parts = train_parts[:-n_val], train_parts[-n_val:]
        else:
            total = sum(len(a) for a in train_parts)
            train_parts, val_parts = _hold_out_tail(train_parts, max(data.block_size + 1, int(total * data.val_fraction)))

    if data.format == "jsonl":
        train_set, val_set = Sequences(train_parts), Sequences(val_parts) if val_parts else None
    else:
        train_set = TokenWindows(train_parts, data.block_size)
        val_set = TokenWindows(val_parts, data.block_size) if val_parts else None
    if len(train_set) == 0:
        what = "example of at least 2 tokens" if data.format == "jsonl" else f"window of block_size + 1 = {data.block_size + 1} tokens"
        raise ValueError(f"the training data has no complete {what} after holding out validation data; "
                         "add data, lower data.block_size or val_fraction")
    if val_set is not None and len(val_set) == 0:
        log.warning("the validation data has no complete window of %d tokens: no evaluation", data.block_size + 1)
        val_set = None
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
            # One independent permutation per epoch; the modulo keeps any int seed in the generator's range.
            g = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % 2**63)
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
