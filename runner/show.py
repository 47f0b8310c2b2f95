"""What the command line shows: output primitives (errors, JSON, the console), the job and plan
views, cost reports and cards, simulations, and the live view of a followed job. :mod:`runner.cli`
only parses a command line and calls these.

Imports stay inside the functions: ``--help`` and ``status`` must start in a blink."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, NoReturn

EXIT_OK, EXIT_JOB_NOT_DONE, EXIT_BAD_INPUT, EXIT_DETACHED = 0, 1, 2, 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def act(do, errors: type[Exception] = ValueError):
    """Run an action; its refusal (:class:`runner.actions.ActionError`, or ``errors``) becomes an exit with its message."""
    from runner.actions import ActionError

    try:
        return do()
    except ActionError as e:
        fail(str(e), e.code)
    except errors as e:
        fail(str(e))


def print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def new_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def open_state(create: bool = False):
    """The state, with the jobs supervised elsewhere brought up to date from their snapshots."""
    from runner.state import State

    state = State.open(create=create)
    if state is not None and state.remote_jobs(active=True):
        from runner.remote.client import refresh

        for problem in refresh(state):
            print(f"note: {problem}", file=sys.stderr)
    return state


def find_job(state, ref: Any):
    from runner.state import StateError

    if state is None:
        fail(f"no job matches {str(ref)!r}: no job was ever submitted here (state: {state_path()})")
    try:
        return state.find_job(str(ref))
    except StateError as e:
        fail(str(e))


def state_path() -> str:
    from runner import paths

    return str(paths.db_path())


def follow(state, job_ids: list[str] | None, *, json: bool, forever: bool = False, announce: str = "") -> None:
    """Supervise jobs in the foreground with a live view; exit 0 when every one ended done."""
    from runner.background import wait_for_launchers
    from runner.describe import job_record
    from runner.supervisor import Supervisor
    from runner.view import FollowView, state_text

    console = new_console(stderr=json)
    if announce:
        console.print(announce, highlight=False)
    elsewhere = bool(job_ids) and all(state.job(j).remote for j in job_ids)
    try:
        wait_for_launchers(state, job_ids, console)  # a --detach submit's launcher: never launch twice
        with FollowView(console) as view:
            if elsewhere:  # supervised elsewhere: shown from their snapshots
                from runner.remote.client import follow as follow_elsewhere

                results = follow_elsewhere(state, list(job_ids or []), view)
            else:
                results = Supervisor(state, view).run(job_ids, forever=forever)
    except KeyboardInterrupt:
        console.print("\n[yellow]Detached.[/] The trainers keep running; " + (
            "their supervisor elsewhere goes on" if elsewhere else "`python -m runner watch` supervises them again")
            + ", `python -m runner cancel JOB` stops one.")
        raise SystemExit(EXIT_DETACHED) from None
    rows = [state.job(j) for j in results]
    if json:
        records = [job_record(state, r, detail=True) for r in rows]
        print_json(records[0] if job_ids is not None and len(records) == 1 else records)
    else:
        for r in rows:
            console.print(f"{r.id} {state_text(r.state)}: {r.reason}", highlight=False)
        if not rows:
            elsewhere_now = state.remote_jobs(active=True)
            console.print("No active jobs to supervise." + (
                f" {len(elsewhere_now)} are supervised elsewhere (`python -m runner status` shows them)."
                if elsewhere_now else ""))
    if any(r.state != "done" for r in rows):
        raise SystemExit(EXIT_JOB_NOT_DONE)


def print_job(state, row, record: dict[str, Any]) -> None:
    """One job in detail: what it is, where it runs, how far it got, what it cost, what happened."""
    from rich.markup import escape

    from runner.view import ago, clock, fit_table, kv_table, state_text

    console = new_console()
    progress = f"step {row.step}/{row.max_steps}" if row.max_steps else f"step {row.step}"
    checkpoint_failed: list[tuple[str, str]] = []
    if row.active:
        from runner.supervisor import JobSupervisor

        status = JobSupervisor(state, row.id, os.environ, backend=_NoBackend()).read_status()
        if status is not None:
            progress = f"step {status.step}/{status.max_steps}"
            if status.loss is not None:
                progress += f", loss {status.loss:.4f}"
            progress += f", heartbeat {ago(status.heartbeat)}"
            if status.last_checkpoint_step is not None:
                progress += f", last checkpoint at step {status.last_checkpoint_step}"
            if status.checkpoint_error:
                checkpoint_failed = [("checkpoint", f"[red]{escape(status.checkpoint_error)}[/]")]
    supervised = (f"runner process {row.supervisor_pid}" if row.supervised() else
                  "[yellow]nobody: run `python -m runner watch`[/]") if row.active else "-"
    if row.remote and row.active:
        from runner.remote.client import supervised_text

        supervised = escape(supervised_text(row))
    elif row.active and row.launching_in_background():
        supervised = f"runner process {row.launcher_pid}, launching it in the background ({escape(row.launcher_log or '')})"
    cost = record["cost"]
    budget = f" of ${record['budget_usd']:.2f} budget" if record.get("budget_usd") else ""
    console.print(kv_table([
        ("job", escape(row.id)), ("state", f"{state_text(row.state)} {escape(row.reason)}"),
        ("backend", row.backend), ("run URI", escape(row.run_uri)), ("job file", escape(row.job_file)),
        ("progress", progress), *checkpoint_failed, ("preemptions", str(row.preemptions)), ("failures", str(row.failures)),
        ("cost", f"${cost['usd']:.2f}{budget} ({cost['gpu_hours']:.3f} {cost['unit']} hours"
                 + (f", supervisor ${cost['supervisor_usd']:.4f}" if cost.get("supervisor_hours") else "") + ")"),
        ("supervised by", supervised),
    ]))
    rows = [[str(a["number"]), a["state"], a["outcome"] or "-", clock(a["started"]), clock(a["ended"]),
             f"{a['start_step']}→{a['end_step']}" if a["end_step"] is not None else f"{a['start_step']}→",
             a["detail"] or ""] for a in record["attempts"]]
    console.print(fit_table(("#", "state", "outcome", "started", "ended", "steps", "detail"), rows, console.width,
                            title="attempts", wrap={"detail"}))
    console.print("[bold]events[/]")
    for e in record["events"][-12:]:
        console.print(f"  [dim]{clock(e['time'])}[/] {e['kind']} {escape(e['message'])}")


class _NoBackend:
    """Reading status.json needs no backend."""


def plan_extras(est) -> dict[str, Any]:
    """The estimate's figures beyond training time: preemptions, checkpoints, restarts, disks."""
    extra = est.to_dict()
    for key in ("rate_per_hour", "on_demand_rate_per_hour", "steps", "seconds_per_step", "estimate_basis"):
        extra.pop(key, None)
    return extra


