"""``python -m runner``: the command line (fire).

Imports stay inside the commands: ``--help`` and ``status`` must start in a blink, so pydantic,
yaml and rich are loaded only by the commands that use them, and torch never."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, NoReturn

EXIT_OK, EXIT_JOB_NOT_DONE, EXIT_BAD_INPUT, EXIT_DETACHED = 0, 1, 2, 130


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _open_state(create: bool = False):
    from runner.state import State

    return State.open(create=create)


def _find(state, ref: Any):
    from runner.state import StateError

    if state is None:
        _fail(f"no job matches {str(ref)!r}: no job was ever submitted here (state: {_state_path()})")
    try:
        return state.find_job(str(ref))
    except StateError as e:
        _fail(str(e))


def _state_path() -> str:
    from runner import paths

    return str(paths.db_path())


class Commands:
    """Run training jobs on RunPod spot GPUs or on this machine, and bring them back after preemption.

    Start with:  python -m runner submit jobs/quickstart.yaml
    State lives in $RUNNER_HOME (default: $XDG_STATE_HOME/spot-runner).
    """

    def submit(self, job: str, gpu: str | None = None, backend: str | None = None, detach: bool = False,
               dry_run: bool = False, json: bool = False) -> None:
        """Validate a job file, launch it and follow it until it ends (--detach: return at once).

        Args:
            job: the job file (YAML).
            gpu: GPU alias, RunPod GPU id, or a comma-separated failover list; overrides resources.gpu.
            backend: local, docker or runpod; overrides the job file's backend (default local).
            detach: launch, print the job id and return; `python -m runner watch` supervises it.
            dry_run: print the plan (backend, GPU, price, estimated time and cost) and launch nothing.
            json: print the job (or the plan) as JSON on stdout; progress goes to stderr.
        """
        from runner.spec import load_job
        from trainer.jobfile import JobFileError

        if isinstance(gpu, (tuple, list)):  # fire turns "a,b" into a tuple
            gpu = ",".join(map(str, gpu))
        try:
            spec_job = load_job(str(job), gpu=None if gpu is None else str(gpu), backend=backend)
        except JobFileError as e:
            _fail(f"{e}\nNothing was launched; fix the file and submit again.")
        if dry_run:
            return _print_plan(spec_job, json)

        from runner.backends import BackendUnavailable, get_backend

        try:
            get_backend(spec_job.backend)
        except BackendUnavailable as e:
            _fail(str(e))
        from runner.secret_guard import forwarded

        _values, missing = forwarded(spec_job.spec.secrets, os.environ)
        if missing:
            _fail(f"{spec_job.path}: secrets: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} listed but not set "
                  f"in this shell; export {'it' if len(missing) == 1 else 'them'} and submit again. Nothing was launched.")

        import secrets as token

        from runner import paths
        from runner.supervisor import Supervisor

        state = _open_state(create=True)
        job_id = f"{spec_job.name}-{token.token_hex(3)}"
        root = spec_job.storage_root or str(paths.default_runs_dir())
        row = state.create_job(id=job_id, name=spec_job.name, job_file=str(spec_job.path), job_sha256=spec_job.sha256,
                               spec=spec_job.record(), workdir=os.getcwd(), backend=spec_job.backend,
                               run_uri=f"{root.rstrip('/')}/{job_id}", max_steps=spec_job.train.max_steps or 0)
        if detach:
            Supervisor(state).run([row.id], until_launched=True)
            row = state.job(row.id)
            if json:
                from runner.describe import job_record

                return _print_json(job_record(state, row))
            print(f"{row.id} {row.state}: {row.reason or 'launched'}\n"
                  f"  follow it:  python -m runner logs {row.id} --follow\n"
                  f"  supervise:  python -m runner watch   (relaunches it after a preemption)")
            return None
        return _follow(state, [row.id], json=json, announce=f"submitted {row.id}: run {row.run_uri}")

    def status(self, job: str | None = None, json: bool = False) -> None:
        """Show one job in detail, or the active and recent jobs.

        Args:
            job: a job id, a unique prefix of one, or a job name (its newest job).
            json: print JSON (one job record, or a list of every job).
        """
        state = _open_state()
        if job is not None:
            row = _find(state, job)
            from runner.describe import job_record

            record = job_record(state, row, detail=True)
            return _print_json(record) if json else _print_job(state, row, record)
        if state is None:
            return _print_json([]) if json else print("No jobs yet. Start with: python -m runner submit jobs/quickstart.yaml")
        if json:
            from runner.describe import job_record

            return _print_json([job_record(state, j) for j in state.jobs()])
        from runner.view import jobs_table

        console = _console()
        active, recent = state.jobs(active=True), state.jobs(active=False, limit=10)
        counts = state.count_jobs_by_state()
        if active:
            console.print(jobs_table(state, active, "Active jobs", console.width))
        else:
            console.print("No active jobs.")
        if recent:
            console.print(jobs_table(state, recent, "Recently ended", console.width))
        total = sum(counts.values())
        console.print(f"[dim]{total} jobs in total: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                      + ". `python -m runner list` shows them all.[/]")
        if any(not j.supervised() for j in active):
            console.print("[yellow]* unsupervised: no runner process watches it; `python -m runner watch` relaunches it "
                          "after a preemption.[/]")
        return None

    def list(self, limit: int | None = None, json: bool = False) -> None:
        """List every job, newest first.

        Args:
            limit: show at most this many.
            json: print JSON.
        """
        state = _open_state()
        jobs = state.jobs(limit=limit) if state else []
        if json:
            from runner.describe import job_record

            return _print_json([job_record(state, j) for j in jobs])
        if not jobs:
            print("No jobs yet. Start with: python -m runner submit jobs/quickstart.yaml")
            return None
        from runner.view import jobs_table

        console = _console()
        console.print(jobs_table(state, jobs, None, console.width))
        return None

    def logs(self, job: str, follow: bool = False, attempt: int | None = None) -> None:
        """Print a job's output, attempt by attempt; --follow keeps printing until the job ends.

        Args:
            job: a job id, a unique prefix of one, or a job name.
            follow: keep printing new output, through relaunches, until the job ends.
            attempt: only this attempt number.
        """
        from runner.backends import BackendUnavailable, get_backend

        state = _open_state()
        row = _find(state, job)
        try:
            backend = get_backend(row.backend)
        except BackendUnavailable as e:
            _fail(str(e))
        shown: set[str] = set()
        try:
            while True:
                for a in state.attempts(row.id):
                    if a.id in shown or a.handle is None or (attempt is not None and a.number != int(attempt)):
                        continue
                    print(f"── attempt {a.number} ({a.id}) ──", flush=True)
                    live = follow and a.state != "ended"
                    for line in backend.logs(a.handle, follow=live, until=lambda: not state.job(row.id).active):
                        print(line, flush=live)
                    shown.add(a.id)
                if not follow or not state.job(row.id).active:
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            raise SystemExit(EXIT_DETACHED) from None
        if not shown:
            print(f"{row.id} has no output yet ({row.state}).", file=sys.stderr)
        return None

    def cancel(self, job: str, json: bool = False) -> None:
        """Stop a job for good: its trainer writes an emergency checkpoint, then nothing of it runs.

        Args:
            job: a job id, a unique prefix of one, or a job name.
            json: print the job as JSON afterwards.
        """
        from runner.describe import job_record
        from runner.supervisor import STOP_GRACE_SECONDS, Supervisor

        state = _open_state()
        row = _find(state, job)
        if not row.active:
            if json:
                return _print_json(job_record(state, row))
            print(f"{row.id} is already {row.state}; nothing to cancel.")
            return None
        state.request_cancel(row.id)
        console = _console(stderr=json)
        deadline = time.monotonic() + STOP_GRACE_SECONDS + 120
        with console.status(f"cancelling {row.id} (its trainer writes an emergency checkpoint first)"):
            while state.job(row.id).active:
                if not state.job(row.id).supervised():  # nobody supervises it: do it here
                    Supervisor(state).run([row.id])
                    continue
                if time.monotonic() > deadline:
                    _fail(f"{row.id} is still {state.job(row.id).state}; its supervisor (pid {row.supervisor_pid}) has "
                          f"not stopped it yet: check `python -m runner status {row.id}`", EXIT_JOB_NOT_DONE)
                time.sleep(0.2)
        row = state.job(row.id)
        if json:
            return _print_json(job_record(state, row))
        console.print(f"{row.id} {row.state}: {row.reason}")
        return None

    def watch(self, forever: bool = False, json: bool = False) -> None:
        """Supervise every active job: adopt running attempts, relaunch after preemptions, until all end.

        Args:
            forever: keep running and pick up jobs submitted later (--detach) too.
            json: print the supervised jobs as JSON at the end; progress goes to stderr.
        """
        state = _open_state(create=forever)
        if state is None:
            return _print_json([]) if json else print("Nothing to watch: no job was ever submitted here.")
        return _follow(state, None, json=json, forever=forever)

    def gpus(self, json: bool = False) -> None:
        """List the GPU types a job can ask for, with memory and prices per GPU-hour.

        Args:
            json: print JSON.
        """
        from runner.runpod import configured

        if configured():  # RunPod's live prices and stock
            from runner.runpod.commands import print_live_gpus

            return print_live_gpus(json)
        from runner.catalog import load_catalog

        catalog = load_catalog()
        if json:
            return _print_json([g.to_dict() for g in catalog.gpus])
        from rich.table import Table

        table = Table(box=None, header_style="bold", title="GPU catalog (USD per GPU-hour; runner/gpus.yaml)",
                      title_justify="left")
        for col in ("alias", "RunPod id", "VRAM", "on-demand", "spot", "spot saves"):
            table.add_column(col, justify="right" if col not in ("alias", "RunPod id") else "left")
        for g in catalog.gpus:
            alias = g.alias + (f" ({', '.join(g.aliases)})" if g.aliases else "")
            table.add_row(alias, g.id, f"{g.vram_gb} GB", f"${g.on_demand:.2f}", f"${g.spot:.2f}",
                          f"{1 - g.spot / g.on_demand:.0%}")
        _console().print(table)
        return None

    def cost(self, job: str | None = None, json: bool = False) -> None:
        """What jobs cost: billed GPU hours × rate, and what spot saved against on-demand.

        Args:
            job: one job (id, prefix or name); default: every job.
            json: print JSON.
        """
        from runner.cost import job_cost

        state = _open_state()
        jobs = [_find(state, job)] if job is not None else (state.jobs() if state else [])
        now = time.time()
        costs = [job_cost(state, j, now) for j in jobs]
        total = {"gpu_hours": sum(c.gpu_hours for c in costs), "usd": sum(c.usd for c in costs),
                 "on_demand_usd": sum(c.on_demand_usd for c in costs), "saving_usd": sum(c.saving_usd for c in costs),
                 "preemptions": sum(c.preemptions for c in costs)}
        if json:
            return _print_json({"jobs": [dict(c.to_dict(), state=j.state) for c, j in zip(costs, jobs, strict=True)],
                                "total": {k: round(v, 6) for k, v in total.items()}})
        from rich.table import Table

        table = Table(box=None, header_style="bold", show_footer=len(costs) > 1)
        for col, foot in (("job", "total"), ("state", ""), ("GPU hours", f"{total['gpu_hours']:.3f}"),
                          ("cost", f"${total['usd']:.2f}"), ("on-demand", f"${total['on_demand_usd']:.2f}"),
                          ("saved", f"${total['saving_usd']:.2f}"), ("preemptions", str(total["preemptions"]))):
            table.add_column(col, footer=foot, justify="left" if col in ("job", "state") else "right")
        for c, j in zip(costs, jobs, strict=True):
            table.add_row(j.id, j.state, f"{c.gpu_hours:.3f}", f"${c.usd:.2f}", f"${c.on_demand_usd:.2f}",
                          f"${c.saving_usd:.2f}", str(c.preemptions))
        _console().print(table if costs else "No jobs yet.")
        return None


def _follow(state, job_ids: list[str] | None, *, json: bool, forever: bool = False, announce: str = "") -> None:
    """Supervise jobs in the foreground with a live view; exit 0 when every one ended done."""
    from runner.describe import job_record
    from runner.supervisor import Supervisor
    from runner.view import FollowView, state_text

    console = _console(stderr=json)
    if announce:
        console.print(announce, highlight=False)
    try:
        with FollowView(console) as view:
            results = Supervisor(state, view).run(job_ids, forever=forever)
    except KeyboardInterrupt:
        console.print("\n[yellow]Detached.[/] The trainers keep running; `python -m runner watch` supervises them again, "
                      "`python -m runner cancel JOB` stops one.")
        raise SystemExit(EXIT_DETACHED) from None
    rows = [state.job(j) for j in results]
    if json:
        records = [job_record(state, r, detail=True) for r in rows]
        _print_json(records[0] if job_ids is not None and len(records) == 1 else records)
    else:
        for r in rows:
            console.print(f"{r.id} {state_text(r.state)}: {r.reason}", highlight=False)
        if not rows:
            console.print("No active jobs to supervise.")
    if any(r.state != "done" for r in rows):
        raise SystemExit(EXIT_JOB_NOT_DONE)


def _print_job(state, row, record: dict[str, Any]) -> None:
    """One job in detail: what it is, where it runs, how far it got, what it cost, what happened."""
    from rich.markup import escape
    from rich.table import Table

    from runner.view import ago, clock, kv_table, state_text

    console = _console()
    progress = f"step {row.step}/{row.max_steps}" if row.max_steps else f"step {row.step}"
    if row.active:
        from runner.supervisor import JobSupervisor

        status = JobSupervisor(state, row.id, os.environ, backend=_NoBackend()).read_status()
        if status is not None:
            progress = f"step {status.step}/{status.max_steps}"
            if status.loss is not None:
                progress += f", loss {status.loss:.4f}"
            progress += f", heartbeat {ago(status.heartbeat)}"
    supervised = (f"runner process {row.supervisor_pid}" if row.supervised() else
                  "[yellow]nobody: run `python -m runner watch`[/]") if row.active else "-"
    cost = record["cost"]
    budget = f" of ${record['budget_usd']:.2f} budget" if record.get("budget_usd") else ""
    console.print(kv_table([
        ("job", escape(row.id)), ("state", f"{state_text(row.state)} {escape(row.reason)}"),
        ("backend", row.backend), ("run URI", escape(row.run_uri)), ("job file", escape(row.job_file)),
        ("progress", progress), ("preemptions", str(row.preemptions)), ("failures", str(row.failures)),
        ("cost", f"${cost['usd']:.2f}{budget} ({cost['gpu_hours']:.3f} GPU hours)"), ("supervised by", supervised),
    ]))
    attempts = Table(box=None, header_style="bold", title="attempts", title_justify="left")
    for col in ("#", "state", "outcome", "started", "ended", "steps", "detail"):
        attempts.add_column(col, overflow="fold" if col == "detail" else "ellipsis")
    for a in record["attempts"]:
        steps = f"{a['start_step']}→{a['end_step']}" if a["end_step"] is not None else f"{a['start_step']}→"
        attempts.add_row(str(a["number"]), a["state"], a["outcome"] or "-", clock(a["started"]), clock(a["ended"]), steps,
                         escape(a["detail"] or ""))
    console.print(attempts)
    console.print("[bold]events[/]")
    for e in record["events"][-12:]:
        console.print(f"  [dim]{clock(e['time'])}[/] {e['kind']} {escape(e['message'])}")


class _NoBackend:
    """Reading status.json needs no backend."""


def _print_plan(job, json: bool) -> None:
    from runner import paths
    from runner.backends import AVAILABLE
    from runner.cost import estimate
    from runner.secret_guard import forwarded

    state = _open_state()
    est = estimate(job, state)
    _values, missing = forwarded(job.spec.secrets, os.environ)
    gpu = job.gpus[0] if job.gpus else None
    spot = job.spec.resources.spot and job.backend != "local"
    root = job.storage_root or str(paths.default_runs_dir())
    plan = {
        "name": job.name, "job_file": str(job.path), "backend": job.backend, "backend_available": job.backend in AVAILABLE,
        "gpu": [g.alias for g in job.gpus], "gpu_id": gpu.id if gpu else None, "gpu_count": job.spec.resources.gpu_count,
        "capacity": ("spot" if spot else "on-demand") if job.backend != "local" else "this machine",
        "rate_per_hour": round(est.rate_per_hour, 4), "on_demand_rate_per_hour": round(est.on_demand_rate_per_hour, 4),
        "steps": est.steps, "seconds_per_step": est.seconds_per_step, "estimate_basis": est.basis,
        "estimated_hours": est.hours, "estimated_usd": est.usd,
        "budget_usd": job.spec.budget.max_usd if job.spec.budget else None,
        "run_uri": f"{root.rstrip('/')}/{job.name}-<id>",
        "secrets": {n: n not in missing for n in job.spec.secrets},
        "retry": job.spec.retry.model_dump(),
    }
    if json:
        return _print_json(plan)
    from rich.markup import escape

    from runner.view import duration, kv_table

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
    if job.backend != "local" and spot and est.on_demand_rate_per_hour > est.rate_per_hour:
        price += f" spot (on-demand ${est.on_demand_rate_per_hour:.2f}/h)"
    elif job.backend == "local":
        price += " (this machine; RUNNER_LOCAL_USD_PER_HOUR sets what it costs you)"
    steps = f"{est.steps:,}" if est.steps else "unknown (the job gives epochs; known after its first run)"
    cost = "unknown" if est.usd is None else f"${est.usd:.2f}"
    budget = f"${job.spec.budget.max_usd:.2f} (stops with an emergency checkpoint when reached)" if job.spec.budget else "none"
    secrets = ", ".join(f"{n} ({'set' if ok else '[red]NOT SET[/]'})" for n, ok in plan["secrets"].items()) or "none"
    retry = job.spec.retry
    retry_text = f"{retry.max_preemptions} relaunches after preemption, {retry.max_failures} after failure"
    if retry.fallback_to_on_demand_after is not None and spot:
        retry_text += f"; on-demand after {retry.fallback_to_on_demand_after} preemptions"
    rows = [("backend", backend), ("GPU", escape(gpu_text) if "[" not in gpu_text else gpu_text),
            ("capacity", plan["capacity"]), ("price", price), ("steps", steps),
            ("est. time", f"{duration(est.hours * 3600) if est.hours is not None else 'unknown'} [dim]({escape(est.basis)})[/]"),
            ("est. cost", cost), ("budget", budget), ("run URI", escape(plan["run_uri"])), ("secrets", secrets),
            ("retry", retry_text)]
    console = _console()
    console.print(f"[bold]Plan for {escape(job.name)}[/] ({escape(str(job.path))}): dry run, nothing launched")
    console.print(kv_table(rows))
    return None


def main(argv: list[str] | None = None) -> None:
    import contextlib

    import fire

    # fire reads docstrings through IPython when it is installed: 0.3 s of imports for every --help.
    # Its own fallback reads the same docstrings; the runner never needs IPython.
    sys.modules.setdefault("IPython", None)  # type: ignore[arg-type]
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args and any(a in ("-h", "--help") for a in args):
        # Help is output the user asked for: print it on stdout (fire writes it to stderr).
        args = [a for a in args if a not in ("-h", "--help")] + ["--", "--help"]
        with contextlib.redirect_stderr(sys.stdout):
            fire.Fire(Commands(), command=args, name="runner")
        return
    if args and os.environ.get("RUNPOD_API_KEY"):  # pods left behind are terminated before anything else
        from runner.runpod.commands import RECONCILING, reconcile_pods

        if args[0] in RECONCILING:
            reconcile_pods()
    fire.Fire(Commands(), command=args, name="runner")


if __name__ == "__main__":
    main()
