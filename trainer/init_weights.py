"""``train.init_from``: the weights a run starts from, taken from other runs' checkpoints.

Each entry is ``name: URI``: a checkpoint file (a local path, relative to the job file, or
``s3://bucket/key.pt``) or a run URI followed by ``/best`` or ``/latest`` (that run's
``checkpoints/best.pt`` or ``latest.pt``, as :mod:`trainer.contract` lays runs out). Each file is
fetched through the run storage (so S3 and local paths both work), checked against its checksum
sidecar (``<file>.sha256``) when there is one, loaded without running code
(``torch.load(weights_only=True)``), and checked to be a checkpoint this trainer wrote. What was
loaded is recorded in the run as ``init.json`` (name → URI, sha256 of the bytes loaded), so a later
stage can be traced to the exact weights it started from.

Only a run's first start loads them: a resume continues from its own checkpoints, which already
hold everything (the loop decides; see ``trainer.loop.train``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer import contract
from trainer.checkpoint import evaluated_weights, sha256_file
from trainer.config import TrainConfig, resolve_path
from trainer.dataset_cache import sidecar_sha256
from trainer.storage import Storage, open_storage

log = logging.getLogger("trainer")

_RUN_SUFFIXES = {"/best": contract.BEST, "/latest": contract.LATEST}


class InitError(ValueError):
    """An ``init_from`` entry that cannot be used as written: missing, corrupt or not a checkpoint."""


@dataclass
class InitWeights:
    name: str
    uri: str
    sha256: str
    size: int
    step: int | None
    #: The model state to start from (with EMA on in that run, the averaged weights it was evaluated with).
    state: dict[str, torch.Tensor]


def locate(uri: str, job_path: str | Path) -> tuple[str, str]:
    """``(storage URI, key)`` of the file an ``init_from`` URI names."""
    for suffix, key in _RUN_SUFFIXES.items():
        if uri.endswith(suffix):
            return resolve_path(job_path, uri[: -len(suffix)]), key
    full = resolve_path(job_path, uri).rstrip("/")
    parent, _, name = full.rpartition("/")
    return parent or "/", name


def fetch(name: str, uri: str, job_path: str | Path, download_dir: Path, expected_format: int) -> InitWeights:
    """Fetch, verify and load one ``init_from`` entry; :class:`InitError` says what is wrong and how to fix it."""
    where, key = locate(uri, job_path)
    what = f"train.init_from.{name}: {uri}"
    storage = open_storage(where, download_dir / hashlib.sha256(where.encode()).hexdigest()[:16])
    downloaded = None
    try:
        path = storage.local_path(key)
        if path is None:
            downloaded = path = download_dir / f"{name}.{hashlib.sha256(uri.encode()).hexdigest()[:12]}.pt"
            found = storage.get_file(key, path)
        else:
            found = path.is_file()
        if not found:
            raise InitError(f"{what}: no such file ({key} under {where}). Run the stage that writes it first, or give "
                            "the URI of an existing checkpoint file or run (a run URI ending in /best or /latest)")
        digest, size = sha256_file(path)
        expected = _sidecar_sha256(storage, key)
        if expected is not None and expected != digest:
            raise InitError(f"{what}: the file's sha256 is {digest}, its checksum file {key}{contract.CHECKSUM_SUFFIX} "
                            f"says {expected}: it is torn or corrupt. Use another checkpoint of that run (/latest or a "
                            "step-*.pt file), or train that stage again")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InitError(f"{what}: not a checkpoint torch can load ({str(e).splitlines()[0][:200]}). Point it "
                            "at a .pt file this trainer wrote (a run's checkpoints/best.pt)") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
            raise InitError(f"{what}: not a trainer checkpoint (no model state in it). Point it at a .pt file this "
                            "trainer wrote (a run's checkpoints/best.pt)")
        if payload.get("format") != expected_format:
            raise InitError(f"{what}: checkpoint format {payload.get('format')}, this trainer reads format "
                            f"{expected_format}. Train that stage again with this trainer version")
    finally:
        storage.close()
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)
    # best.pt was chosen on the validation loss of the averaged weights when EMA was on: start from those.
    state = evaluated_weights(payload)
    step = payload.get("step")
    log.info("init_from %s: %s (step %s, sha256 %s, %d bytes)", name, uri, step, digest, size)
    return InitWeights(name, uri, digest, size, int(step) if step is not None else None, state)


def _sidecar_sha256(storage: Storage, key: str) -> str | None:
    """The checksum in ``<key>.sha256``: the trainer's JSON record, or a ``sha256sum`` line."""
    raw = storage.get_bytes(key + contract.CHECKSUM_SUFFIX)
    if raw is None:
        return None
    found = sidecar_sha256(raw)
    if found is not None:
        return found
    raise InitError(f"{storage.uri}/{key}{contract.CHECKSUM_SUFFIX}: unreadable checksum file (expected the "
                    "trainer's JSON record or a sha256sum line); remove it or write a valid one")


def load_init(cfg: TrainConfig, job_path: str | Path, storage: Storage, expected_format: int,
              record: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """Every ``init_from`` entry's model state, by name; with ``record``, ``init.json`` is written
    into the run first (so what a run started from is on record before any step is taken)."""
    download_dir = storage.work_dir / ".init-download"
    loaded = [fetch(name, uri, job_path, download_dir, expected_format) for name, uri in sorted(cfg.init_from.items())]
    if record:
        doc = {w.name: {"uri": w.uri, "sha256": w.sha256, "size": w.size, "step": w.step} for w in loaded}
        storage.put_bytes(contract.INIT_RECORD, json.dumps(doc, indent=1, sort_keys=True).encode())
    return {w.name: w.state for w in loaded}
