"""Resume from an empty disk: time to the first training step against one plain ``get_object`` of
the same bytes, against a local SeaweedFS.

    python bench/bench_s3_resume.py [--mb 256] [--repeats 3] [--per-connection-mbps 0]

"Resume" starts with an empty cache folder and a storage client that has done what the trainer
does before resuming (``S3Storage(...)``, ``check()``), and ends when the first optimizer step
after the resume has finished: list the checkpoints, read their checksum records, download
``latest.pt``, verify it, ``torch.load`` it, load model and optimizer state, and one step
(interpreter start-up and ``import torch`` are not counted: they do not depend on storage).

The baseline is a plain ``get_object`` of the same key with the same client (the trainer's own,
same configuration), through boto3's public API, in two ways each round: the body read into memory
in one call, and streamed to a file in the cache folder; the faster median is the baseline.
"Restore overhead" is each resume minus the step after its first one (the same model and state,
warm: compute, the same with any storage; a cost the resume put off until the first step, such as
touching its memory, stays in the overhead). Target: the restore overhead at most 1.3x the plain
GET. Medians of ``--repeats`` rounds, interleaved so that the machine's load hits all alike.

With ``--per-connection-mbps N`` the traffic goes through a loopback relay (its own process) that
limits each connection to N MB/s, as object stores and the networks to them do per TCP stream (S3
typically gives 50-100 MB/s per connection); that is where parallel ranged reads pay off. Without
it, client and server share this machine's cores and a single stream is already as fast as the
server.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tests.fixtures.s3 import seaweedfs  # noqa: E402
from tests.fixtures.throttle import throttled  # noqa: E402
from trainer.checkpoint import CheckpointManager  # noqa: E402
from trainer.config import Checkpoint  # noqa: E402
from trainer.storage_s3 import S3Storage  # noqa: E402

POLICY = Checkpoint(every_steps=1, every_minutes=None, keep_last=2)


def make_model(mb: int) -> nn.Module:
    """Linear layers whose weights, with AdamW's two moments, make a state of about ``mb`` MiB."""
    params = mb * (1 << 20) // 4 // 3
    width = 2048
    layers = max(1, params // (width * width))
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)])


def step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.randn(8, model[0].in_features)
    model(x).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def plain_get(client, bucket: str, key: str, dest: Path) -> tuple[float, float]:
    """Seconds for one plain get_object of ``key`` read into memory, and one streamed to ``dest``."""
    t0 = time.perf_counter()
    data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    into_memory = time.perf_counter() - t0
    size = len(data)
    del data
    t0 = time.perf_counter()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    with open(dest, "wb") as out:
        for chunk in body.iter_chunks(1 << 20):
            out.write(chunk)
    to_file = time.perf_counter() - t0
    assert dest.stat().st_size == size
    dest.unlink()
    return into_memory, to_file


