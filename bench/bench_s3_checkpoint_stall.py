"""Stall per checkpoint to S3: the background upload of CheckpointManager against a synchronous
``torch.save`` + boto3 ``upload_file`` baseline, measured in one run against a local SeaweedFS.

    python bench/bench_s3_checkpoint_stall.py [--mb 256] [--repeats 3]

The stall is the time the training loop is blocked by a checkpoint. Baseline: it writes the file
and uploads it before going on. CheckpointManager: ``save()`` copies the state to CPU memory and
returns; a background thread serialises, hashes and uploads (multipart, parallel parts). The
script also reports how much a fixed CPU workload slows down while the background upload runs
(the background thread competes for the cores), so the saving is not overstated.
Target: background stall <= 15% of the baseline stall.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.fixtures.s3 import seaweedfs  # noqa: E402
from trainer.checkpoint import CheckpointManager  # noqa: E402
from trainer.config import Checkpoint  # noqa: E402
from trainer.storage_s3 import S3Storage  # noqa: E402


def make_state(mb: int) -> dict:
    """A training state of ``mb`` MiB: weights plus Adam moments, as the loop would hand over."""
    n = mb * (1 << 20) // 4 // 3  # float32 elements per part (weights, exp_avg, exp_avg_sq)
    rows = 4096
    cols = max(1, n // rows)
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(rows, cols, generator=g)
    return {
        "step": 0,
        "model": {"w": weights},
        "optimizer": {"state": {0: {"exp_avg": torch.randn(rows, cols, generator=g),
                                    "exp_avg_sq": torch.rand(rows, cols, generator=g)}}},
        "rng": {"torch": torch.get_rng_state()},
    }


def state_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in (state["model"]["w"], *state["optimizer"]["state"][0].values()))


def workload() -> float:
    """A fixed slice of "training": matrix products on the CPU; returns seconds taken."""
    a = torch.randn(768, 768)
    t0 = time.perf_counter()
    for _ in range(40):
        a = torch.tanh(a @ a * 0.01)
    return time.perf_counter() - t0


def baseline(server, state: dict, folder: Path, i: int) -> float:
    client = server.client()
    t0 = time.perf_counter()
    path = folder / f"baseline-{i}.pt"
    torch.save(state, path)
    client.upload_file(str(path), server.bucket, f"baseline/checkpoints/step-{i:09d}.pt")
    stall = time.perf_counter() - t0
    path.unlink()
    return stall


def background(manager: CheckpointManager, state: dict, step: int) -> tuple[float, float, float]:
    """(stall, write+upload time, workload time while the upload ran)."""
    stall = manager.save(step, state)
    busy: list[float] = []
    done = threading.Event()

    def measure() -> None:  # the loop's work goes on while the writer uploads
        while not done.is_set():
            busy.append(workload())

    t = threading.Thread(target=measure)
    t0 = time.perf_counter()
    t.start()
    ok = manager.flush()
    write_s = time.perf_counter() - t0
    done.set()
    t.join()
    assert ok, manager.last_error
    return stall, write_s, statistics.median(busy) if busy else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256, help="state size in MiB (the target is stated for >= 200 MB)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = Path(tempfile.mkdtemp(prefix="bench-s3-stall-"))
    state = make_state(args.mb)
    size = state_bytes(state)
    with seaweedfs(root / "seaweedfs") as server:
        for k, v in server.env().items():
            if k.startswith("AWS_"):
                os.environ[k] = v
        storage = S3Storage(f"s3://{server.bucket}/bg", work_dir=root / "cache")
        manager = CheckpointManager(storage, Checkpoint(every_steps=1, every_minutes=None, keep_last=2))
        base, stalls, writes, slowdown = [], [], [], []
        for i in range(1, args.repeats + 1):  # interleaved, so load on the machine hits both alike
            base.append(baseline(server, state, root, i))
            idle = statistics.median(workload() for _ in range(3))
            s, w, b = background(manager, state, i)
            stalls.append(s)
            writes.append(w)
            slowdown.append(b / idle)
        manager.close()
        storage.close()
    b, s = statistics.median(base), statistics.median(stalls)
    print(f"state: {size / 1e6:.0f} MB, {args.repeats} checkpoints each, medians; SeaweedFS on 127.0.0.1, "
          f"{os.cpu_count()} CPU cores")
    print(f"baseline  torch.save + upload_file (synchronous): stall {b:6.2f} s  (all: {', '.join(f'{x:.2f}' for x in base)})")
    print(f"CheckpointManager.save (background upload):      stall {s:6.3f} s  (all: {', '.join(f'{x:.3f}' for x in stalls)})")
    print(f"  background serialise + hash + upload took {statistics.median(writes):.2f} s, off the loop")
    print(f"  meanwhile a fixed CPU workload ran {statistics.median(slowdown):.2f}x slower than just before "
          "(the writer and the S3 server share the cores)")
    print(f"stall ratio background / baseline: {s / b:.3f}  (target <= 0.15: {'met' if s / b <= 0.15 else 'NOT met'})")


if __name__ == "__main__":
    main()