def plan_overhead_rows(est, escape, duration) -> list[tuple[str, str]]:
    rows = []
    if est.interval_minutes is not None:
        rows.append(("checkpoints", f"every {est.interval_minutes:.1f} min [dim]({escape(est.interval_basis)})[/]; one "
                                    f"costs {est.checkpoint.seconds:.2f} s [dim]({escape(est.checkpoint.basis)})[/]"))
    e = est.expectation
    if e is not None and e.preemptions >= 0.05:
        p = est.preemption
        rows.append(("preemptions", f"{e.preemptions:.1f} expected, one per {p.mtbf_hours:.1f} h [dim]({escape(p.basis)})[/]"))
        rows.append(("overhead", f"+{duration((est.expected_hours - est.hours) * 3600)} billed: {duration(e.lost_h * 3600)} "
                                 f"of work redone, {duration((e.restart_h + e.boot_h) * 3600)} of (re)launches "
                                 f"[dim]({escape(est.restart_basis)})[/], {duration(e.checkpoint_h * 3600)} of checkpoints; "
                                 f"{duration(est.expected_hours * 3600)} in all"))
    return rows


def print_plan(job, json: bool) -> None:
    if job.spec.stages:
        return _print_pipeline_plan(job, json)
    plan, est, data = _plan(job)
    if json:
        return print_json(plan)
    _print_plan(job, plan, est, data, f"Plan for {job.name}")
    return None