class Streams(logging.Handler):
    """Remembers what the storage logged about each download (size, time, streams)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("downloaded "):
            self.lines.append(record.getMessage())


def resume(bucket: str, cache: Path, mb: int) -> tuple[float, dict[str, float]]:
    """Seconds from an empty cache to the end of the first step, and where they went."""
    shutil.rmtree(cache, ignore_errors=True)
    model = make_model(mb)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    storage = S3Storage(f"s3://{bucket}/run", work_dir=cache)
    storage.check()  # as the trainer does at start, before it looks for a checkpoint
    t0 = time.perf_counter()
    manager = CheckpointManager(storage, POLICY)
    loaded = manager.load()
    assert loaded is not None and loaded[1] == "checkpoints/latest.pt", loaded
    t1 = time.perf_counter()
    payload = loaded[0]
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    del payload, loaded
    t2 = time.perf_counter()
    step(model, opt)
    t3 = time.perf_counter()
    step(model, opt)  # the same step again, warm: compute only, the same with any storage
    t4 = time.perf_counter()
    manager.close()
    storage.close()
    return t3 - t0, {"find+download+verify+torch.load": t1 - t0, "load_state_dict": t2 - t1, "first step": t3 - t2,
                     "second step": t4 - t3}


def download(bucket: str, cache: Path, concurrency: int) -> float:
    storage = S3Storage(f"s3://{bucket}/run", work_dir=cache, concurrency=concurrency)
    dest = cache / "ranged.pt"
    t0 = time.perf_counter()
    assert storage.get_file("checkpoints/latest.pt", dest)
    elapsed = time.perf_counter() - t0
    dest.unlink()
    storage.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-connection-mbps", type=float, default=0.0)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    streams = Streams()
    logging.getLogger("trainer").addHandler(streams)
    logging.getLogger("trainer").setLevel(logging.INFO)
    root = Path(tempfile.mkdtemp(prefix="bench-s3-resume-"))
    with seaweedfs(root / "seaweedfs") as server, contextlib.ExitStack() as stack:
        endpoint = server.endpoint
        if args.per_connection_mbps:
            endpoint = stack.enter_context(throttled(server.endpoint, args.per_connection_mbps))
        for k, v in server.env(endpoint=endpoint).items():
            if k.startswith("AWS_"):
                os.environ[k] = v
        # The checkpoint to resume from, written the way the trainer writes it.
        model = make_model(args.mb)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step(model, opt)
        storage = S3Storage(f"s3://{server.bucket}/run", work_dir=root / "writer")
        manager = CheckpointManager(storage, POLICY)
        manager.save(1, {"step": 1, "model": model.state_dict(), "optimizer": opt.state_dict()})
        assert manager.close(), manager.last_error
        size = server.client().head_object(Bucket=server.bucket, Key="run/checkpoints/latest.pt")["ContentLength"]
        del model, opt
        client = storage.client  # the trainer's own client and configuration
        plain, firsts, parts, one, adaptive = [], [], [], [], []
        cache = root / "cache"
        for _ in range(args.repeats):  # interleaved, so load on the machine hits all alike
            cache.mkdir(parents=True, exist_ok=True)
            plain.append(plain_get(client, server.bucket, "run/checkpoints/latest.pt", cache / "plain.pt"))
            total, split = resume(server.bucket, cache, args.mb)
            firsts.append(total)
            parts.append(split)
            cache.mkdir(parents=True, exist_ok=True)
            one.append(download(server.bucket, cache, 1))
            adaptive.append(download(server.bucket, cache, 8))
        storage.close()
    med = statistics.median
    memory, to_file = med(p[0] for p in plain), med(p[1] for p in plain)
    p, f = min(memory, to_file), med(firsts)
    overhead = med(total - split["second step"] for total, split in zip(firsts, parts, strict=True))
    link = f"each connection limited to {args.per_connection_mbps:g} MB/s" if args.per_connection_mbps else "no bandwidth limit"
    print(f"checkpoint {size / 1e6:.0f} MB on SeaweedFS at 127.0.0.1 ({link}); {os.cpu_count()} CPU cores; "
          f"medians of {args.repeats}")
    print(f"plain get_object into memory:           {memory:6.2f} s  ({size / memory / 1e6:5.0f} MB/s)")
    print(f"plain get_object to a file:             {to_file:6.2f} s  ({size / to_file / 1e6:5.0f} MB/s)")
    print(f"resume, empty disk to first step done:  {f:6.2f} s  -> {f / p:.2f}x the plain GET")
    for name in parts[0]:
        print(f"    {name:34s} {med(x[name] for x in parts):6.2f} s")
    print(f"restore overhead (resume - its second step): {overhead:5.2f} s  -> {overhead / p:.2f}x the plain GET "
          f"(target <= 1.3x: {'met' if overhead / p <= 1.3 else 'NOT met'})")
    print(f"S3Storage.get_file, 1 stream:           {med(one):6.2f} s")
    print(f"S3Storage.get_file, up to 8 streams:    {med(adaptive):6.2f} s  -> {med(one) / med(adaptive):.2f}x faster "
          f"than 1 stream, {p / med(adaptive):.2f}x the plain GET's speed")
    resumes = [line for line in streams.lines if "in memory" in line]
    print("resume downloads: " + "; ".join(line.split(": ", 1)[-1] for line in resumes))


if __name__ == "__main__":
    main()
