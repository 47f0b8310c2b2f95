"""After the last step, before the run says ``done``: the finish (``train.finish`` in the job).

1. ``final/``: the weights with the best validation loss (``checkpoints/best.pt``, with EMA on the
   averaged weights it was evaluated with), or the last step's with ``final: last``.
2. ``samples/``: what the finished model writes (the recipe's ``sample`` hook: text, MIDI, ...).
3. ``final/merged``: a LoRA adapter merged into its base, a folder ``transformers`` loads alone.
4. ``report.json`` and ``report.md``: validation loss, perplexity and token accuracy of the best and
   the last weights (and of the base model, for LoRA), steps, hours, dollars, preemptions survived.

A relaunch during the finish (the machine was lost, or SIGTERM) resumes from the last checkpoint,
which is the end of training, and only finishes: each part is published and then noted in
``finish.json``, and a part noted there for the same step is not done again. Everything a part
writes is the same whenever it is written (evaluations on fixed batches, seeded samples).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer import contract
from trainer.checkpoint import evaluated_weights, trainable_state
from trainer.config import TrainConfig
from trainer.jobfile import load_yaml
from trainer.recipes import Recipe
from trainer.signals import StopRequest
from trainer.storage import Storage

log = logging.getLogger("trainer")

Weights = dict[str, torch.Tensor]


@dataclass
class RunEnd:
    """What the loop hands over when training is over."""

    cfg: TrainConfig
    job_path: Path
    storage: Storage
    recipe: Recipe
    model: nn.Module
    #: The EMA's averaged weights by parameter name, when the job keeps one.
    ema_shadow: Weights | None
    step: int
    max_steps: int
    progress: Any  # trainer.loop.Progress
    #: The loop's evaluation on its fixed validation batches (loss, perplexity, token_accuracy, ...);
    #: None when the job has no validation data.
    evaluate: Callable[[nn.Module], dict[str, float]] | None
    #: ``checkpoints/best.pt`` of this run, verified; None when there is none.
    load_best: Callable[[], dict[str, Any] | None]
    stop: StopRequest
    #: When this trainer process started (unix seconds): its share of the hours and dollars.
    started: float


def finish(run: RunEnd) -> bool:
    """Do the finish; False when a stop was requested before it was complete (relaunch to complete it)."""
    settings, storage, model = run.cfg.finish, run.storage, run.model
    done_parts = _done_parts(storage, run.step, settings.final)
    log.info("finishing at step %d: final = %s weights%s", run.step, settings.final,
             f" ({', '.join(done_parts)} done already)" if done_parts else "")
    last = _last_weights(model, run.ema_shadow)
    best_payload = run.load_best()
    best = evaluated_weights(best_payload) if best_payload is not None else None
    best_step = int(best_payload["step"]) if best_payload is not None else None
    if settings.final == "best" and best is None:
        why = "no validation data" if run.evaluate is None else f"{contract.BEST} is missing or does not verify"
        log.warning("final: best, but the run has no best weights (%s): final/ holds the last weights", why)

    metrics: dict[str, dict[str, float]] = {}
    if run.evaluate is not None:
        metrics["last"] = _evaluate(run, last)
        if best is not None:  # the same weights as the last when the last step was the best
            metrics["best"] = metrics["last"] if best_step == run.step else _evaluate(run, best)
    use_best = settings.final == "best" and best is not None
    chosen, final_step = (best, best_step) if use_best else (last, run.step)
    _load(model, chosen)
    if run.evaluate is not None and run.recipe.base_model is not None:
        with run.recipe.base_model(model):
            metrics["base"] = run.evaluate(model)
    model.eval()

    record = {"step": run.step, "final": settings.final, "parts": {}}
    published: dict[str, list[str]] = {}

    def part(name: str, prefix: str, write: Callable[[Path], Any]) -> bool:
        """Write one part into a staging folder and publish it under ``prefix``; False on a stop request."""
        if run.stop.requested:
            return False
        if name in done_parts:
            published[name] = done_parts[name]
        else:
            published[name] = _publish(storage, prefix, write)
        record["parts"] = published
        storage.put_bytes(contract.FINISH_RECORD, json.dumps(record, indent=1).encode())
        return True

    with torch.no_grad():
        if not part("final", contract.FINAL_DIR, lambda folder: run.recipe.save_final(model, folder)):
            return False
        if settings.samples.count and run.recipe.sample is not None:
            log.info("writing %d sample(s) of the finished model into %s/%s", settings.samples.count, storage.uri,
                     contract.SAMPLES_DIR)
            with _sampling_threads(model):
                if not part("samples", contract.SAMPLES_DIR,
                            lambda folder: run.recipe.sample(model, folder, settings.samples)):
                    return False
        if settings.merge and run.recipe.merge is not None:  # last: merging may change the model in place
            log.info("merging the adapter into the base model: %s/%s", storage.uri, contract.MERGED_DIR)
            if not part("merged", contract.MERGED_DIR, lambda folder: run.recipe.merge(model, folder)):
                return False
    if run.stop.requested:
        return False
    if settings.report:
        report = build_report(run, metrics, best_step, final_step, use_best, published)
        storage.put_bytes(contract.REPORT_JSON, json.dumps(report, indent=1).encode())
        storage.put_bytes(contract.REPORT_MD, render_markdown(report, _sample_texts(storage, published)).encode())
        log.info("report: %s/%s", storage.uri, contract.REPORT_MD)
    return True


#: Below this many parameters a model samples on one CPU thread (see :func:`_sampling_threads`).
SMALL_MODEL_PARAMETERS = 20_000_000


@contextlib.contextmanager
def _sampling_threads(model: nn.Module):
    """One CPU thread while a small model samples. Drawing a token is one small forward pass, where a
    second thread costs more in hand-offs than it computes: the quickstart's 600 tokens took 34 s on
    two threads of a busy two-core machine, 1 s on one."""
    small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    threads = torch.get_num_threads()
    if small and on_cpu:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- weights --------------------------------------------------------------------------------------
def _last_weights(model: nn.Module, ema_shadow: Weights | None) -> Weights:
    """The last step's weights as the loop evaluated them: with EMA on, the averaged ones."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in trainable_state(model).items()}
    state.update({k: v.detach().to("cpu", copy=True) for k, v in (ema_shadow or {}).items() if k in state})
    return state


