"""The training loop. Read it top to bottom: set up, resume if there is anything to resume from,
step until done, write the final weights. Everything that shapes the numbers is either derived
from the step counter (learning rate) or restored from the checkpoint (weights, optimizer, scaler,
EMA, sampler position, RNGs), so a run killed at any instant continues bit for bit."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer import contract, distributed
from trainer.checkpoint import CheckpointManager, to_cpu_copy, trainable_state
from trainer.config import TrainConfig
from trainer.data import EpochSampler
from trainer.finish import RunEnd, finish
from trainer.loader import Batches
from trainer.recipes import Recipe, build_recipe
from trainer.reporter import Reporter
from trainer.signals import StopRequest
from trainer.step import Stepper
from trainer.storage import Storage

log = logging.getLogger("trainer")

CHECKPOINT_FORMAT = 1


def check_format(payload: dict, key: str) -> None:
    """Refuse a checkpoint of another layout with both versions named, before any of it is applied."""
    found = payload.get("format")
    if found != CHECKPOINT_FORMAT:
        raise RuntimeError(f"{key} is checkpoint format {found}, this trainer reads format {CHECKPOINT_FORMAT}: resume "
                           f"it with the trainer version that wrote it, or start the job on a new run URI")


class Diverged(RuntimeError):
    """Too many steps in a row with a non-finite loss or gradient."""


class GradNormStop(RuntimeError):
    """The gradient-norm guard stopped the run; the last good state is checkpointed (``EXIT_GRAD_NORM``)."""


class JobSetupError(ValueError):
    """The job cannot be set up as written (data files, recipe module, sizes): a rerun cannot help."""


@dataclass
class Progress:
    """Counters that decide what happens next; saved in every checkpoint."""

    best_val: float = math.inf
    evals_since_best: int = 0
    nonfinite_in_a_row: int = 0
    tokens_seen: int = 0
    early_stopped: bool = False
    #: Seconds spent training the steps this state holds, over every start (the report's hours).
    train_seconds: float = 0.0
    #: Starts that continued from a checkpoint.
    resumes: int = 0


@dataclass
class Outcome:
    exit_code: int
    step: int


# --- small pieces the loop uses -------------------------------------------------------------------
def pick_device(choice: str, world: distributed.World | None = None) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but no CUDA device is visible")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and world is not None:
        return torch.device("cuda", world.local_rank)
    return torch.device(choice)


def per_rank_batch(cfg: TrainConfig, world: distributed.World) -> int:
    """Examples per micro-batch on each process. With ``global_batch_size`` the share follows from
    the number of processes, so the same job keeps its optimisation when it moves to more GPUs."""
    if cfg.global_batch_size is None:
        return cfg.batch_size
    share, rest = divmod(cfg.global_batch_size, world.world_size * cfg.grad_accum)
    if rest or share == 0:
        raise ValueError(
            f"global_batch_size {cfg.global_batch_size} does not split into {world.world_size} process(es) x "
            f"grad_accum {cfg.grad_accum}; choose a multiple of {world.world_size * cfg.grad_accum}"
        )
    return share


def lr_at(step: int, cfg: TrainConfig, max_steps: int) -> float:
    """Linear warmup, then cosine to ``min_lr_ratio * lr``. A pure function of the step, so there is
    no scheduler state that a resume could get wrong."""
    base, sched = cfg.optimizer.lr, cfg.schedule
    if step < sched.warmup_steps:
        return base * (step + 1) / sched.warmup_steps
    if sched.decay == "constant":
        return base
    span = max(1, max_steps - sched.warmup_steps)
    progress = min(1.0, (step - sched.warmup_steps) / span)
    floor = base * sched.min_lr_ratio
    return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (base - floor)


def make_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device,
                   lr_scale: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; ``lr_scale`` (name → multiple of the lr) puts parameters
    in groups of their own, whose ``lr_scale`` the loop applies at every step."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scales = sorted({(lr_scale or {}).get(n, 1.0) for n, _ in named})
    groups = []
    for scale in scales:
        params = [p for n, p in named if (lr_scale or {}).get(n, 1.0) == scale]
        # Weight decay on matrices only, not on biases and norms (as in GPT-2 and nanoGPT).
        groups += [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optimizer.weight_decay, "lr_scale": scale},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale},
        ]
    groups = [g for g in groups if g["params"]]
    opt = cfg.optimizer
    if opt.name == "adamw8bit":
        if device.type == "cuda":
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)
        log.warning("optimizer adamw8bit needs CUDA (bitsandbytes); this machine has none, using AdamW")
    # PyTorch picks the multi-tensor (foreach) kernels only for CUDA by default; on CPU the per-tensor
    # loop costs a large share of a small model's step, so ask for them.
    return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, foreach=True)


class EMA:
    """Exponential moving average of the trainable weights, kept in float32."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        shadow = list(self.shadow.values())
        live = [p.detach().float() for p in self.params.values()]
        torch._foreach_lerp_(shadow, live, 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self):
        """Swap the averaged weights into the model for the duration of the block."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n, t in state.items():
            self.shadow[n].copy_(t)


def _load_model_state(model: nn.Module, state: dict[str, torch.Tensor], key: str) -> None:
    """Load a checkpoint's trainable state. Frozen weights are not in it (they come from the base
    model), so loading is not strict, but every key it has must fit, and no trainable weight may be
    left out: a changed model or LoRA setting would otherwise resume from half-initialised weights."""
    hint = "The model or LoRA settings changed since the run started: restore them, or start a new run under another run URI"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ
        raise JobSetupError(f"{key} does not fit the model this job builds: {e}. {hint}") from None
    expected = trainable_state(model).keys()
    missing = sorted(k for k in result.missing_keys if k in expected)
    if result.unexpected_keys or missing:
        detail = "; ".join(part for part in (
            f"not in this model: {', '.join(result.unexpected_keys[:5])}" if result.unexpected_keys else "",
            f"missing from the checkpoint: {', '.join(missing[:5])}" if missing else "",
        ) if part)
        raise JobSetupError(f"{key} does not fit the model this job builds ({detail}). {hint}")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# --- the loop --------------------------------------------------------------------------------------
def train(cfg: TrainConfig, job_path: str | Path, storage: Storage, stop: StopRequest) -> Outcome:
    # Under torchrun each process is one rank: rank 0 writes checkpoints, status and TensorBoard;
    # every rank restores from the same checkpoint.
    world = distributed.from_env()
    started = time.time()
    seed_everything(cfg.seed)  # the same initial weights on every rank
    torch.set_num_threads(cfg.threads or min(torch.get_num_threads(), 8))
    device = pick_device(cfg.device, world)
    distributed.init(world, device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    # Whether this is a resume is known before the model is built: init_from weights are for a run's
    # first start only (a resume's own checkpoint holds everything, fine-tuned since).
    checkpoints = CheckpointManager(storage, cfg.checkpoint)
    resumed = checkpoints.load()
    chosen = distributed.broadcast(resumed[1] if resumed else None, world)
    if (resumed[1] if resumed else None) != chosen:
        raise RuntimeError(f"rank {world.rank} found checkpoint {resumed and resumed[1]!r}, rank 0 found {chosen!r}")
    try:
        batch_size = per_rank_batch(cfg, world)
        init = {}
        if cfg.init_from and not resumed:
            from trainer.init_weights import load_init

            init = load_init(cfg, job_path, storage, CHECKPOINT_FORMAT, record=world.is_main)
        recipe: Recipe = build_recipe(cfg, job_path, init)
    except (FileNotFoundError, IsADirectoryError, ImportError, ValueError, TypeError) as e:
        raise JobSetupError(str(e)) from e
    model = recipe.model.to(device)
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        seed_everything(cfg.seed + 7919 * world.rank)  # each rank its own dropout stream
        train_model: nn.Module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        train_model = model
    optimizer = make_optimizer(cfg, model, device, recipe.lr_scale)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    ema = EMA(model, cfg.ema.decay) if cfg.ema else None
    try:
        sampler = EpochSampler(len(recipe.train_set), batch_size, cfg.seed, world.rank, world.world_size)
    except ValueError as e:
        raise JobSetupError(str(e)) from e
    max_steps = cfg.max_steps or math.ceil(cfg.epochs * sampler.batches_per_epoch / cfg.grad_accum)
    trainable = [p for p in model.parameters() if p.requires_grad]
    progress = Progress()
    step = 0

    if resumed:
        payload, key = resumed
        check_format(payload, key)
        _load_model_state(model, payload["model"], key)
        optimizer.load_state_dict(payload["optimizer"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        if ema is not None and payload.get("ema"):
            ema.load_state_dict(payload["ema"])
        elif ema is not None:  # EMA switched on for a run that had none: average from the resumed weights
            ema = EMA(model, cfg.ema.decay)
        sampler.load_state_dict(payload["sampler"])
        progress = Progress(**payload["progress"])
        progress.resumes += 1
        rng_states = payload["rng"]  # one per rank that wrote it
        if len(rng_states) != world.world_size:
            log.warning("the checkpoint was written by %d process(es), this run has %d: random streams restart",
                        len(rng_states), world.world_size)
        set_rng_state(rng_states[world.rank % len(rng_states)])
        step = int(payload["step"])
    else:
        log.info("no checkpoint under %s: starting fresh", storage.uri)
    stop.steps_done = step
    batches = Batches(recipe, sampler, cfg.loader, device)  # after the sampler's state is restored
    trained_before, training_since = progress.train_seconds, time.perf_counter()

    def state() -> dict[str, Any]:
        """The full training state. A collective under torchrun: every rank must call it together."""
        progress.train_seconds = trained_before + time.perf_counter() - training_since
        return {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "max_steps": max_steps,
            "model": trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "ema": ema.state_dict() if ema else None,
            "sampler": batches.state,  # not sampler's own: with loader workers it runs ahead
            "progress": asdict(progress),
            "rng": distributed.gather(rng_state(), world),
        }

    from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only once training starts

    # flush_secs: events reach the file (and so the periodic sync to the run URI) within a sync period,
    # not after SummaryWriter's default two minutes, so a copy of a running run shows recent steps.
    if world.is_main:
        tb = SummaryWriter(str(storage.work_dir / contract.TENSORBOARD_DIR), purge_step=step + 1 if step else None,
                           flush_secs=max(1, round(cfg.logging.sync_seconds / 2)))
        reporter = Reporter(
            storage, cfg.logging.heartbeat_seconds, cfg.logging.sync_seconds,
            contract.Status(contract.RUNNING, step=step, max_steps=max_steps, started=time.time(),
                            last_checkpoint_step=step if resumed else None),
        )
        # status.json names a checkpoint only once it is durable, and the last write's failure if any.
        checkpoints.on_progress = lambda written, error: reporter.update(last_checkpoint_step=written,
                                                                         checkpoint_error=error)
    else:
        tb, reporter = _Silent(), _Silent()
    reporter.start()
    n_params = sum(p.numel() for p in trainable)
    log.info("training %s trainable parameters for %d steps from step %d: batch %d per process x %d process(es) "
             "x accumulation %d = %d examples per optimizer step (%s, %s)", f"{n_params:,}", max_steps, step,
             batch_size, world.world_size, cfg.grad_accum, batch_size * world.world_size * cfg.grad_accum,
             cfg.precision, device)

    # Each rank evaluates its share of the fixed validation batches; the totals are summed.
    all_val_batches = _fixed_val_batches(recipe, cfg, batch_size)
    val_batches, do_eval = all_val_batches[world.rank :: world.world_size], bool(all_val_batches)
    bar = _progress_bar(cfg, step, max_steps, enabled=world.is_main)
    last_saved_step = step if resumed else None
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    model.train()
    window_t0, window_tokens = time.perf_counter(), 0
    outcome: Outcome | None = None
    stepper = Stepper(optimizer, scaler, ema, trainable, cfg.grad_clip, cfg.guard)
    before_streak: tuple[int, dict[str, Any]] | None = None  # the state before a streak above guard.stop_grad_norm

    def streak_starts() -> None:  # the state no over-limit gradient has touched yet: the last good one
        nonlocal before_streak
        before_streak = (step, to_cpu_copy(state()))

    try:
        while step < max_steps and not progress.early_stopped:  # early_stopped: a resume after an early stop
            # Storage that refuses for good (rank 0's writers; the other ranks stop with it): steps
            # that can never be saved or reported are money spent for nothing.
            refused = checkpoints.permanent_error or reporter.permanent_error
            if refused is not None:
                raise refused
            lr = lr_at(step, cfg, max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)

            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                batch = batches.next()
                batch_tokens = _tokens(batch)
                window_tokens += batch_tokens
                progress.tokens_seen += batch_tokens
                batch = _to(batch, device)
                # Gradients are all-reduced only on the micro-step that steps the optimizer.
                last_micro = micro == cfg.grad_accum - 1
                with autocast(), (train_model.no_sync() if world.distributed and not last_micro else contextlib.nullcontext()):
                    out = recipe.forward(train_model, batch)
                    loss = out.loss / cfg.grad_accum
                    (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += out.loss.detach()
                step_metrics = out.metrics
            train_loss, stop_now, save_due = distributed.step_consensus(
                loss_sum / cfg.grad_accum, stop.requested, world.is_main and checkpoints.due(step + 1), world)

            applied = stepper.apply(train_loss, streak_starts)
            grad_norm = applied.grad_norm
            if applied.refused:  # this step's gradient is not applied
                good_step, snapshot = before_streak
                written = world.is_main and _guard_checkpoint(checkpoints, good_step, snapshot)
                raise GradNormStop(
                    f"step {step + 1}: gradient norm {grad_norm:.4g}; {stepper.over_limit} steps in a row above "
                    f"guard.stop_grad_norm {cfg.guard.stop_grad_norm:g}: the run stopped and " +
                    (f"the last good state (step {good_step}) is in {contract.LATEST}" if written
                     else f"the last good state could not be written: {checkpoints.last_error}")
                    + "; lower the learning rate, check the data, or raise guard.stop_grad_norm (null turns it off)")
            if applied.finite:
                progress.nonfinite_in_a_row = 0
            elif applied.overflow:
                log.info("step %d skipped: fp16 gradients overflowed, loss scale lowered to %g", step + 1,
                         scaler.get_scale())
            else:
                progress.nonfinite_in_a_row += 1
                log.warning("step %d skipped: loss %s, gradient norm %s (%d non-finite in a row)",
                            step + 1, train_loss, grad_norm, progress.nonfinite_in_a_row)
                if progress.nonfinite_in_a_row >= cfg.guard.max_nonfinite_in_a_row:
                    raise Diverged(
                        f"{progress.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient "
                        f"(last: loss {train_loss}, gradient norm {grad_norm}); lower the learning rate, "
                        f"use bf16 instead of fp16, or check the data"
                    )
            step += 1
            stop.steps_done = step
            if applied.finite and grad_norm > cfg.guard.warn_grad_norm:
                log.warning("step %d: gradient norm %.1f is above %.0f (clipped to %s)", step, grad_norm,
                            cfg.guard.warn_grad_norm, cfg.grad_clip)

            if step % cfg.logging.every_steps == 0 or step == max_steps:
                elapsed = time.perf_counter() - window_t0
                tokens_per_s = window_tokens / elapsed if elapsed > 0 else 0.0
                window_t0, window_tokens = time.perf_counter(), 0
                for name, value in (("train/loss", train_loss), ("train/lr", lr), ("train/grad_norm", grad_norm),
                                    ("train/tokens_per_s", tokens_per_s)):
                    tb.add_scalar(name, value, step)
                for name, value in (step_metrics or {}).items():  # the recipe's own (last micro-batch)
                    tb.add_scalar(f"train/{name}", float(value), step)
                reporter.update(step=step, loss=train_loss if math.isfinite(train_loss) else None,  # NaN is not JSON
                               tokens_per_s=round(tokens_per_s, 1))
                bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                if not cfg.logging.progress_bar:
                    log.info("step %d/%d loss %.4f lr %.2e grad norm %.3f %.0f tok/s", step, max_steps,
                             train_loss, lr, grad_norm, tokens_per_s)
            bar.update(1)

            improved = False
            if do_eval and (step % cfg.eval.every_steps == 0 or step == max_steps):
                metrics = _evaluate(model, recipe, val_batches, device, autocast, ema, world)
                for name, value in metrics.items():
                    tb.add_scalar(f"val/{name}", value, step)
                improved = metrics["loss"] < progress.best_val - cfg.eval.min_delta
                if improved:
                    progress.best_val, progress.evals_since_best = metrics["loss"], 0
                else:
                    progress.evals_since_best += 1
                reporter.update(val_loss=metrics["loss"])
                extra = "".join(f", {k} {v:.4g}" for k, v in metrics.items() if k not in _CORE_METRICS)
                log.info("step %d: val loss %.4f, perplexity %.2f, token accuracy %.3f%s%s", step, metrics["loss"],
                         metrics["perplexity"], metrics["token_accuracy"], extra, " (best)" if improved else "")
                patience = cfg.eval.early_stop_patience
                if patience and progress.evals_since_best >= patience:
                    progress.early_stopped = True
                    log.info("early stop: val loss has not improved for %d evaluations", patience)

            if improved or save_due or stop_now or progress.early_stopped:
                snapshot, last_saved_step = state(), step
                if world.is_main:
                    stall = checkpoints.save(step, snapshot, best=improved)
                    tb.add_scalar(contract.TAG_CHECKPOINT_STALL, stall, step)
            if stop_now:
                outcome = _emergency_exit(checkpoints, stop, step, reporter, world)
                return outcome
            if progress.early_stopped:
                break

        # The last state is a checkpoint too, so a crash while writing final/ loses nothing.
        if last_saved_step != step:
            snapshot = state()
            if world.is_main:
                checkpoints.save(step, snapshot)
        if world.is_main:
            if not checkpoints.flush():
                if checkpoints.permanent_error is not None:
                    raise checkpoints.permanent_error
                raise RuntimeError(f"the last checkpoint could not be written: {checkpoints.last_error}")
            # One process evaluates the whole fixed validation set: the other ranks are done.
            evaluate = (lambda m: _evaluate(m, recipe, all_val_batches, device, autocast, None, distributed.World())
                        ) if do_eval else None
            end = RunEnd(cfg, Path(job_path), storage, recipe, model, ema.state_dict() if ema else None, step, max_steps,
                         progress, evaluate, lambda: checkpoints.load_key(contract.BEST), stop, started)
            if not finish(end):
                log.warning("%s during the finish: training is complete and checkpointed; a relaunch only finishes",
                            stop.signal_name)
                reporter.finish(contract.INTERRUPTED, step=step, exit_code=contract.EXIT_INTERRUPTED)
                outcome = Outcome(contract.EXIT_INTERRUPTED, step)
                return outcome
            reporter.finish(contract.DONE, step=step, exit_code=contract.EXIT_DONE)
            log.info("done at step %d; final weights in %s/%s", step, storage.uri, contract.FINAL_DIR)
        outcome = Outcome(contract.EXIT_DONE, step)
        return outcome
    finally:
        batches.close()
        bar.close()
        tb.close()
        if outcome is None:  # an exception is on its way out: leave what was queued written
            with contextlib.suppress(Exception):
                # Stop the heartbeat, or it could overwrite the failure the caller records in status.json.
                reporter.finish(contract.FAILED, step=step)
            checkpoints.close(timeout=60)
        else:
            checkpoints.close()


def _emergency_exit(checkpoints: CheckpointManager, stop: StopRequest, step: int, reporter: Reporter,
                    world: distributed.World) -> Outcome:
    if not world.is_main:
        # Rank 0 writes the checkpoint this rank's state went into; stay until it is written, or
        # torchrun would take this rank's exit as the group failing and stop rank 0 mid-write.
        distributed.barrier(world)
        return Outcome(contract.EXIT_INTERRUPTED, step)
    t0 = time.perf_counter()
    ok = checkpoints.flush(timeout=120)
    save_s = time.perf_counter() - t0
    since_signal = time.monotonic() - (stop.received_at or time.monotonic())
    if ok:
        log.warning("emergency checkpoint at step %d (the signal came after step %s) written in %.2fs, "
                    "%.2fs after %s; exiting with code %d", step, stop.steps_done_at_signal, save_s,
                    since_signal, stop.signal_name, contract.EXIT_INTERRUPTED)
    else:
        log.error("emergency checkpoint at step %d could not be written in time: %s", step, checkpoints.last_error)
    reporter.finish(contract.INTERRUPTED, step=step, exit_code=contract.EXIT_INTERRUPTED)
    distributed.barrier(world)
    return Outcome(contract.EXIT_INTERRUPTED if ok else contract.EXIT_FAILED, step)


def _guard_checkpoint(checkpoints: CheckpointManager, step: int, snapshot: dict[str, Any]) -> bool:
    """Write the state before a step the guard refused, and wait until it is durable."""
    checkpoints.save(step, snapshot)
    return checkpoints.flush(timeout=120)


def _fixed_val_batches(recipe: Recipe, cfg: TrainConfig, batch_size: int) -> list[dict[str, Any]]:
    """The same validation batches at every evaluation, evenly spread over the validation set."""
    val = recipe.val_set
    if not val or len(val) == 0:
        return []
    n = min(len(val), cfg.eval.batches * batch_size)
    idx = np.linspace(0, len(val) - 1, n).round().astype(int).tolist()
    return [recipe.collate([val[i] for i in idx[j : j + batch_size]]) for j in range(0, n, batch_size)]


class _Silent:
    """Stands in for the TensorBoard writer and the status reporter on ranks other than 0."""

    permanent_error = None

    def __getattr__(self, _name: str):
        return lambda *args, **kwargs: None


@torch.no_grad()
def _evaluate(model, recipe: Recipe, batches, device, autocast, ema: EMA | None, world: distributed.World) -> dict[str, float]:
    """Loss (per token when the recipe gives logits and targets, else per batch), perplexity and
    token accuracy over this rank's share of the fixed batches, summed over all ranks."""
    model.eval()
    total_loss = weight = correct = tokens = 0.0
    extra: dict[str, float] = {}  # the recipe's own metrics, summed over batches
    with ema.applied() if ema else contextlib.nullcontext():
        for batch in batches:
            with autocast():
                out = recipe.forward(model, _to(batch, device))
            for name, value in (out.metrics or {}).items():
                extra[name] = extra.get(name, 0.0) + float(value)
            if out.logits is not None and out.targets is not None:
                mask = out.targets != -100
                count = mask.sum().item()
                total_loss += out.loss.item() * count
                weight += count
                tokens += count
                correct += ((out.logits.argmax(-1) == out.targets) & mask).sum().item()
            else:
                total_loss += out.loss.item()
                weight += 1
    model.train()
    names = sorted(extra)
    total_loss, weight, correct, tokens, n_batches, *sums = distributed.sum_all(
        [total_loss, weight, correct, tokens, float(len(batches)), *(extra[n] for n in names)], world, device)
    loss = total_loss / max(weight, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "token_accuracy": correct / tokens if tokens else float("nan"),
            **{n: s / max(n_batches, 1) for n, s in zip(names, sums, strict=True)}}


_CORE_METRICS = ("loss", "perplexity", "token_accuracy")


def _tokens(batch: dict[str, Any]) -> int:
    for key in ("attention_mask",):
        if key in batch:
            return int(batch[key].sum())
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return int(first.numel()) if first is not None else 0


def _progress_bar(cfg: TrainConfig, step: int, max_steps: int, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=max_steps, initial=step, desc="train", unit="step", disable=not (cfg.logging.progress_bar and enabled),
                dynamic_ncols=True, mininterval=0.5)
