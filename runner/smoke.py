"""``runner submit JOB --smoke``: run the job's own recipe and data on this machine for a few steps
before paying for a GPU (the seeds' rule: a 100-step smoke run first). The trainer does the run
(``python -m trainer smoke``, a subprocess: the runner stays torch-free) and reports what it measured
(:class:`trainer.contract.SmokeResult`); this module adds the projection for the full job on the
chosen GPU, prints it, and turns the verdict into the exit code. A pipeline's stages are smoked in
order, each from the weights the previous stage's smoke ended with.

``--smoke-first`` launches the job as ``submit`` would once every smoke passed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer import contract

DEFAULT_STEPS = 100
DEFAULT_SECONDS = 60.0
#: Seconds of the budget kept for what the runner does around the trainer (start, result, printing).
_MARGIN_S = 2.0
#: Exit code when a smoke run fails (the loss diverged or did not fall): the command line's "not done".
EXIT_SMOKE_FAILED = 1


class SmokeError(ValueError):
    """Options that do not go together, or a stage that does not exist: exit 2, nothing run."""


@dataclass(frozen=True)
class SmokeOptions:
    smoke: bool = False
    smoke_first: bool = False
    steps: int | None = None
    seconds: float | None = None
    stage: str | None = None
    dry_run: bool = False
    json: bool = False

    @property
    def wanted(self) -> bool:
        return self.smoke or self.smoke_first or any(v is not None for v in (self.steps, self.seconds, self.stage))


def before_submit(job: Any, options: SmokeOptions) -> None:
    """What ``submit`` does with the smoke options: nothing when none is given; else the smoke run,
    then an exit with its verdict, except after ``--smoke-first`` when every stage passed (the caller
    goes on to launch). ``job`` is a validated :class:`runner.spec.Job`."""
    if not options.wanted:
        return
    from runner.show import fail

    try:
        stages = _check(job, options)
    except SmokeError as e:
        fail(str(e))
    try:
        report = smoke_job(job, stages, options.steps or DEFAULT_STEPS, options.seconds or DEFAULT_SECONDS,
                           stream=sys.stderr)
    except KeyboardInterrupt:
        print("\nSmoke run interrupted; nothing was launched.", file=sys.stderr)
        raise SystemExit(130) from None
    if options.json and not options.smoke_first:
        from runner.show import print_json

        print_json(report)
    else:
        print_report(report, stderr=options.smoke_first and options.json)
    if not report["passed"]:
        if options.smoke_first:
            print("Nothing was launched: the smoke run failed.", file=sys.stderr)
        raise SystemExit(EXIT_SMOKE_FAILED)
    if not options.smoke_first:
        raise SystemExit(0)


def _check(job: Any, options: SmokeOptions) -> list[str | None]:
    """The stages to smoke, in order (``[None]`` for a job without stages)."""
    if options.smoke and options.smoke_first:
        raise SmokeError("--smoke runs the job here and launches nothing; --smoke-first launches it after a smoke run "
                         "that passes: give one of them")
    if not (options.smoke or options.smoke_first):
        given = [flag for flag, v in (("--smoke-steps", options.steps), ("--smoke-seconds", options.seconds),
                                      ("--stage", options.stage)) if v is not None]
        raise SmokeError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} up a smoke run: add --smoke "
                         f"(or --smoke-first to launch after it)")
    if options.dry_run:
        raise SmokeError("--dry-run plans the job without running anything; a smoke run (--smoke) trains it here: "
                         "give one of them")
    if options.steps is not None and options.steps < 1:
        raise SmokeError(f"--smoke-steps must be 1 or more, got {options.steps}")
    if options.seconds is not None and options.seconds <= 0:
        raise SmokeError(f"--smoke-seconds must be more than 0, got {options.seconds:g}")
    stages = list(job.spec.stages or {})
    if options.stage is None:
        return stages or [None]
    if not stages:
        raise SmokeError(f"--stage {options.stage}: {job.path} has no stages: (it is one train: section); "
                         f"leave --stage out")
    if options.stage not in stages:
        raise SmokeError(f"--stage {options.stage!r}: {job.path} has the stages {', '.join(stages)}")
    return [options.stage]


def smoke_job(job: Any, stages: list[str | None], steps: int, seconds: float, stream=None) -> dict[str, Any]:
    """Smoke each of ``stages`` of ``job`` in order, each stage from the smoke weights of the stages
    it takes ``init_from`` (a stage whose smoke did not run here starts fresh; a URI is used as
    given). Stops at the first stage that fails. The report: ``job``, ``passed``, ``reason``, and
    per stage the trainer's result with ``stage``, ``projection`` and ``notes``."""
    from runner.datacheck import check_job_data
    from runner.secret_guard import forwarded
    from runner.show import fail

    values, missing = forwarded(job.spec.secrets, os.environ)
    if missing:
        fail(f"{job.path}: secrets: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} listed but not set "
             f"in this shell; the smoke run reads the job's data with them: export them and try again")
    # The data is there (the trainer reads the same locations); the backend and image checks are for a launch.
    problems = [d.problem for d in check_job_data(job, (), os.environ, strict=False) if d.problem]
    if problems:
        fail("\n".join(problems) + "\nNothing was run.")
    t_start = time.perf_counter() - _process_age()  # the budget counts from when the command started
    weights: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="spot-runner-smoke-") as tmp:
        for i, stage in enumerate(stages):
            budget = seconds - _MARGIN_S - (time.perf_counter() - t_start if i == 0 else 0.0)
            env, notes = _stage_env(job, stage, weights, values)
            out = Path(tmp) / (stage or "job")
            entry = _run_trainer(job, out, steps, max(1.0, budget), env, list(values.values()), stream)
            entry = {"stage": stage, **entry}
            entry["notes"] = notes + entry.get("notes", [])
            if entry.get("device"):
                entry["projection"] = project(job, stage, entry)
            results.append(entry)
            if not entry["passed"]:
                break
            if stage is not None and entry.get("weights"):
                kept = Path(tmp) / f"{stage}.{contract.SMOKE_WEIGHTS}"
                os.replace(entry["weights"], kept)
                weights[stage] = str(kept)
            entry["weights"] = None  # a temporary file: gone when the smoke ends
    failed = next((r for r in results if not r["passed"]), None)
    passed = failed is None
    if passed:
        reason = "; ".join(f"{r['stage']}: {r['reason']}" if r["stage"] else r["reason"] for r in results)
    else:
        reason = f"stage {failed['stage']}: {failed['reason']}" if failed["stage"] else failed["reason"]
        not_run = stages[len(results):]
        if not_run:
            reason += f" (not run: {', '.join(str(s) for s in not_run)})"
    return {"job": job.name, "passed": passed, "reason": reason, "stages": results}