def _print_pipeline_plan(job, json: bool) -> None:
    """One plan per stage, in order, and what the whole pipeline takes."""
    from dataclasses import replace

    from runner.view import duration

    stages = [(name, replace(job, spec=job.spec.stage_spec(name))) for name in job.spec.stages]
    plans = [(name, stage_job, *_plan(stage_job, stage=name)) for name, stage_job in stages]
    hours = [p["estimated_hours"] for _n, _j, p, _e, _d in plans]
    dollars = [p.get("expected_usd", p["estimated_usd"]) for _n, _j, p, _e, _d in plans]
    total = {"pipeline": job.name, "stages": [p for _n, _j, p, _e, _d in plans],
             "estimated_hours": sum(hours) if None not in hours else None,
             "estimated_usd": sum(dollars) if None not in dollars else None}
    if json:
        return print_json(total)
    for i, (name, stage_job, plan, est, data) in enumerate(plans, 1):
        inputs = ", ".join(f"{k} ← {v}" for k, v in job.spec.stages[name].inputs().items())
        _print_plan(stage_job, plan, est, data, f"Stage {i} of {len(plans)}: {name}" + (f" (from {inputs})" if inputs else ""))
    when = duration(total["estimated_hours"] * 3600) if total["estimated_hours"] is not None else "unknown"
    usd = f"${total['estimated_usd']:.2f}" if total["estimated_usd"] is not None else "unknown"
    new_console().print(f"[bold]Pipeline {job.name}[/]: {len(plans)} stages, {when} of training, {usd} expected in all")
    return None


def _plan(job, stage: str | None = None) -> tuple[dict, Any, list]:
    from runner import paths
    from runner.backends import AVAILABLE
    from runner.cost import estimate, spot_applies
    from runner.datacheck import check_job_data
    from runner.secret_guard import forwarded

    # A plan is wanted before the data is uploaded too (what will it cost?): a missing dataset is
    # shown in it, and `submit` refuses to launch until it is there.
    data = check_job_data(job, strict=False)
    state = open_state()
    est = estimate(job, state)
    _values, missing = forwarded(job.spec.secrets, os.environ)
    gpu = job.gpus[0] if job.gpus else None
    spot = spot_applies(job.backend, job.spec.resources.spot)
    root = job.storage_root or str(paths.default_runs_dir())
    plan = {
        "name": job.name, "job_file": str(job.path), "backend": job.backend, "backend_available": job.backend in AVAILABLE,
        "gpu": [g.alias for g in job.gpus], "gpu_id": gpu.id if gpu else None, "gpu_count": job.spec.resources.gpu_count,
        "capacity": _capacity(job.backend, spot),
        "rate_per_hour": round(est.rate_per_hour, 4), "on_demand_rate_per_hour": round(est.on_demand_rate_per_hour, 4),
        "price_basis": _price_basis(job, spot),
        "steps": est.steps, "seconds_per_step": est.seconds_per_step, "estimate_basis": est.basis,
        "estimated_hours": est.hours, "estimated_usd": est.usd, **plan_extras(est),
        "budget_usd": job.spec.budget.max_usd if job.spec.budget else None,
        "run_uri": f"{root.rstrip('/')}/{job.name}-<id>" + (f"/{stage}" if stage else ""),
        "secrets": {n: n not in missing for n in job.spec.secrets},
        "retry": job.spec.retry.model_dump(),
        "data": [{"field": d.field, "location": d.location, "kind": d.kind, "files": d.files, "bytes": d.bytes}
                 if d.problem is None else {"field": d.field, "location": d.location, "problem": d.problem}
                 for d in data],
    }
    if stage:
        plan["stage"] = stage
    if est.expected_usd is not None:
        plan["expected_usd"] = est.expected_usd
    return plan, est, data


