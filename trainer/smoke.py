"""``python -m trainer smoke JOB --out DIR``: the seeds' rule "test every change with a 100-step
smoke run first", made a command. The job's own recipe, data, batch, precision, optimizer and
guards run here (CPU, or this machine's GPU) for a few steps, and :class:`trainer.contract.SmokeResult`
says whether the loss fell, whether anything went non-finite, the largest gradient norm, the peak
memory and the seconds per step. ``runner submit JOB --smoke`` runs this and adds the projection
for the full job on the chosen GPU.

What differs from a real run, on purpose: no checkpoints, no evaluation, no TensorBoard; a warmup
longer than a third of the smoke is compressed so the smoke reaches the job's peak learning rate
(where a rate that is too high shows); a batch that does not fit in memory here is halved and said
so. The weights it ends with are written for the next pipeline stage's smoke to start from.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainer import contract, distributed
from trainer.config import TrainConfig
from trainer.data import EpochSampler
from trainer.loader import Batches
from trainer.loop import (
    CHECKPOINT_FORMAT,
    EMA,
    JobSetupError,
    _to,
    _tokens,
    lr_at,
    make_optimizer,
    per_rank_batch,
    pick_device,
    seed_everything,
    trainable_state,
)
from trainer.step import Stepper

log = logging.getLogger("trainer")


#: Steps taken whatever the time budget.
MIN_STEPS = 3
#: Fewer steps than this, cut short by the time budget, cannot tell a loss that does not fall from noise.
MIN_JUDGED_STEPS = 10


def run_smoke(job: str, out: str | Path, steps: int = 100, seconds: float = 60.0, processes: int = 1,
              started: float | None = None) -> int:
    """Smoke-test ``job`` (its ``train:`` section, or ``RUNNER_STAGE``'s), write the result into
    ``out``; the exit code is the verdict (0 passed, EXIT_DIVERGED, EXIT_GRAD_NORM, EXIT_FAILED when
    the loss did not fall; EXIT_BAD_CONFIG when the job cannot be set up). ``seconds`` counts from
    ``started`` (``time.perf_counter()``; default now): setting up the data and model is part of it."""
    from trainer.config import load_train_config
    from trainer.jobfile import JobFileError

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        cfg, _ = load_train_config(job)
    except JobFileError as e:
        log.error("%s", e)
        return contract.EXIT_BAD_CONFIG
    try:
        with tempfile.TemporaryDirectory(prefix="smoke-data-") as data_dir:  # the slice lives while the smoke runs
            result = _smoke(cfg, job, out, max(1, steps), max(0.1, seconds), max(1, processes),
                            time.perf_counter() if started is None else started, Path(data_dir))
    except JobSetupError as e:
        log.error("the job cannot be set up: %s", e)
        return contract.EXIT_BAD_CONFIG
    (out / contract.SMOKE_RESULT).write_bytes(result.to_json())
    if result.passed:
        return contract.EXIT_DONE
    return {"nonfinite": contract.EXIT_DIVERGED, "grad_norm": contract.EXIT_GRAD_NORM}.get(
        result.stopped_by, contract.EXIT_DIVERGED if "diverged" in result.reason else contract.EXIT_FAILED)


def _setup(cfg: TrainConfig, job: str, device: torch.device):
    from trainer.init_weights import fetch
    from trainer.recipes import build_recipe

    try:
        with tempfile.TemporaryDirectory(prefix="smoke-init-") as tmp:
            init = {name: fetch(name, uri, job, Path(tmp), CHECKPOINT_FORMAT).state
                    for name, uri in sorted(cfg.init_from.items())}
        return build_recipe(cfg, job, init)
    except (FileNotFoundError, IsADirectoryError, ImportError, ValueError, TypeError) as e:
        raise JobSetupError(str(e)) from e


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower() \
        or "can't allocate memory" in str(e).lower()


def _smoke(cfg: TrainConfig, job: str, out: Path, steps: int, seconds: float, processes: int,
           started: float, data_dir: Path) -> contract.SmokeResult:
    from trainer.smoke_data import slice_data

    t_setup = time.perf_counter()
    data_note, fraction = "no data section (the recipe makes its own)", 1.0
    if cfg.data is not None:
        try:
            sliced = slice_data(cfg.data, job, data_dir)
        except (FileNotFoundError, ValueError) as e:
            raise JobSetupError(str(e)) from e
        cfg = cfg.model_copy(update={"data": sliced.data})
        data_note, fraction = sliced.description, sliced.fraction
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads or min(torch.get_num_threads(), 8))
    device = pick_device(cfg.device)
    try:
        job_batch = per_rank_batch(cfg, distributed.World(world_size=processes))
    except ValueError as e:
        raise JobSetupError(str(e)) from e
    recipe = _setup(cfg, job, device)
    model = recipe.model.to(device)
    notes: list[str] = []
    optimizer_name = cfg.optimizer.name
    if optimizer_name == "adamw8bit" and device.type != "cuda":
        notes.append("optimizer adamw8bit: bitsandbytes needs CUDA, which this machine lacks, so the smoke used AdamW "
                     "(32-bit state); on a GPU the job uses 8-bit Adam")
        optimizer_name = "adamw (adamw8bit asked; no CUDA here)"
    with _quiet("optimizer adamw8bit needs CUDA"):  # said once, in the notes
        optimizer = make_optimizer(cfg, model, device, recipe.lr_scale)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    ema = EMA(model, cfg.ema.decay) if cfg.ema else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    trainable = [p for p in model.parameters() if p.requires_grad]
    stepper = Stepper(optimizer, scaler, ema, trainable, cfg.grad_clip, cfg.guard)
    n = len(recipe.train_set)
    n_whole = round(n / fraction)  # the examples of the whole data, for a length in epochs
    job_steps = cfg.max_steps or (math.ceil(cfg.epochs * ((n_whole // processes) // job_batch) / cfg.grad_accum)
                                  if n_whole // processes >= job_batch else None)
    if cfg.max_steps is None and fraction < 1:
        notes.append(f"the job's {cfg.epochs:g} epochs are counted over the whole data: about {n_whole:,} examples "
                     f"from the {n:,} of the slice ({fraction:.1%} of its bytes)")
    steps = min(steps, job_steps) if job_steps else steps
    stopped_by = "job_length" if job_steps is not None and steps == job_steps else "steps"
    warmup = cfg.schedule.warmup_steps
    if warmup > steps // 3:
        compressed = max(1, steps // 5)
        notes.append(f"warmup compressed from {warmup} to {compressed} steps so the smoke reaches the job's peak "
                     f"learning rate ({cfg.optimizer.lr:g})")
        warmup = compressed
    sched_cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"warmup_steps": warmup})})
    limit, spikes = cfg.guard.stop_grad_norm, []

    batch = min(job_batch, n) if n else job_batch
    if batch < job_batch:
        notes.append(f"the data here holds {n} training examples: batch {batch} instead of {job_batch}")
    losses: list[float | None] = []
    times: list[float] = []
    nonfinite: list[int] = []
    grad_norms: list[tuple[float, int]] = []
    tokens_per_step: list[int] = []
    in_a_row = 0
    setup_s = time.perf_counter() - t_setup
    batches = Batches(recipe, _sampler(n, batch, cfg.seed), cfg.loader, device)  # the job's loader workers too
    log.info("smoke: %s for up to %d steps or %.0f s on %s, batch %d x accumulation %d (%s parameters, %s trainable)",
             cfg.model.recipe, steps, seconds, device, batch, cfg.grad_accum, f"{sum(p.numel() for p in model.parameters()):,}",
             f"{sum(p.numel() for p in trainable):,}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = _progress_bar(cfg, steps)
    model.train()
    step = 0
    while step < steps:
        # Stop before a step that would end past the budget (one step can take seconds on a busy CPU).
        if step >= MIN_STEPS and time.perf_counter() - started + statistics.median(times[-5:]) >= seconds:
            stopped_by = "time"
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, sched_cfg, job_steps or steps) * group.get("lr_scale", 1.0)
        t0 = time.perf_counter()
        try:
            train_loss, tokens = _forward_backward(recipe, model, batches, cfg.grad_accum, device, autocast, scaler)
        except RuntimeError as e:
            if not (_is_oom(e) and step == 0 and batch > 1):
                raise
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            notes.append(f"batch {batch} did not fit in this machine's memory: halved to {batch // 2} "
                         f"(the projection scales the time back to the job's batch)")
            batch //= 2
            batches.close()
            batches = Batches(recipe, _sampler(n, batch, cfg.seed), cfg.loader, device)
            continue
        applied = stepper.apply(train_loss)  # the same step, clipping and guards as a real run
        grad_norm = applied.grad_norm
        if applied.finite:
            grad_norms.append((grad_norm, step + 1))
            if limit is not None and grad_norm > limit:
                spikes.append(step + 1)
        if applied.refused:
            losses.append(train_loss)
            stopped_by = "grad_norm"
            break
        if applied.finite:
            in_a_row = 0
        elif not applied.overflow:
            nonfinite.append(step + 1)
            in_a_row += 1
        times.append(time.perf_counter() - t0)
        losses.append(train_loss if math.isfinite(train_loss) else None)
        tokens_per_step.append(tokens)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.4f}", refresh=False)
        if not cfg.logging.progress_bar and (step % cfg.logging.every_steps == 0 or step == steps):
            log.info("smoke step %d/%d loss %.4f grad norm %.3f %.3f s", step, steps, train_loss, grad_norm, times[-1])
        if in_a_row >= cfg.guard.max_nonfinite_in_a_row:
            stopped_by = "nonfinite"
            break
    bar.close()
    batches.close()

    result = contract.SmokeResult(
        passed=False, reason="", recipe=cfg.model.recipe, device=device.type, device_name=_device_name(device),
        threads=torch.get_num_threads(), steps=step, steps_asked=steps, seconds_asked=seconds, stopped_by=stopped_by,
        batch_size=batch, job_batch_size=job_batch, grad_accum=cfg.grad_accum,
        tokens_per_step=statistics.fmean(tokens_per_step) if tokens_per_step else 0.0, job_steps=job_steps,
        params=sum(p.numel() for p in model.parameters()), trainable_params=sum(p.numel() for p in trainable),
        losses=[round(v, 6) if v is not None else None for v in losses], nonfinite_steps=nonfinite,
        stop_grad_norm=limit, peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        cuda_peak_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        seconds_per_step=statistics.median(times[1:] or times) if times else None,
        first_step_seconds=times[0] if times else None, setup_seconds=round(setup_s, 3), optimizer=optimizer_name,
        warmup_steps=warmup, data=f"{data_note}; {n:,} training examples", notes=notes)
    if grad_norms:
        result.max_grad_norm, result.max_grad_norm_step = max(grad_norms)
    if spikes and stopped_by != "grad_norm":
        notes.append(f"gradient norm above guard.stop_grad_norm {limit:g} at step(s) {', '.join(map(str, spikes[:10]))}: "
                     f"clipped and warned about; the run stops after {cfg.guard.stop_grad_norm_in_a_row} such steps in a row")
    _judge(result)
    if step and not nonfinite:
        torch.save({"format": CHECKPOINT_FORMAT, "step": step, "model": trainable_state(model)}, out / contract.SMOKE_WEIGHTS)
        result.weights = str(out / contract.SMOKE_WEIGHTS)
    log.info("smoke %s: %s", "passed" if result.passed else "FAILED", result.reason)
    return result


def _judge(r: contract.SmokeResult) -> None:
    """The verdict: non-finite values or a tripped gradient guard first, then whether the loss fell."""
    finite = [v for v in r.losses if v is not None]
    k = max(1, min(10, len(finite) // 5))
    if len(finite) >= 2:
        r.loss_start, r.loss_end = statistics.fmean(finite[:k]), statistics.fmean(finite[-k:])
        r.loss_fell = r.loss_end < r.loss_start * (1 - contract.SMOKE_MIN_DROP)
    elif finite:
        r.loss_start = r.loss_end = finite[0]
    if r.nonfinite_steps:
        r.reason = (f"the loss diverged: non-finite loss or gradient (NaN/Inf) at step {r.nonfinite_steps[0]}"
                    + (f" and {len(r.nonfinite_steps) - 1} more" if len(r.nonfinite_steps) > 1 else "")
                    + "; lower the learning rate, use bf16 instead of fp16, or check the data")
    elif r.stopped_by == "grad_norm":
        r.reason = (f"the loss diverged: the gradient norm stayed above guard.stop_grad_norm {r.stop_grad_norm:g} "
                    f"(up to {r.max_grad_norm:.4g}, at step {r.max_grad_norm_step}) and the real run would stop at "
                    f"step {r.steps + 1}; lower the learning rate, check the data, or raise the limit")
    elif r.steps < 2:
        r.reason = f"only {r.steps} step was taken: too few to tell whether the loss falls"
    elif r.loss_fell:
        r.passed = True
        r.reason = (f"the loss fell from {r.loss_start:.4g} to {r.loss_end:.4g} in {r.steps} steps, "
                    f"with no NaN/Inf")
    elif r.stopped_by == "time" and r.steps < MIN_JUDGED_STEPS:
        r.reason = (f"only {r.steps} steps fitted in {r.seconds_asked:g} s, too few to tell whether the loss falls "
                    f"({r.loss_start:.4g} → {r.loss_end:.4g}); give the smoke more time (--smoke-seconds)")
    elif r.loss_end > r.loss_start * (1 + contract.SMOKE_DIVERGED_RISE):
        r.reason = (f"the loss diverged: it rose from {r.loss_start:.4g} to {r.loss_end:.4g} in {r.steps} steps; "
                    f"lower the learning rate (optimizer.lr is too high for this model) or check the data")
    else:
        r.reason = (f"the loss did not fall: {r.loss_start:.4g} at the start, {r.loss_end:.4g} after {r.steps} steps "
                    f"(it must fall by {contract.SMOKE_MIN_DROP:.0%}); check the learning rate, which weights train, "
                    f"and the data")


def _forward_backward(recipe, model, batches: Batches, accum: int, device: torch.device, autocast,
                      scaler) -> tuple[float, int]:
    """One optimizer step's forward and backward passes: (mean loss, tokens seen)."""
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    for _ in range(accum):
        batch = batches.next()
        tokens += _tokens(batch)
        with autocast():
            out = recipe.forward(model, _to(batch, device))
            loss = out.loss / accum
        (scaler.scale(loss) if scaler else loss).backward()
        loss_sum += out.loss.detach().float()
    return (loss_sum / accum).item(), tokens


def _sampler(n: int, batch: int, seed: int) -> EpochSampler:
    try:
        return EpochSampler(n, batch, seed)
    except ValueError as e:
        raise JobSetupError(str(e)) from e


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def _progress_bar(cfg: TrainConfig, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="smoke", unit="step", disable=not cfg.logging.progress_bar, dynamic_ncols=True,
                mininterval=0.5)


@contextlib.contextmanager
def _quiet(prefix: str):
    """Drop the trainer log lines that start with ``prefix`` (said another way by the caller)."""

    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith(prefix)

    drop = Drop()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)

