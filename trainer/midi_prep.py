"""MIDI files → piano-roll training windows, cached by content.

A folder of ``.mid``/``.midi`` files (searched recursively) becomes windows ``[N, 88, window]``
(uint8 velocities, pitches A0..C8, time in frames on a beat grid), with the file each window came from and that file's label: the first folder under the dataset root, as
PiJAMA lays out its pianists (``<root>/<pianist>/<album>/<n>.mid``).

* Parsing and piano rolls are symusic's (a C++ MIDI parser): it reads a performance in about a
  millisecond, where a pure-Python parser (mido, pretty_midi) takes tens to hundreds, and its
  ``pianoroll`` is the same grid a model trains on, so there is no conversion code of our own to get wrong.
* Files are prepared in a process pool, in sorted order, and their windows concatenated in that
  order: the result is the same bytes whatever the number of workers.
* Each file's piano roll is kept once, with the frame where each of its windows starts: windows
  overlap (a hop of 16 frames under a window of 256 repeats every frame 16 times), so materialising
  them would move and store the same bytes many times over. A window is cut when it is read.
* The result is cached under a key made of every file's bytes and the settings, so a relaunch on
  the same machine (or a second stage over the same data) loads it instead of parsing again, and a
  changed file or setting can never be served a stale cache.
* A file that cannot be parsed, or holds no note, is skipped and reported (logged, and returned
  by name with the reason); the run goes on with the rest.

Torch-free on purpose: pool workers start fast, and the benchmark measures parsing, not imports.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

log = logging.getLogger("trainer")

#: Bumped whenever the way windows are made changes, so older caches are never read as current.
PREP_VERSION = 2
LOW_PITCH, HIGH_PITCH = 21, 109  # the 88 keys of a piano, A0..C8 (end exclusive)
N_PITCHES = HIGH_PITCH - LOW_PITCH
MIDI_SUFFIXES = (".mid", ".midi")
#: Fewer files, or fewer bytes, than this are prepared in the calling process (see :func:`_run`).
POOL_MIN_FILES = 64
POOL_MIN_BYTES = 64 << 20
#: Cache entries this process is still writing (see :func:`prepare`).
_WRITING: dict[Path, threading.Thread] = {}


@dataclass(frozen=True)
class PrepSettings:
    """How files become windows. Everything here is part of the cache key."""

    #: Time resolution: frames per beat (quarter note). 4 is a sixteenth-note grid.
    frames_per_beat: int = 4
    #: Frames per window.
    window: int = 64
    #: Frames between window starts; default: ``window`` (no overlap).
    hop: int | None = None
    #: Windows in which fewer notes start are dropped (silence teaches nothing).
    min_notes: int = 1

    @property
    def step(self) -> int:
        return self.hop or self.window


class WindowArray:
    """``[N, 88, width]`` windows cut on demand from concatenated piano rolls ``[88, frames]``: reads
    like an array (``len``, ``shape``, an index, a mask or index array, ``np.asarray``)."""

    def __init__(self, rolls: np.ndarray, starts: np.ndarray, width: int):
        self.rolls, self.starts, self.width = rolls, starts, width

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.starts), N_PITCHES, self.width)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index):  # noqa: ANN001 - an int, a slice, a mask or an index array
        if isinstance(index, (int, np.integer)):
            start = int(self.starts[index])
            return self.rolls[:, start : start + self.width]
        starts = self.starts[index]
        return np.stack([self.rolls[:, s : s + self.width] for s in starts.tolist()]) if len(starts) else \
            np.zeros((0, N_PITCHES, self.width), np.uint8)

    def __array__(self, dtype=None, copy=None):  # noqa: ANN001 - numpy's protocol
        out = self[np.arange(len(self))]
        return out.astype(dtype) if dtype is not None else out


@dataclass
class Prepared:
    """The windows of a folder, and what happened to every file in it."""

    windows: WindowArray  # [N, 88, window] uint8 velocity (0 = silent)
    file_index: np.ndarray  # [N] int32: which of ``files`` each window came from
    files: list[str]  # paths relative to the root, posix, sorted: the files that were read
    labels: list[str]  # per file: the first folder under the root ("" for a file directly in it)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the root, why)
    cache_path: Path | None = None
    from_cache: bool = False

    @property
    def pianists(self) -> list[str]:
        """The labels that have at least one window, sorted: index i is class i."""
        used = {self.labels[i] for i in np.unique(self.file_index).tolist()}
        return sorted(used)

    def window_labels(self) -> np.ndarray:
        """Class index (into :attr:`pianists`) of every window."""
        index = {name: i for i, name in enumerate(self.pianists)}
        per_file = np.array([index.get(label, -1) for label in self.labels], dtype=np.int64)
        return per_file[self.file_index] if len(self.file_index) else np.zeros(0, dtype=np.int64)


def find_midi_files(root: Path) -> list[Path]:
    """Every ``.mid``/``.midi`` file under ``root`` (any case, any depth), sorted by relative path."""
    found = [p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def label_of(relative: str) -> str:
    """The pianist of a file: the first folder of its path under the dataset root."""
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else ""


def file_windows(data: bytes, settings: PrepSettings) -> tuple[np.ndarray, np.ndarray]:
    """One MIDI file's piano roll ``[88, frames]`` uint8 and the frames where its windows start.
    Raises ValueError for a file that holds no note, and symusic's RuntimeError for one it cannot parse."""
    from symusic import Score  # imported here: pool workers pay for it once, callers only when used

    score = Score.from_midi(data)
    if score.note_num() == 0:
        raise ValueError("no notes")
    # Onto a beat grid of frames_per_beat ticks per quarter; min_dur=1 keeps very short notes visible.
    grid = score.resample(tpq=settings.frames_per_beat, min_dur=1)
    roll = grid.pianoroll(modes=["frame"], pitch_range=(LOW_PITCH, HIGH_PITCH), encode_velocity=True)
    if roll.shape[1] == 1:  # one track: its roll (a max over one track costs a pass over every cell)
        roll = roll[0, 0]
    else:  # all tracks on one roll
        roll = roll[0].max(axis=0) if roll.shape[1] else np.zeros((N_PITCHES, 0), np.uint8)
    starts = np.concatenate([t.notes.numpy()["time"] for t in grid.tracks if len(t.notes)] or [np.zeros(0)])
    w, step = settings.window, settings.step
    n = max(0, (roll.shape[1] - w) // step + 1)
    if n == 0:  # shorter than a window: pad it to one, so short pieces still count
        roll, n = np.pad(roll, ((0, 0), (0, w - roll.shape[1]))), 1
    offsets = np.arange(n) * step
    starts = np.sort(starts)
    notes_in = np.searchsorted(starts, offsets + w, side="left") - np.searchsorted(starts, offsets, side="left")
    keep = offsets[notes_in >= settings.min_notes]
    if len(keep) == 0:
        raise ValueError(f"no window of {w} frames with at least {settings.min_notes} note(s)")
    return np.ascontiguousarray(roll, dtype=np.uint8), keep.astype(np.int64)


def _prepare_one(args: tuple[str, PrepSettings]) -> tuple[np.ndarray, np.ndarray] | str:
    """Pool task: the windows of one file, or why it was skipped."""
    path, settings = args
    try:
        data = Path(path).read_bytes()
        if not data:
            return "empty file"
        return file_windows(data, settings)
    except (RuntimeError, ValueError, OSError) as e:
        return f"{type(e).__name__}: {e}"


def cache_key(root: Path, files: Sequence[Path], settings: PrepSettings) -> str:
    """sha256 over the settings and every file's relative path and bytes."""
    h = hashlib.sha256(json.dumps({"version": PREP_VERSION, **asdict(settings)}, sort_keys=True).encode())
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest() if hasattr(hashlib, "file_digest")
                     else hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or tempfile.gettempdir()
    return Path(root) / "spot-runner" / "midi"


def prepare(root: str | Path, settings: PrepSettings, cache_dir: str | Path | None = None,
            workers: int | None = None, progress: bool = True) -> Prepared:
    """The windows of every MIDI file under ``root``: from the cache when this exact content was
    prepared before, else parsed (in ``workers`` processes; default: every core) and cached."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MIDI folder not found: {root}")
    files = find_midi_files(root)
    if not files:
        raise FileNotFoundError(f"no .mid or .midi file under {root}")
    key = cache_key(root, files, settings)
    entry = Path(cache_dir or default_cache_dir()) / f"{key[:32]}"
    writing = _WRITING.pop(entry, None)
    if writing is not None:  # this process is still caching the same content: wait for it, then read it
        writing.join()
    cached = _load(entry)
    if cached is not None:
        log.info("MIDI windows of %s from the cache %s (%d windows, %d file(s) skipped when prepared)",
                 root, entry, len(cached.windows), len(cached.skipped))
        _report_skipped(root, cached.skipped)
        return cached

    t0 = time.perf_counter()
    relative = [p.relative_to(root).as_posix() for p in files]
    tasks = [(str(p), settings) for p in files]
    results = _run(tasks, workers, progress)
    rolls, starts, index, skipped = [], [], [], []
    frames = 0
    for i, (rel, result) in enumerate(zip(relative, results, strict=True)):
        if isinstance(result, str):
            skipped.append((rel, result))
            continue
        roll, offsets = result
        rolls.append(roll)
        starts.append(offsets + frames)  # where the file's roll begins in the concatenation
        index.append(np.full(len(offsets), i, dtype=np.int32))
        frames += roll.shape[1]
    if not rolls:
        raise ValueError(f"none of the {len(files)} MIDI file(s) under {root} could be used: "
                         + "; ".join(f"{r}: {why}" for r, why in skipped[:5]))
    windows = WindowArray(np.concatenate(rolls, axis=1), np.concatenate(starts), settings.window)
    prepared = Prepared(windows, np.concatenate(index), relative, [label_of(r) for r in relative], skipped, entry, False)
    # Written in the background: the rolls are several times the MIDI's size, and training need not wait
    # for them to reach the disk. A later prepare of the same content in this process waits for it;
    # the interpreter waits for it at exit (not a daemon).
    writer = threading.Thread(target=_store, args=(entry, prepared, settings), name="midi-cache")
    _WRITING[entry] = writer
    writer.start()
    log.info("prepared %d windows from %d MIDI file(s) under %s in %.1fs; cached in %s",
             len(prepared.windows), len(files) - len(skipped), root, time.perf_counter() - t0, entry)
    _report_skipped(root, skipped)
    return prepared


def _run(tasks: list[tuple[str, PrepSettings]], workers: int | None,
         progress: bool) -> list[tuple[np.ndarray, np.ndarray] | str]:
    from tqdm import tqdm

    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    bar = tqdm(total=len(tasks), desc="MIDI", unit="file", disable=not progress, mininterval=0.5)
    try:
        # Starting the workers costs a second or more (spawn imports numpy and symusic afresh), while this
        # process prepares ~25 MB of MIDI a second: the pool pays only for a large corpus (MAESTRO's
        # 90 MB). symusic holds the GIL, so threads do not help.
        size = sum(os.path.getsize(path) for path, _settings in tasks)
        if workers <= 1 or len(tasks) < POOL_MIN_FILES or size < POOL_MIN_BYTES:
            out = []
            for task in tasks:
                out.append(_prepare_one(task))
                bar.update(1)
            return out
        # spawn, not fork: the trainer has torch (and its threads) loaded, which a fork must not copy.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            out = []
            for result in pool.map(_prepare_one, tasks, chunksize=max(1, min(32, len(tasks) // (8 * workers)))):
                out.append(result)
                bar.update(1)
            return out
    finally:
        bar.close()


def wait_for_cache() -> None:
    """Wait until every cache entry this process started writing is on disk."""
    while _WRITING:
        _WRITING.pop(next(iter(_WRITING))).join()


def _report_skipped(root: Path, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        names = ", ".join(f"{rel} ({why})" for rel, why in skipped[:20])
        more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        log.warning("skipped %d MIDI file(s) under %s that could not be used: %s%s", len(skipped), root, names, more)


# --- the cache: one folder per key, written aside and renamed into place --------------------------
def _store(entry: Path, p: Prepared, settings: PrepSettings) -> None:
    staging = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        np.save(staging / "rolls.npy", p.windows.rolls)
        np.save(staging / "starts.npy", p.windows.starts)
        np.save(staging / "file_index.npy", p.file_index)
        meta = {"version": PREP_VERSION, "settings": asdict(settings), "width": p.windows.width, "files": p.files,
                "labels": p.labels,
                "skipped": p.skipped}
        (staging / "meta.json").write_text(json.dumps(meta))
        # Fails when another process cached the same key first: theirs holds the same content.
        with contextlib.suppress(OSError):
            os.replace(staging, entry)
    except OSError as e:  # a cache that cannot be written costs the next start time, not this run
        log.warning("could not cache the MIDI windows in %s: %s", entry, e)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load(entry: Path) -> Prepared | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("version") != PREP_VERSION:
            return None
        # mapped: MAESTRO's rolls need not fit in RAM
        windows = WindowArray(np.load(entry / "rolls.npy", mmap_mode="r"), np.load(entry / "starts.npy"), meta["width"])
        index = np.load(entry / "file_index.npy")
    except (OSError, ValueError):
        return None
    return Prepared(windows, index, meta["files"], meta["labels"], [tuple(s) for s in meta["skipped"]], entry, True)
