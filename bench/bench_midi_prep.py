"""MIDI preparation throughput against symusic's raw parse of the same files, measured in this one
run, on this machine.

    python bench/bench_midi_prep.py [--pieces 100] [--beats 2048] [--workers N]

The raw parse is the floor any preparation built on symusic pays: ``Score(bytes)`` for every file,
one after another, nothing else. The preparation (trainer/midi_prep.py, uncached) adds hashing
every file for the cache key, resampling to the beat grid, the piano roll, cutting and filtering
windows and concatenation (processes are used only for a corpus of 64 MB or more: below that,
starting them costs more than they save); the cache is written in the background, and its time is
shown on a line of its own. Files are synthetic performances from tests/fixtures/midi_gen.py (4 pianists x ``--pieces``).
Target: preparation throughput at least 0.8x the raw parse's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from symusic import Score  # noqa: E402

from tests.fixtures.midi_gen import write_dataset  # noqa: E402
from trainer.midi_prep import PrepSettings, find_midi_files, prepare, wait_for_cache  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pieces", type=int, default=100, help="files per pianist (4 pianists)")
    ap.add_argument("--beats", type=int, default=2048, help="length of each piece in beats")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "midi"
        write_dataset(root, seed=0, pieces=args.pieces, beats=args.beats, corrupt=False)
        files = find_midi_files(root)
        size = sum(p.stat().st_size for p in files)
        raw_times, prep_times, written_times = [], [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            notes = sum(Score.from_midi(p.read_bytes()).note_num() for p in files)
            raw_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            prep = prepare(root, PrepSettings(window=256, hop=64), Path(tmp) / f"cache{r}", args.workers, progress=False)
            prep_times.append(time.perf_counter() - t0)
            wait_for_cache()
            written_times.append(time.perf_counter() - t0)
        raw, prepd = min(raw_times), min(prep_times)
        workers = args.workers or len(os.sched_getaffinity(0))
        print(f"{len(files)} files, {size / 1e6:.1f} MB, {notes:,} notes; {len(prep.windows):,} windows of 256 frames")
        print(f"raw symusic parse (1 process):      {raw:7.3f} s  {len(files) / raw:8.0f} files/s")
        print(f"prepare, uncached ({workers} worker(s)):  {prepd:7.3f} s  {len(files) / prepd:8.0f} files/s")
        print(f"ratio (prepare / raw parse throughput): {raw / prepd:.2f}x  (target >= 0.8x)")
        print(f"prepare with the cache on disk:     {min(written_times):7.3f} s")
        t0 = time.perf_counter()
        cached = prepare(root, PrepSettings(window=256, hop=64), Path(tmp) / "cache0", args.workers, progress=False)
        print(f"prepare, cached relaunch:           {time.perf_counter() - t0:7.3f} s  (from cache: {cached.from_cache})")


if __name__ == "__main__":
    main()
