"""The slice of a job's data a smoke run trains on: enough for its hundred steps, not the whole
dataset (MAESTRO is 1,276 files; downloading and preparing it all would take longer than the smoke).

Files are taken whole, in order, until :data:`MAX_FILES` or :data:`MAX_BYTES`; MIDI files round-robin
over the first folder level (the pianists, whose labels the style encoder learns), so every pianist
is in the slice. A single file larger than the budget is cut (text at a line, jsonl at a record,
token shards at a token). ``s3://`` data is listed and only the slice is downloaded, into a cache
of its own that the next smoke run reuses. What was taken, and its share of the whole (by bytes, for
a job whose length is given in epochs), is said in the smoke's result."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.config import Data, resolve_path
from trainer.dataset_cache import RemoteObject, fetch_remote, is_remote, list_remote

MAX_FILES = 64
MAX_BYTES = 16 * 2**20
MIDI_SUFFIXES = (".mid", ".midi")


@dataclass
class Slice:
    data: Data  # the data section the smoke trains on
    description: str
    fraction: float  # of the whole, by bytes (1.0: all of it)


@dataclass
class _File:
    rel: str  # relative path inside its entry (what a MIDI label is read from)
    size: int
    local: Path | None = None  # a local file
    obj: RemoteObject | None = None  # an S3 object


def slice_data(data: Data, job_path: str | Path, folder: Path) -> Slice:
    """The data section with ``train`` replaced by a slice under ``folder`` (kept while the smoke runs);
    ``val`` is dropped (a smoke run does not evaluate)."""
    entries = [data.train] if isinstance(data.train, str) else list(data.train)
    midi = data.format == "midi"
    listed = [(resolve_path(job_path, e), _list(resolve_path(job_path, e), midi)) for e in entries]
    every = [(i, f) for i, (_loc, files) in enumerate(listed) for f in files]
    total = sum(f.size for _i, f in every)
    chosen = _choose(every, midi)
    size = sum(f.size for _i, f in chosen)
    whole = len(chosen) == len(every) and size <= MAX_BYTES
    if whole and not any(is_remote(loc) for loc, _files in listed):
        return Slice(data.model_copy(update={"val": None}), f"all of the data: {len(every)} file(s), {_mb(total)}", 1.0)
    paths: list[str] = []
    for i, (location, _files) in enumerate(listed):
        mine = [f for j, f in chosen if j == i]
        if mine:
            paths.append(_materialise(location, mine, folder / f"train-{i}", midi))
    if midi:
        train: str | list[str] = paths[0]
    else:
        files = sorted(str(p) for root in paths for p in Path(root).rglob("*") if p.is_file() and not p.name.startswith("."))
        train = [_cut(Path(p), data.format) for p in files]
        size = sum(Path(p).stat().st_size for p in train)
    what = "all of the data" if whole and size >= total else "a slice of the data"
    sliced = data.model_copy(update={"train": train, "val": None})
    return Slice(sliced, f"{what}: {len(chosen)} of {len(every)} file(s), {_mb(size)} of {_mb(total)}",
                 min(1.0, size / total) if total else 1.0)


def _list(location: str, midi: bool) -> list[_File]:
    if is_remote(location):
        files = [_File(o.rel or Path(o.key).name, o.size, obj=o) for o in list_remote(location)]
        return [f for f in files if not midi or Path(f.rel).suffix.lower() in MIDI_SUFFIXES]
    path = Path(location)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and (not midi or p.suffix.lower() in MIDI_SUFFIXES))
        return [_File(p.relative_to(path).as_posix(), p.stat().st_size, local=p) for p in found]
    matches = sorted(Path(m) for m in glob.glob(location, recursive=True) if Path(m).is_file()) \
        if any(c in location for c in "*?[") else [path]
    return [_File(p.name, p.stat().st_size, local=p) for p in matches if p.is_file()]


def _choose(files: list[tuple[int, _File]], midi: bool) -> list[tuple[int, _File]]:
    """Whole files in order (MIDI: round-robin over the first folder level) within the budget; at least one."""
    order = files
    if midi:
        groups: dict[tuple[int, str], list[tuple[int, _File]]] = {}
        for i, f in files:
            groups.setdefault((i, f.rel.split("/")[0] if "/" in f.rel else ""), []).append((i, f))
        queues = list(groups.values())
        order = [q[k] for k in range(max(map(len, queues), default=0)) for q in queues if k < len(q)]
    chosen, size = [], 0
    for i, f in order:
        if chosen and (len(chosen) >= MAX_FILES or size + f.size > MAX_BYTES):
            if midi:
                continue  # a smaller file of another pianist may still fit
            break
        chosen.append((i, f))
        size += f.size
    return chosen


def _materialise(location: str, files: list[_File], folder: Path, midi: bool) -> str:
    """A folder holding ``files`` at their relative paths: links to local files, or the S3 objects
    downloaded into the smoke's own cache (reused by the next smoke run of the same data)."""
    cache = None
    if files[0].local is None:
        cache = fetch_remote(location, [f.obj for f in files if f.obj is not None], under="smoke")
        if midi:
            return str(cache)
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:  # of the cache only the slice: it may hold more from an earlier smoke of another slice
        target = folder / f.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(f.local.resolve() if cache is None else cache / f.rel)
    return str(folder)


def _cut(path: Path, fmt: str) -> str:
    """``path``, or a copy of its first :data:`MAX_BYTES` cut where an example ends, beside it."""
    size = path.stat().st_size
    if size <= MAX_BYTES:
        return str(path)
    out = path.with_name(path.name + ".slice" + path.suffix)
    if fmt == "tokens" and path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        np.save(out, np.asarray(arr[: MAX_BYTES // arr.itemsize]))  # out ends in .npy: saved under that name
        return str(out)
    with open(path, "rb") as f:
        head = f.read(MAX_BYTES)
    if fmt == "tokens":
        head = head[: len(head) // 2 * 2]
    else:  # text and jsonl: whole lines only
        head = head[: head.rfind(b"\n") + 1] or head
    out.write_bytes(head)
    return str(out)


def _mb(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} kB"