def _capacity(backend: str, spot: bool) -> str:
    if backend == "local":
        return "this machine"
    if backend == "docker":
        from runner.backends.docker_client import describe

        return describe().removeprefix("the ")  # "Docker engine on this machine", or the remote one's address
    return "spot" if spot else "on-demand"


def _price_basis(job, spot: bool) -> str:
    """Where the plan's price comes from: the provider's catalog, or what the job says a machine of yours costs."""
    from runner.cost import ENV_LOCAL_RATE, own_machine

    if not own_machine(job.backend):
        return f"catalog {'spot' if spot else 'on-demand'}"
    if job.spec.resources.price_per_hour is not None:
        return "resources.price_per_hour"
    return ENV_LOCAL_RATE if float(os.environ.get(ENV_LOCAL_RATE) or 0) else "free"


def _print_plan(job, plan: dict, est: Any, data: list, title: str) -> None:
    from rich.markup import escape

    from runner.cost import ENV_LOCAL_RATE
    from runner.view import duration, kv_table

    gpu, spot = (job.gpus[0] if job.gpus else None), plan["capacity"] == "spot"
    where = {"local": "local (a trainer process on this machine)", "docker": "docker", "runpod": "runpod (RunPod pods)"}
    backend = where[job.backend] + ("" if plan["backend_available"] else "  [yellow](not available in this version yet)[/]")
    if gpu:
        gpu_text = f"{gpu.alias} × {job.spec.resources.gpu_count} ({gpu.id}, {gpu.vram_gb} GB)"
        if len(job.gpus) > 1:
            gpu_text += f", then {', '.join(g.alias for g in job.gpus[1:])} when there is no capacity"
        if job.backend == "local":
            gpu_text += " [dim](ignored by the local backend)[/]"
    else:
        gpu_text = "none asked for" + (" (this machine's own devices)" if job.backend == "local" else "")
    price = f"${est.rate_per_hour:.2f}/h"
    if spot and est.on_demand_rate_per_hour > est.rate_per_hour:
        price += f" spot (on-demand ${est.on_demand_rate_per_hour:.2f}/h)"
    elif plan["price_basis"] == "free":
        price += " (your own machine: free; resources.price_per_hour sets what an hour of it costs you)"
    elif plan["price_basis"] in ("resources.price_per_hour", ENV_LOCAL_RATE):
        price += f" (your own machine, at {plan['price_basis']})"
    steps = f"{est.steps:,}" if est.steps else "unknown (the job gives epochs; known after its first run)"
    cost = "unknown" if est.usd is None else f"${est.usd:.2f}"
    if est.expectation is not None and est.expected_usd is not None:
        cost = f"${est.expected_usd:.2f} expected"
        if est.expectation.preemptions >= 0.05:
            cost += f" (${est.usd:.2f} for the training alone"
            cost += f"; on-demand ${est.on_demand_usd:.2f})" if spot else ")"
    budget = f"${job.spec.budget.max_usd:.2f} (stops with an emergency checkpoint when reached)" if job.spec.budget else "none"
    if job.spec.budget and est.expected_usd is not None:
        share = est.expected_usd / job.spec.budget.max_usd
        if share > 1:
            budget += f"; [bold red]the expected cost is over the budget[/] ({share:.0%})"
        elif share >= 0.8:
            budget += f"; [yellow]the expected cost is {share:.0%} of it[/]"
    secrets = ", ".join(f"{n} ({'set' if ok else '[red]NOT SET[/]'})" for n, ok in plan["secrets"].items()) or "none"
    retry = job.spec.retry
    retry_text = f"{retry.max_preemptions} relaunches after preemption, {retry.max_failures} after failure"
    if retry.fallback_to_on_demand_after is not None and spot:
        retry_text += f"; on-demand after {retry.fallback_to_on_demand_after} preemptions"
    rows = [("backend", backend), ("GPU", escape(gpu_text) if "[" not in gpu_text else gpu_text),
            ("capacity", plan["capacity"]), ("price", price), ("steps", steps),
            ("est. time", f"{duration(est.hours * 3600) if est.hours is not None else 'unknown'} of training [dim]({escape(est.basis)})[/]"),
            *plan_overhead_rows(est, escape, duration),
            *([("supervisor", f"on {job.spec.supervisor}: ${est.supervisor_rate_per_hour:.3f}/h for as long as the job "
                              f"runs, in the expected cost [dim]({escape(est.supervisor_basis)})[/]")]
              if job.spec.supervisor != "none" else []),
            ("est. cost", cost), ("budget", budget), ("run URI", escape(plan["run_uri"])), ("secrets", secrets),
            ("retry", retry_text)]
    rows += [(f"data ({d.field.removeprefix('train.data.')})",
              f"{escape(d.location)}: {d.summary()}" if d.problem is None else
              f"{escape(d.location)}: [bold red]cannot be used[/] (submit will refuse it; see below)") for d in data]
    console = new_console()
    console.print(f"[bold]{escape(title)}[/] ({escape(str(job.path))}): dry run, nothing launched")
    console.print(kv_table(rows))
    for d in data:
        if d.problem:
            console.print(f"[red]data:[/] {escape(d.problem)}")