def _process_age() -> float:
    """Seconds since this process started (Linux's /proc; 0 where that cannot be read)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _stage_env(job: Any, stage: str | None, weights: dict[str, str], secrets: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The trainer's environment for one stage's smoke: the job's settings and secrets, the stage,
    and its starting weights (the earlier stages' smoke weights, or the URIs it names)."""
    env = {**job.spec.env_text(), **secrets}
    notes: list[str] = []
    if stage is None:
        return env, notes
    env[contract.ENV_STAGE] = stage
    inputs: dict[str, str] = {}
    for name, ref in job.spec.stages[stage].inputs().items():
        if ref in job.spec.stages:
            if ref in weights:
                inputs[name] = weights[ref]
                notes.append(f"init_from {name}: the weights of stage {ref}'s smoke run")
            else:
                notes.append(f"init_from {name}: stage {ref} was not smoked here, so this stage starts from fresh weights")
        else:
            inputs[name] = ref
    if inputs:
        env[contract.ENV_INIT_FROM] = json.dumps(inputs)
    return env, notes


def _run_trainer(job: Any, out: Path, steps: int, seconds: float, extra_env: dict[str, str], secret_values: list[str],
                 stream) -> dict[str, Any]:
    """``python -m trainer smoke`` for one stage; its output goes to ``stream`` as it comes (the
    progress bar included). The result as a dict, or a failed one saying what the trainer said."""
    from runner.backends.local import trainer_environment
    from runner.secret_guard import redact

    command = [sys.executable, "-m", "trainer", "smoke", str(job.path), "--out", str(out), "--steps", str(steps),
               "--seconds", f"{seconds:.1f}", "--processes", str(job.spec.resources.gpu_count)]
    child = subprocess.Popen(command, env=trainer_environment(extra_env), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail = b""
    assert child.stdout is not None
    try:
        while chunk := os.read(child.stdout.fileno(), 65536):
            tail = (tail + chunk)[-8192:]
            if stream is not None:
                stream.write(redact(chunk.decode("utf-8", errors="replace"), secret_values))
                stream.flush()
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
        raise
    code = child.wait()
    try:
        return asdict(contract.SmokeResult.from_json((out / contract.SMOKE_RESULT).read_bytes()))
    except FileNotFoundError:
        lines = [ln.strip() for ln in redact(tail.decode("utf-8", errors="replace"), secret_values).replace("\r", "\n")
                 .splitlines() if ln.strip()]
        said = lines[-1] if lines else "no output"
        return {"passed": False, "reason": f"the smoke run could not run the job (trainer exit {code}, "
                                           f"{contract.EXIT_MEANING.get(code, 'failed')}): {said}", "notes": []}


def project(job: Any, stage: str | None, result: dict[str, Any]) -> dict[str, Any]:
    """The full job on the chosen GPU, from the seconds per step measured here: hours and dollars, the
    speed ratio assumed (GPU over here) and where it comes from."""
    from runner.catalog import load_catalog

    catalog = load_catalog()
    gpu = job.gpus[0] if job.gpus else catalog.resolve(catalog.reference_gpu)
    chosen = f"{gpu.alias}" + ("" if job.gpus else " (the job names no GPU: the catalog's reference; --gpu picks one)")
    ratio, basis = speed_ratio(result, gpu)
    count, spot = job.spec.resources.gpu_count, job.spec.resources.spot
    per_hour = gpu.price(spot) * count
    seconds_here = result.get("seconds_per_step")
    # A batch halved to fit here takes about half as long a step: scale back to the job's batch.
    scale = result["job_batch_size"] / max(1, result["batch_size"])
    steps = result.get("job_steps")
    out: dict[str, Any] = {"gpu": gpu.alias, "gpu_count": count, "capacity": "spot" if spot else "on-demand",
                           "rate_per_hour": round(per_hour, 4), "speed_ratio": ratio, "speed_ratio_basis": basis,
                           "gpu_chosen": chosen, "steps": steps, "seconds_per_step": None, "hours": None, "usd": None,
                           "hours_here": None}
    train = job.spec.stages[stage].train if stage else job.train
    from runner.memory import estimate

    est = estimate(train, job.path, count, on_gpu=True)
    if est is not None:
        out["memory_bytes"], out["memory_fits"] = est.total_bytes, est.total_bytes <= gpu.vram_gb * 2**30
        out["memory"] = f"about {est.breakdown()}; {gpu.alias} has {gpu.vram_gb} GiB"
    if seconds_here is None or not steps:
        return out
    gpu_step = seconds_here * scale / ratio
    out.update(seconds_per_step=gpu_step, hours=steps * gpu_step / 3600, usd=steps * gpu_step / 3600 * per_hour,
               hours_here=steps * seconds_here * scale / 3600)
    return out


def speed_ratio(result: dict[str, Any], gpu: Any) -> tuple[float, str]:
    """How many times faster ``gpu`` trains this job than the device the smoke ran on, and why."""
    from runner.catalog import load_catalog

    catalog = load_catalog()
    source = "runner/gpus.yaml"
    if result["device"] == "cuda":
        here = catalog.resolve(result["device_name"])
        if here is None:
            return gpu.relative_speed, (f"{result['device_name']} (this GPU) is not in the catalog: taken as fast as "
                                        f"the reference {catalog.reference_gpu}; {gpu.alias}'s relative_speed is "
                                        f"{gpu.relative_speed:g} ({source})")
        return gpu.relative_speed / here.relative_speed, (
            f"catalog relative_speed: {gpu.alias} {gpu.relative_speed:g} over {here.alias} (this GPU) "
            f"{here.relative_speed:g} ({source})")
    recipe = result.get("recipe", "")
    on_gpu, on_cpu = catalog.tokens_per_second.get(recipe), catalog.local_cpu_tokens_per_second.get(recipe)
    if on_gpu and on_cpu:
        base = on_gpu / on_cpu
        why = (f"catalog throughput for {recipe}: {on_gpu:,.0f} tokens/s on {catalog.reference_gpu} against "
               f"{on_cpu:,.0f} on a CPU = {base:.3g}x")
    else:
        base = catalog.reference_gpu_vs_cpu
        why = f"no catalog CPU figure for {recipe or 'this recipe'}: {catalog.reference_gpu} taken as {base:g}x a CPU, rough"
    return base * gpu.relative_speed, f"{why}, x {gpu.alias}'s relative_speed {gpu.relative_speed:g} ({source})"


def print_report(report: dict[str, Any], stderr: bool = False) -> None:
    from rich.markup import escape

    from runner.show import new_console
    from runner.view import duration, kv_table

    console = new_console(stderr=stderr)
    for r in report["stages"]:
        title = f"Smoke run of {report['job']}" + (f", stage {r['stage']}" if r["stage"] else "")
        if "steps" not in r:  # the trainer could not run it
            console.print(f"[bold]{escape(title)}[/]: [red]{escape(r['reason'])}[/]")
            continue
        batch = f"batch {r['batch_size']}" + (" as the job says" if r["batch_size"] == r["job_batch_size"]
                                              else f" (the job says {r['job_batch_size']})")
        rows = [("ran", f"{r['steps']} steps on {r['device']} ({escape(r['device_name'])}, {r['threads']} threads), "
                        f"{batch} x accumulation {r['grad_accum']}, {r['optimizer']}; {escape(r['data'])}"),
                ("loss", _loss_text(r)),
                ("NaN/Inf", "none" if not r["nonfinite_steps"] else f"[red]at steps {_steps(r['nonfinite_steps'])}[/]"),
                ("gradient norm", _grad_text(r)),
                ("peak memory", f"RSS {_gb(r['peak_rss_bytes'])}" + (f", CUDA {_gb(r['cuda_peak_bytes'])}"
                                                                      if r.get("cuda_peak_bytes") is not None else "")),
                ("speed", f"{r['seconds_per_step']:.3g} s/step here (first step {r['first_step_seconds']:.3g} s, "
                          f"setting up {r['setup_seconds']:.3g} s)" if r.get("seconds_per_step") else "not measured")]
        p = r.get("projection") or {}
        if p.get("hours") is not None:
            rows.append(("projection", f"{p['steps']:,} steps on {p['gpu_count']} x {escape(p['gpu_chosen'])}, "
                                       f"{p['capacity']} ${p['rate_per_hour']:.2f}/h: {duration(p['hours'] * 3600)}, "
                                       f"${p['usd']:.2f} ({duration(p['hours_here'] * 3600)} here)"))
            rows.append(("assumed", f"{p['gpu']} is {p['speed_ratio']:.3g}x this machine: {escape(p['speed_ratio_basis'])}"))
        if p.get("memory"):
            fits = "fits" if p["memory_fits"] else "[red]does not fit[/]"
            rows.append(("GPU memory", f"{fits}: {escape(p['memory'])}"))
        for note in r.get("notes", []):
            rows.append(("note", escape(note)))
        console.print(f"[bold]{escape(title)}[/]")
        console.print(kv_table(rows))
    verdict = "[green]passed[/]" if report["passed"] else "[red]FAILED[/]"
    console.print(f"Smoke {verdict}: {escape(report['reason'])}")


def _loss_text(r: dict[str, Any]) -> str:
    if r.get("loss_start") is None:
        return "no finite loss"
    change = (r["loss_end"] - r["loss_start"]) / abs(r["loss_start"]) if r["loss_start"] else 0.0
    verdict = "[green]fell[/]" if r["loss_fell"] else "[red]did not fall[/]"
    return f"{r['loss_start']:.4g} → {r['loss_end']:.4g} ({change:+.0%}), {verdict}"


def _grad_text(r: dict[str, Any]) -> str:
    if r.get("max_grad_norm") is None:
        return "no finite gradient"
    limit = r.get("stop_grad_norm")
    guard = f"; the guard stops at {limit:g}" if limit is not None else "; no guard (stop_grad_norm: null)"
    return f"largest {r['max_grad_norm']:.4g} at step {r['max_grad_norm_step']}{guard}"


def _steps(steps: list[int]) -> str:
    return ", ".join(map(str, steps[:10])) + (f" and {len(steps) - 10} more" if len(steps) > 10 else "")


def _gb(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