def _load(model: nn.Module, weights: Weights) -> None:
    """Load ``weights`` under each tensor's first name only. A tied weight (a GPT's lm_head is its
    token embedding) is in a state dict under two names, but the EMA averages it under the first:
    loading the second too would put the live values back over the averaged ones."""
    first_names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    # Frozen weights are not in a checkpoint (they come from the base model): not strict.
    model.load_state_dict({k: v for k, v in weights.items() if k in first_names}, strict=False)


def _evaluate(run: RunEnd, weights: Weights) -> dict[str, float]:
    _load(run.model, weights)
    return run.evaluate(run.model)


# --- publishing -----------------------------------------------------------------------------------
def _publish(storage: Storage, prefix: str, write: Callable[[Path], Any]) -> list[str]:
    """Let ``write`` fill an empty staging folder, then publish each of its files under ``prefix``."""
    staging = storage.work_dir / f".finish-staging-{prefix.replace('/', '-')}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write(staging)
        keys = []
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(staging).as_posix()}"
            storage.put_file(path, key, move=True)
            keys.append(key)
        return keys
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _done_parts(storage: Storage, step: int, final: str) -> dict[str, list[str]]:
    """The parts an earlier start of this finish published (for the same step and choice of final),
    whose files are all still there."""
    try:
        raw = storage.get_bytes(contract.FINISH_RECORD)
        record = json.loads(raw) if raw else None
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("step") != step or record.get("final") != final:
        return {}
    parts = record.get("parts") if isinstance(record.get("parts"), dict) else {}
    present: dict[str, list[str]] = {}
    for name, keys in parts.items():
        prefix = {"final": contract.FINAL_DIR, "samples": contract.SAMPLES_DIR, "merged": contract.MERGED_DIR}.get(name)
        if prefix is not None and isinstance(keys, list) and set(keys) <= set(storage.list(prefix + "/")):
            present[name] = keys
    return present