def plot_costs(state, jobs, path: str, stderr: bool = False) -> None:
    from runner.plot import curve, plot_costs

    curves = [c for c in (curve(state, j) for j in jobs) if c is not None]
    if not curves:
        print("plot: no billed time to draw yet", file=sys.stderr)
        return
    try:
        written = plot_costs(curves, path)
    except ImportError:
        fail("--plot needs matplotlib: pip install matplotlib (or the project's `plot` extra)")
    print(f"plot: {written}", file=sys.stderr if stderr else sys.stdout)


def print_costs(state, jobs: list, rep, *, json: bool, csv: bool, plot: str | None) -> None:
    """The cost report as JSON, CSV or cards and tables; ``plot`` also draws cost over time."""
    if plot:
        plot_costs(state, [j for j in jobs if j.id in {c.job_id for c in rep.jobs}], str(plot), stderr=json or csv)
    if json:
        return print_json(rep.to_dict())
    if csv:
        from runner.cost import to_csv

        print(to_csv(rep), end="")
        return None
    return print_cost_report(rep)


def print_cost_report(rep) -> None:
    """One job: a card of labelled figures. Several: a table, narrower on a narrow terminal (no figure
    is ever cut short; `--json` and `--csv` have every field). Then the total, in words."""
    from runner.view import fit_table

    console = new_console()
    if not rep.jobs:
        console.print("No billed jobs" + (" in that time." if rep.since else " yet."))
        return
    total = rep.total()
    since = f" since {time.strftime('%Y-%m-%d %H:%M', time.localtime(rep.since))}" if rep.since else ""
    if len(rep.jobs) == 1:
        print_cost_card(console, rep.jobs[0], since)
    else:
        wide = console.width >= 120
        columns = [("job", "total", lambda c: c.job_id),
                   ("GPU", "", lambda c: "own machine" if c.capacity == "local" else f"{c.gpu or '?'} {c.capacity}"),
                   (hours_header(total["unit"]), f"{total['gpu_hours']:.2f}", lambda c: f"{c.gpu_hours:.2f}"),
                   ("billed", money(total["usd"]), lambda c: money(c.usd) + ("" if c.billed_by == "provider" else "*")),
                   ("on-demand", money(total["on_demand_usd"]), lambda c: money(c.on_demand_usd)),
                   ("saved", money(total["saving_usd"]), lambda c: money(c.saving_usd)),
                   ("idle h", f"{total['idle_hours']:.2f}", lambda c: f"{c.idle_hours:.2f}"),
                   ("preempted", str(total["preemptions"]), lambda c: str(c.preemptions)),
                   ("work lost", money(total["lost_usd"]), lambda c: money(c.lost_usd)),
                   ("$/1k steps", money(total["usd_per_1k_steps"]), lambda c: money(c.usd_per_1k_steps)),
                   ("Young/Daly", "", lambda c: f"{c.interval.recommended_minutes:.1f} min" if c.interval else "-")]
        if not wide:
            columns = [col for col in columns if col[0] in ("job", "billed", "saved", "preempted", "work lost")]
        headers = [head for head, _foot, _cell in columns]
        # Figures and ids never shrink below their width: a dollar amount cut short is worse than none.
        console.print(fit_table(headers, [[cell(c) for _h, _f, cell in columns] for c in rep.jobs], console.width,
                                title=f"What jobs cost{since}", right=set(headers[2:]),
                                footer=[foot for _h, foot, _cell in columns]))
        if not wide:
            console.print("[dim]Hours, on-demand price, idle time, $ per 1,000 steps and the checkpoint interval: "
                          "on a wider terminal, with `--json` or `--csv`, or per job (`cost JOB`).[/]")
    if any(c.billed_by != "provider" for c in rep.jobs):
        console.print("[dim]* the runner's own observation of each attempt at the rate at launch (no provider billing "
                      "record)[/]")
    if total["on_demand_usd"]:
        share = total["saving_usd"] / total["on_demand_usd"]
        verdict = "saved" if total["saving_usd"] >= 0 else "cost"
        console.print(f"Spot {verdict} [bold]{money(abs(total['saving_usd']))}[/] ({abs(share):.0%}) against the same "
                      f"hours on-demand; {total['preemptions']} preemption(s) threw away {total['lost_steps']:,} steps "
                      f"({total['lost_hours']:.2f} h, {money(total['lost_usd'])}) that were trained again.")


