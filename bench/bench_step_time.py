"""Step time of the trainer's loop against a bare PyTorch loop on the same model and data, and the
stall per checkpoint. Both are measured in this one run, on this machine.

    python bench/bench_step_time.py [--steps 100] [--repeats 3]

The bare loop does only what any training loop must: batch, forward, backward, clip, AdamW step.
The trainer's loop adds the learning-rate schedule, loss and gradient-norm reads, the non-finite
guard, EMA of the weights, TensorBoard and log lines, the status heartbeat and the progress bar.
Start-up is cancelled out by timing a short and a long run of each and taking the difference.
Target: the trainer's loop at most 1.05x the bare loop's step time.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import TrainConfig  # noqa: E402
from trainer.data import EpochSampler  # noqa: E402
from trainer.loop import lr_at, make_optimizer, seed_everything, train  # noqa: E402
from trainer.recipes import build_recipe  # noqa: E402
from trainer.signals import StopRequest  # noqa: E402
from trainer.storage import LocalStorage  # noqa: E402

JOB_PATH = ROOT / "jobs" / "quickstart.yaml"


def config(max_steps: int, checkpoint_every: int | None) -> TrainConfig:
    return TrainConfig.model_validate({
        "seed": 1,
        "model": {"recipe": "tiny_gpt", "n_layer": 4, "n_head": 4, "n_embd": 256, "dropout": 0.1},
        "data": {"format": "text", "train": "data/python_reference.txt", "tokenizer": "bytes", "block_size": 128},
        "batch_size": 16,
        "max_steps": max_steps,
        "optimizer": {"lr": 1e-3},
        "schedule": {"warmup_steps": 10},
        "ema": {"decay": 0.999},
        "eval": {"every_steps": 10_000},
        "checkpoint": {"every_steps": checkpoint_every or 10_000_000, "every_minutes": None, "keep_last": 2},
        "logging": {"every_steps": 10, "heartbeat_seconds": 2, "sync_seconds": 30, "progress_bar": True},
        "threads": 2,
    })


def bare_loop(max_steps: int) -> float:
    """Seconds for ``max_steps`` steps of the plainest loop on the same model, data and optimizer."""
    cfg = config(max_steps, None)
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    recipe = build_recipe(cfg, JOB_PATH)
    model = recipe.model
    optimizer = make_optimizer(cfg, model, torch.device("cpu"))
    sampler = EpochSampler(len(recipe.train_set), cfg.batch_size, cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for step in range(max_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, max_steps)
        batch = recipe.collate([recipe.train_set[i] for i in sampler.next_batch()])
        recipe.forward(model, batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def trainer_loop(max_steps: int, checkpoint_every: int | None = None) -> tuple[float, Path]:
    run = Path(tempfile.mkdtemp(prefix="bench-step-"))
    cfg = config(max_steps, checkpoint_every)
    t0 = time.perf_counter()
    outcome = train(cfg, JOB_PATH, LocalStorage(run), StopRequest())
    assert outcome.exit_code == 0
    return time.perf_counter() - t0, run


def checkpoint_stalls(run: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [e.value for e in acc.Scalars("checkpoint/stall_seconds")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100, help="measured steps per run")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger("trainer").setLevel(logging.WARNING)
    short = 10
    long = short + args.steps

    bare, ours = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        bare.append((bare_loop(long) - bare_loop(short)) / args.steps)
        ours.append((trainer_loop(long)[0] - trainer_loop(short)[0]) / args.steps)
    bare_ms, ours_ms = statistics.median(bare) * 1e3, statistics.median(ours) * 1e3

    seconds, run = trainer_loop(short + 50, checkpoint_every=10)
    stalls = checkpoint_stalls(run)
    state_mb = sum(p.stat().st_size for p in (run / "checkpoints").glob("step-*.pt")) / max(1, len(list((run / "checkpoints").glob("step-*.pt")))) / 1e6

    print(f"model: tiny_gpt 4x256, block 128, batch 16, EMA on, logging every 10 steps; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"bare PyTorch loop : {bare_ms:8.1f} ms/step  (runs: {', '.join(f'{b * 1e3:.1f}' for b in bare)})")
    print(f"trainer loop      : {ours_ms:8.1f} ms/step  (runs: {', '.join(f'{o * 1e3:.1f}' for o in ours)})")
    print(f"ratio             : {ours_ms / bare_ms:8.3f}x  (target <= 1.05x)")
    print(f"checkpoint ({state_mb:.1f} MB): stall per checkpoint median {statistics.median(stalls) * 1e3:.1f} ms, "
          f"max {max(stalls) * 1e3:.1f} ms over {len(stalls)} checkpoints = "
          f"{statistics.median(stalls) * 1e3 / bare_ms:.2f} bare steps")
    if not math.isfinite(ours_ms / bare_ms):
        sys.exit(1)


if __name__ == "__main__":
    main()