# --- the report -----------------------------------------------------------------------------------
def _number(name: str) -> float | None:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def build_report(run: RunEnd, metrics: dict[str, dict[str, float]], best_step: int | None, final_step: int,
                 use_best: bool, published: dict[str, list[str]]) -> dict[str, Any]:
    """``report.json``: what the run achieved, what it took and what the finish wrote."""
    progress = run.progress
    now = time.time()
    this_start_h = max(0.0, now - run.started) / 3600.0
    billed_usd, billed_h = _number(contract.ENV_BILLED_USD), _number(contract.ENV_BILLED_HOURS)
    rate, preemptions = _number(contract.ENV_USD_PER_HOUR), _number(contract.ENV_PREEMPTIONS)
    try:
        name = load_yaml(run.job_path).data.get("name")
    except Exception:  # the report names the job when it can; the file was read at start already
        name = None
    evaluated = {k: {"step": best_step if k == "best" else run.step if k == "last" else None, **_finite(v)}
                 for k, v in metrics.items()}
    return {
        "job": name or Path(run.job_path).stem,
        "stage": os.environ.get(contract.ENV_STAGE) or None,
        "attempt": os.environ.get(contract.ENV_ATTEMPT_ID) or None,
        "run_uri": run.storage.uri,
        "recipe": run.cfg.model.recipe,
        "final": {"chosen": "best" if use_best else "last", "asked": run.cfg.finish.final, "step": final_step},
        "steps": run.step,
        "max_steps": run.max_steps,
        "early_stopped": bool(getattr(progress, "early_stopped", False)),
        "validation": evaluated,  # best / last / base: each {step, loss, perplexity, token_accuracy, ...}
        "train_hours": round(float(getattr(progress, "train_seconds", 0.0)) / 3600.0, 6),
        # What the runner recorded before this attempt, plus this attempt so far at its rate; None
        # when the trainer was started by hand (then `runner cost` has nothing to say either).
        "billed_hours": round(billed_h + this_start_h, 6) if billed_h is not None else None,
        "usd": round(billed_usd + rate * this_start_h, 4) if billed_usd is not None and rate is not None else None,
        "usd_estimated": True,
        "preemptions": int(preemptions) if preemptions is not None else None,
        "resumes": int(getattr(progress, "resumes", 0)),
        "files": {"final": published.get("final", []), "samples": published.get("samples", []),
                  "merged": published.get("merged", [])},
        "finished": now,
    }


def _finite(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (round(v, 6) if math.isfinite(v) else None) for k, v in values.items()}


def _sample_texts(storage: Storage, published: dict[str, list[str]], limit: int = 600) -> dict[str, str]:
    """The text samples (for the report to show), each cut to ``limit`` characters."""
    texts = {}
    for key in published.get("samples", []):
        if key.endswith(".txt"):
            raw = storage.get_bytes(key) or b""
            text = raw.decode("utf-8", errors="replace")
            texts[key] = text[:limit] + ("…" if len(text) > limit else "")
    return texts


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def render_markdown(report: dict[str, Any], sample_texts: dict[str, str] | None = None) -> str:
    """``report.md``: the report for people."""
    title = report["job"] + (f" / {report['stage']}" if report.get("stage") else "")
    final = report["final"]
    lines = [f"# {title}: training report", ""]
    validation = report["validation"]
    why = "the best validation loss" if final["chosen"] == "best" else "the last step"
    if final["asked"] == "best" and final["chosen"] == "last":
        why += f" ({contract.BEST} was missing or did not verify)" if validation else " (no validation data, so no best)"
    lines += [f"`final/` holds the weights of step {final['step']} ({why}). Recipe `{report['recipe']}`, "
              f"{report['steps']} of {report['max_steps']} steps" + (" (stopped early)" if report["early_stopped"] else "")
              + ".", ""]
    if validation:
        names = {"best": "best", "last": "last step", "base": "base model (no adapter)"}
        extra = sorted({k for v in validation.values() for k in v} - {"step", "loss", "perplexity", "token_accuracy"})
        lines += ["| weights | step | val loss | perplexity | token accuracy |" + "".join(f" {k} |" for k in extra),
                  "|---|---|---|---|---|" + "---|" * len(extra)]
        for key in ("best", "last", "base"):
            if key in validation:
                v = validation[key]
                step = "–" if v.get("step") is None else str(v["step"])
                lines.append(f"| {names[key]} | {step} | {_fmt(v.get('loss'))} | {_fmt(v.get('perplexity'))} | "
                             f"{_fmt(v.get('token_accuracy'))} |" + "".join(f" {_fmt(v.get(k))} |" for k in extra))
        lines.append("")
    else:
        lines += ["No validation data: nothing was evaluated.", ""]
    cost = [f"{report['train_hours']:.3f} h of training"]
    if report["billed_hours"] is not None:
        cost.append(f"{report['billed_hours']:.3f} h billed")
    if report["usd"] is not None:
        cost.append(f"${report['usd']:.2f} (estimated at launch rates; `runner cost` has the billed figure)")
    if report["preemptions"] is not None:
        cost.append(f"{report['preemptions']} preemption(s) survived")
    else:
        cost.append(f"{report['resumes']} resume(s) from a checkpoint")
    lines += ["Cost: " + ", ".join(cost) + ".", ""]
    files = report["files"]
    if files["merged"]:
        lines += [f"Merged model (loads with transformers alone): `{contract.MERGED_DIR}/`.", ""]
    if files["samples"]:
        lines += ["## Samples", ""]
        texts = sample_texts or {}
        for key in files["samples"]:
            if key in texts:
                lines += [f"`{key}`:", "", "```", texts[key].replace("```", "'''"), "```", ""]
            elif not key.endswith(".json"):
                lines.append(f"- `{key}`")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