def hours_header(unit: str) -> str:
    """The billed-hours column of jobs whose hours are of ``unit`` ("GPU", "machine", or both)."""
    return f"{unit} h" if " " not in unit else "hours"


def money(x: float | None) -> str:
    return "-" if x is None else f"${x:,.2f}"


def print_cost_card(console, c, since: str) -> None:
    """One job's cost as labelled lines."""
    import math

    from rich.markup import escape

    from runner.view import kv_table

    iv = c.interval
    where = "your own machine" if c.capacity == "local" else f"{c.gpu or '?'} {c.capacity}"
    mtbf = "with no preemption expected" if iv is None or iv.mtbf_hours == math.inf else f"at MTBF {iv.mtbf_hours:.1f} h"
    saved = (f"spot saved [bold]{money(c.saving_usd)}[/] ({c.saving_fraction:.0%})" if c.saving_fraction and
             c.saving_usd > 0.005 else f"difference {money(c.saving_usd)}")
    estimated = "" if c.billed_by == "provider" else "[dim]*[/]"  # the runner's own observation
    rows = [
        ("billed", f"[bold]{money(c.usd)}[/]{estimated} for {c.gpu_hours:.2f} {c.unit} hours (compute "
                   f"{money(c.compute_usd)}, disks {money(c.storage_usd)}"
                   + (f", supervisor {money(c.supervisor_usd)}" if c.supervisor_hours else "") + ")"),
        ("on-demand", f"{money(c.on_demand_usd)} for the same hours: {saved}"),
        ("idle", f"{c.idle_hours:.2f} h billed while not training ({money(c.idle_usd)}): boot, image, loading"),
        ("preemptions", f"{c.preemptions}: {c.lost_steps:,} steps trained again, {c.lost_hours:.2f} h, "
                        f"{money(c.lost_usd)}"),
        ("per 1k steps", f"{money(c.usd_per_1k_steps)} ({c.steps:,} steps)"),
    ]
    if c.supervisor_hours:
        rows.insert(1, ("supervisor", f"${c.supervisor_usd:.4f} for {c.supervisor_hours:.2f} h of its supervisor "
                                      f"elsewhere (included above)"))
    if iv is not None:
        rows.append(("checkpoints", f"{escape(iv.in_use)}; Young/Daly: [bold]every {iv.recommended_minutes:.1f} "
                                    f"min[/] for a {iv.checkpoint_seconds:.2f} s checkpoint {mtbf}"))
        rows.append(("", f"[dim]checkpoint: {escape(iv.checkpoint_basis)}; preemptions: {escape(iv.mtbf_basis)}[/]"))
    console.print(f"[bold]{escape(c.job_id)}[/] ({c.state}) on {escape(where)}, {c.attempts} attempt(s){since}")
    console.print(kv_table(rows))


