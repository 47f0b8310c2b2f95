"""The checksums in a checkpoint's record (``<file>.sha256``, see ``trainer.contract``): which ones a
record holds, which one a reader checks, and how to compute them.

A checkpoint written now records two: ``xxh3_128`` and ``sha256``. The reader checks the first of
:data:`PREFERRED` that the record has: ``xxh3_128`` runs at ~8 GB/s on one core against sha256's
~1 GB/s, which on a resume from a fast store was as long as the download itself. It guards
against what a checksum here is for, a torn or corrupted file (one flipped bit changes it with
probability 1 - 2^-128); it is not meant to stop someone who can write the bucket, who could
rewrite the record beside the file just as well, whatever the hash. ``sha256`` stays in every
record, so that records written before ``xxh3_128`` existed are still checked (with it), an older
trainer can still resume from a newer checkpoint, and ``init_from`` and the object metadata keep
the digest they always had.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

XXH3_128 = "xxh3_128"
SHA256 = "sha256"
#: What a reader checks, fastest first: the first of these the record has.
PREFERRED = (XXH3_128, SHA256)
_MAKERS: dict[str, Callable[[], Any]] = {XXH3_128: xxhash.xxh3_128, SHA256: hashlib.sha256}


def new(name: str) -> Any:
    """A fresh hash object (``update``, ``hexdigest``) for the checksum ``name``."""
    return _MAKERS[name]()


def maker(name: str) -> Callable[[], Any]:
    return _MAKERS[name]


def pick(record: dict[str, Any]) -> tuple[str, str]:
    """``(name, hex digest)`` of the checksum a reader checks; ValueError when the record has none."""
    for name in PREFERRED:
        value = record.get(name)
        if isinstance(value, str) and value:
            return name, value.lower()
    raise ValueError(f"no checksum in the record (expected one of {', '.join(PREFERRED)})")


class Both:
    """sha256 and xxh3_128 of the same bytes, fed once (what a writer records)."""

    def __init__(self) -> None:
        self.sha256, self.xxh3_128 = hashlib.sha256(), xxhash.xxh3_128()

    def update(self, data: Any) -> None:
        self.sha256.update(data)
        self.xxh3_128.update(data)

    def record(self) -> dict[str, str]:
        return {SHA256: self.sha256.hexdigest(), XXH3_128: self.xxh3_128.hexdigest()}


def file_digest(path: Path, name: str) -> tuple[str, int]:
    """``(hex digest, size)`` of the file at ``path`` with the checksum ``name``."""
    h, size = new(name), 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