def print_simulation(scenario, notes: list[str], results, *, json: bool, plot: str | None) -> None:
    """The replayed strategies side by side (or as JSON), with where each figure came from; ``plot``
    also draws each strategy's cost distribution."""
    from rich.markup import escape

    from runner.simulate import summary
    from runner.view import fit_table

    if plot:
        from runner.plot import plot_simulation

        title = f"{scenario.work_hours:.1f} h job on {scenario.gpu or 'a GPU'}: cost over {results[0].trials} simulated runs"
        try:
            written = plot_simulation(results, str(plot), title)
        except ImportError:
            fail("--plot needs matplotlib: pip install matplotlib (or the project's `plot` extra)")
        print(f"plot: {written}", file=sys.stderr)
    lines = summary(scenario, results)
    if json:
        from dataclasses import asdict

        return print_json({"scenario": {**asdict(scenario), "auto_minutes": scenario.auto_minutes},
                           "assumptions": notes, "results": [r.to_dict() for r in results], "summary": lines})

    console = new_console()
    console.print(f"[bold]Simulated: {scenario.work_hours:.1f} h of training on {scenario.gpu}[/]")
    for note in notes:
        console.print(f"  [dim]- {escape(note)}[/]")
    many = results[0].trials > 1
    headers = ("strategy", "cost", "wall h", "billed h", "preempted", "work lost h", "relaunch h", "checkpoint h")
    rows = [[r.strategy.name, f"${r.usd.mean:.2f}", f"{r.wall_h.mean:.1f}", f"{r.uptime_h.mean:.1f}",
             f"{r.preemptions.mean:.1f}", f"{r.lost_h.mean:.2f}", f"{r.restart_h.mean:.2f}", f"{r.checkpoint_h.mean:.2f}"]
            for r in results]
    console.print(fit_table(headers, rows, console.width, wrap={"strategy"}, right=set(headers[1:]),
                            title=f"Expected over {results[0].trials} run(s)" if many else "One replay"))
    for line in lines:
        console.print(line, highlight=False)


def print_jobs(state, jobs: list | None, json: bool, overview: bool = False) -> None:
    """Every job given (``list``), or with ``overview`` the active and recent ones and the counts (``status``)."""
    if json:
        from runner.describe import job_record

        return print_json([job_record(state, j) for j in (state.jobs() if overview and state else jobs or [])])
    if state is None or (not overview and not jobs):
        print("No jobs yet. Start with: python -m runner submit jobs/quickstart.yaml")
        return None
    from runner.view import jobs_table

    console = new_console()
    if not overview:
        console.print(jobs_table(state, jobs, None, console.width))
        return None
    active, recent = state.jobs(active=True), state.jobs(active=False, limit=10)
    counts = state.count_jobs_by_state()
    console.print(jobs_table(state, active, "Active jobs", console.width) if active else "No active jobs.")
    if recent:
        console.print(jobs_table(state, recent, "Recently ended", console.width))
    for pipeline in dict.fromkeys(j.pipeline for j in active if j.pipeline):
        stages = state.pipeline_jobs(pipeline)
        done = sum(r.state == "done" for r in stages)
        now = next((r for r in stages if r.active), stages[-1])
        console.print(f"pipeline {pipeline}: {done} of {len(stages)} stages done; {now.stage} {now.state} "
                      f"(`python -m runner status {pipeline}`)", highlight=False)
    total = sum(counts.values())
    console.print(f"[dim]{total} jobs in total: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                  + ". `python -m runner list` shows them all.[/]")
    if any(not j.supervised() and not j.remote for j in active):
        console.print("[yellow]* unsupervised: no runner process watches it; `python -m runner watch` relaunches it "
                      "after a preemption.[/]")
    return None


def print_pipeline(state, stages: list, json: bool) -> None:
    """A pipeline: its stages in order (each a job of its own) and what they cost together."""
    from runner.cost import report
    from runner.describe import job_record

    total = report(state, stages).total()
    states = [r.state for r in stages]
    overall = "done" if all(x == "done" for x in states) else next(
        (x for x in states if x in ("failed", "cancelled", "over_budget")), None) or "running"
    if json:
        return print_json({"pipeline": stages[0].pipeline, "state": overall,
                           "stages": [{**job_record(state, r, detail=True), "stage": r.stage} for r in stages],
                           "total": total})
    from runner.view import jobs_table

    console = new_console()
    console.print(jobs_table(state, stages, f"Pipeline {stages[0].pipeline}: {overall}", console.width))
    console.print(f"{len(stages)} stages ({', '.join(f'{r.stage} {r.state}' for r in stages)}); "
                  f"{total['gpu_hours']:.2f} {total['unit']} h, {money(total['usd'])} billed, {total['preemptions']} preemption(s). "
                  f"`python -m runner cost {stages[0].pipeline}` breaks it down.", highlight=False)
    return None


def print_detached(state, row, json: bool, what: str, pid: int | None, log) -> None:
    """A job handed to a background launcher (``--detach``), or, with no ``pid``, to its supervisor elsewhere:
    its record, or a line and how to follow it."""
    row = state.job(row.id)
    if json:
        from runner.describe import job_record

        return print_json(job_record(state, row))
    if pid is None:  # handed over at submit: its supervisor elsewhere launches it
        print(f"{row.id} {row.state}: {row.reason or what} (it launches the job and relaunches it after a "
              f"preemption, with this machine off)")
    else:
        print(f"{row.id} {what}; runner process {pid} builds, pushes and launches it in the background (its output: {log})")
    print(f"  follow it:  python -m runner logs {row.id} --follow\n"
          f"  status:     python -m runner status {row.id}")
    return None


def print_catalog(json: bool) -> None:
    """The GPU types a job can ask for: RunPod's live prices and stock when a key is set, else the catalog's."""
    from runner.runpod import configured

    if configured():
        from runner.runpod.commands import print_live_gpus

        return print_live_gpus(json)
    from runner.catalog import load_catalog

    catalog = load_catalog()
    if json:
        return print_json([g.to_dict() for g in catalog.gpus])
    from runner.view import fit_table

    headers = ("alias", "RunPod id", "VRAM", "on-demand", "spot", "spot saves")
    rows = [[g.alias + (f" ({', '.join(g.aliases)})" if g.aliases else ""), g.id, f"{g.vram_gb} GB", f"${g.on_demand:.2f}",
             f"${g.spot:.2f}", f"{1 - g.spot / g.on_demand:.0%}"] for g in catalog.gpus]
    console = new_console()
    console.print(fit_table(headers, rows, console.width, title="GPU catalog (USD per GPU-hour; runner/gpus.yaml)",
                            right=set(headers[2:])))
    return None


def print_curves(state, row, out: str | None, json: bool) -> None:
    """Draw a job's loss curves into ``out`` and say what they show."""
    from runner.curves import plot_curves, read_segments, redone_steps

    try:
        segments = read_segments(row.run_uri, state.attempts(row.id))
    except Exception as e:  # storage errors: which run, and why
        fail(f"cannot read the TensorBoard events of {row.id} under {row.run_uri}: {e}", code=1)
    if not segments:
        fail(f"{row.id} has logged no loss yet (nothing under {row.run_uri}/tensorboard); try again once it "
             f"has trained a few steps", code=1)
    try:
        path = plot_curves(segments, out or f"{row.id}-curves.png", f"{row.name} ({row.id}): loss by step")
    except ImportError:
        fail("curves needs matplotlib: pip install matplotlib (or the project's `plot` extra)")
    redone = redone_steps(segments)
    if json:
        return print_json({"job_id": row.id, "run_uri": row.run_uri, "plot": str(path),
                           "segments": [s.to_dict(r) for s, r in zip(segments, redone, strict=True)]})
    print(f"{path}: {len(segments)} attempt(s), steps {segments[0].first_step}–{max(s.last_step for s in segments)}"
          + (f", {sum(redone)} steps trained twice after preemptions" if sum(redone) else ""))
    return None
