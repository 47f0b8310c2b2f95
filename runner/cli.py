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

        from runner.backends import BackendError, get_backend

        try:
            get_backend(spec_job.backend).preflight(spec_job.spec.resources.gpu_count)
        except BackendError as e:
            _fail(f"{e}\nNothing was launched.")
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

    def cost(self, job: str | None = None, since: str | None = None, json: bool = False, csv: bool = False,
             plot: str | None = None) -> None:
        """What jobs cost: billed hours and dollars, what spot saved, what preemptions took back.

        Per job and in total: billed GPU hours and dollars (compute and disk; the provider's own billing
        where the backend keeps one), the same hours at the on-demand price and the saving, time billed
        while not training, preemptions, work recomputed after them (the steps past the last checkpoint,
        in hours and dollars), dollars per 1,000 training steps, and the checkpoint interval that
        Young/Daly call for at the GPU's observed preemption rate.

        Args:
            job: one job (id, prefix or name); default: every job.
            since: only what was billed from then on: a date (2026-11-20), a local date and time
                (2026-11-20T14:00), or a span ago (12h, 7d, 2w).
            json: print JSON.
            csv: print CSV: a row per job, then the total.
            plot: also draw each job's cumulative cost over time beside the on-demand line, into this PNG.
        """
        from runner.cost import parse_since, report, to_csv

        state = _open_state()
        try:
            since_t = parse_since(since) if since is not None else None
        except ValueError as e:
            _fail(str(e))
        jobs = [_find(state, job)] if job is not None else (state.jobs() if state else [])
        rep = report(state, jobs, since=since_t)
        if plot:
            _plot_costs(state, [j for j in jobs if j.id in {c.job_id for c in rep.jobs}], str(plot), stderr=json or csv)
        if json:
            return _print_json(rep.to_dict())
        if csv:
            print(to_csv(rep), end="")
            return None
        _print_cost_report(rep)
        return None

    def curves(self, job: str, out: str | None = None, json: bool = False) -> None:
        """Draw a job's loss curves (train and validation) from its run, one colour per attempt, with
        the steps a preemption made it train twice shaded.

        Args:
            job: a job id, a unique prefix of one, or a job name (its newest job).
            out: the picture to write (PNG, or any format matplotlib knows from the suffix);
                default: <job id>-curves.png here.
            json: also print the curves as JSON on stdout.
        """
        from runner.curves import plot_curves, read_segments, redone_steps

        state = _open_state()
        row = _find(state, job)
        try:
            segments = read_segments(row.run_uri, state.attempts(row.id))
        except Exception as e:  # storage errors: which run, and why
            _fail(f"cannot read the TensorBoard events of {row.id} under {row.run_uri}: {e}", code=1)
        if not segments:
            _fail(f"{row.id} has logged no loss yet (nothing under {row.run_uri}/tensorboard); try again once it "
                  f"has trained a few steps", code=1)
        try:
            path = plot_curves(segments, out or f"{row.id}-curves.png", f"{row.name} ({row.id}): loss by step")
        except ImportError:
            _fail("curves needs matplotlib: pip install matplotlib (or the project's `plot` extra)")
        redone = redone_steps(segments)
        if json:
            return _print_json({"job_id": row.id, "run_uri": row.run_uri, "plot": str(path),
                                "segments": [s.to_dict(r) for s, r in zip(segments, redone, strict=True)]})
        print(f"{path}: {len(segments)} attempt(s), steps {segments[0].first_step}–{max(s.last_step for s in segments)}"
              + (f", {sum(redone)} steps trained twice after preemptions" if sum(redone) else ""))
        return None

    def resume(self, job: str, budget: float | None = None, detach: bool = False, json: bool = False) -> None:
        """Go on with an ended job from its last checkpoint: one stopped over budget, cancelled or failed.

        Args:
            job: a job id, a unique prefix of one, or a job name (its newest job).
            budget: the job's new budget in USD (its budget.max_usd); needed when it stopped over budget.
            detach: relaunch, print the job id and return; `python -m runner watch` supervises it.
            json: print the job as JSON at the end; progress goes to stderr.
        """
        from runner.secret_guard import forwarded

        state = _open_state()
        row = _find(state, job)
        if row.active:
            _fail(f"{row.id} is {row.state}, not ended: nothing to resume (`python -m runner watch` supervises it)")
        if row.state == "done":
            _fail(f"{row.id} is done: its final weights are in {row.run_uri}/final")
        spent = state.spent(row.id)
        current = (row.spec.get("budget") or {}).get("max_usd")
        if budget is not None:
            try:
                budget = float(budget)
            except (TypeError, ValueError):
                _fail(f"--budget {budget!r}: expected a number of dollars")
            if budget <= spent:
                _fail(f"{row.id} has spent ${spent:.2f} already: a budget of ${budget:.2f} would stop it at once; "
                      f"give more than ${spent:.2f}")
        elif current is not None and spent >= current:
            _fail(f"{row.id} has spent ${spent:.2f} of its ${current:.2f} budget: resume it with a larger one, "
                  f"e.g. --budget {max(current * 1.5, spent + 1):.2f}")
        _values, missing = forwarded(row.spec.get("secrets", []), os.environ)
        if missing:
            _fail(f"{row.id} needs {', '.join(missing)} in the environment to launch; export "
                  f"{'it' if len(missing) == 1 else 'them'} and resume again. Nothing was launched.")
        if budget is not None:
            state.raise_budget(row.id, budget)
        note = f" with a ${budget:.2f} budget" if budget is not None else ""
        state.reopen(row.id, f"resumed{note} after it was {row.state}: relaunching from the last checkpoint")
        if detach:
            from runner.supervisor import Supervisor

            Supervisor(state).run([row.id], until_launched=True)
            row = state.job(row.id)
            if json:
                from runner.describe import job_record

                return _print_json(job_record(state, row))
            print(f"{row.id} {row.state}: {row.reason or 'relaunched'}")
            return None
        return _follow(state, [row.id], json=json, announce=f"resuming {row.id}{note} (spent so far: ${spent:.2f})")

    def simulate(self, job: str | None = None, gpu: str | None = None, hours: float | None = None,
                 mtbf_hours: float | None = None, checkpoint_seconds: float | None = None,
                 restart_minutes: float | None = None, fixed_minutes: float = 60.0, wait_minutes: float = 1.0,
                 trace: str | None = None, trace_job: str | None = None, trials: int = 2000, seed: int = 0,
                 json: bool = False, plot: str | None = None) -> None:
        """Replay a job against preemptions: expected cost and wall time for spot with this runner's
        checkpoint interval, spot with a fixed interval, and on-demand.

        Preemptions are Poisson at --mtbf-hours (default: the rate observed on the GPU), or the times of
        a recorded trace. Every figure not given comes from the job and from earlier runs, and the
        output says which.

        Args:
            job: a job file to take the steps, seconds per step, GPU and checkpoint cost from.
            gpu: GPU alias for the prices (default: the job's, else rtx3090).
            hours: hours of training the job needs (default: the job's estimate).
            mtbf_hours: mean machine hours between preemptions (Poisson).
            checkpoint_seconds: what one checkpoint stalls training, in seconds.
            restart_minutes: billed minutes from a (re)launch to training again.
            fixed_minutes: the fixed interval to compare with (and on-demand's interval).
            wait_minutes: unbilled minutes between a preemption and the next machine.
            trace: a file of preemption times, in hours of machine time (one per line, or a JSON list).
            trace_job: use a recorded job's preemptions as the trace (id, prefix or name).
            trials: Poisson replays to average over.
            seed: random seed (the same seed gives the same figures).
            json: print JSON.
            plot: also draw the distribution of each strategy's cost into this PNG.
        """
        scenario, notes = _scenario(job, gpu, hours, mtbf_hours, checkpoint_seconds, restart_minutes, fixed_minutes,
                                    wait_minutes, trace, trace_job)
        from runner.simulate import simulate, summary

        if int(trials) < 1:
            _fail("--trials must be at least 1")
        results = simulate(scenario, trials=int(trials), seed=int(seed))
        if plot:
            from runner.plot import plot_simulation

            title = (f"{scenario.work_hours:.1f} h job on {scenario.gpu or 'a GPU'}: cost over "
                     f"{results[0].trials} simulated runs")
            try:
                written = plot_simulation(results, str(plot), title)
            except ImportError:
                _fail("--plot needs matplotlib: pip install matplotlib (or the project's `plot` extra)")
            print(f"plot: {written}", file=sys.stderr)
        lines = summary(scenario, results)
        if json:
            from dataclasses import asdict

            return _print_json({"scenario": {**asdict(scenario), "auto_minutes": scenario.auto_minutes},
                                "assumptions": notes, "results": [r.to_dict() for r in results], "summary": lines})
        _print_simulation(scenario, notes, results, lines)
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


def _plan_extras(est) -> dict[str, Any]:
    """The estimate's figures beyond training time: preemptions, checkpoints, restarts, disks."""
    extra = est.to_dict()
    for key in ("rate_per_hour", "on_demand_rate_per_hour", "steps", "seconds_per_step", "estimate_basis"):
        extra.pop(key, None)
    return extra


def _plan_overhead_rows(est, escape, duration) -> list[tuple[str, str]]:
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
        "estimated_hours": est.hours, "estimated_usd": est.usd, **_plan_extras(est),
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
            *_plan_overhead_rows(est, escape, duration),
            ("est. cost", cost), ("budget", budget), ("run URI", escape(plan["run_uri"])), ("secrets", secrets),
            ("retry", retry_text)]
    console = _console()
    console.print(f"[bold]Plan for {escape(job.name)}[/] ({escape(str(job.path))}): dry run, nothing launched")
    console.print(kv_table(rows))
    return None


def _plot_costs(state, jobs, path: str, stderr: bool = False) -> None:
    from runner.plot import curve, plot_costs

    curves = [c for c in (curve(state, j) for j in jobs) if c is not None]
    if not curves:
        print("plot: no billed time to draw yet", file=sys.stderr)
        return
    try:
        written = plot_costs(curves, path)
    except ImportError:
        _fail("--plot needs matplotlib: pip install matplotlib (or the project's `plot` extra)")
    print(f"plot: {written}", file=sys.stderr if stderr else sys.stdout)


def _print_cost_report(rep) -> None:
    """One job: a card of labelled figures. Several: a table, narrower on a narrow terminal (no figure
    is ever cut short; `--json` and `--csv` have every field). Then the total, in words."""
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    if not rep.jobs:
        console.print("No billed jobs" + (" in that time." if rep.since else " yet."))
        return
    total = rep.total()
    since = f" since {time.strftime('%Y-%m-%d %H:%M', time.localtime(rep.since))}" if rep.since else ""
    if len(rep.jobs) == 1:
        _print_cost_card(console, rep.jobs[0], since)
    else:
        wide = console.width >= 120
        table = Table(box=None, header_style="bold", show_footer=True, title=f"What jobs cost{since}", title_justify="left")
        columns = [("job", "total", lambda c: escape(c.job_id)),
                   ("GPU", "", lambda c: "this machine" if c.capacity == "local" else f"{c.gpu or '?'} {c.capacity}"),
                   ("GPU h", f"{total['gpu_hours']:.2f}", lambda c: f"{c.gpu_hours:.2f}"),
                   ("billed", _money(total["usd"]), lambda c: _money(c.usd) + ("" if c.billed_by == "provider" else "*")),
                   ("on-demand", _money(total["on_demand_usd"]), lambda c: _money(c.on_demand_usd)),
                   ("saved", _money(total["saving_usd"]), lambda c: _money(c.saving_usd)),
                   ("idle h", f"{total['idle_hours']:.2f}", lambda c: f"{c.idle_hours:.2f}"),
                   ("preempted", str(total["preemptions"]), lambda c: str(c.preemptions)),
                   ("work lost", _money(total["lost_usd"]), lambda c: _money(c.lost_usd)),
                   ("$/1k steps", _money(total["usd_per_1k_steps"]), lambda c: _money(c.usd_per_1k_steps)),
                   ("Young/Daly", "", lambda c: f"{c.interval.recommended_minutes:.1f} min" if c.interval else "-")]
        if not wide:
            columns = [col for col in columns if col[0] in ("job", "billed", "saved", "preempted", "work lost")]
        rows = [[cell(c) for _h, _f, cell in columns] for c in rep.jobs]
        for i, (head, foot, _cell) in enumerate(columns):
            # Figures and ids never shrink below their width: a dollar amount cut short is worse than none.
            width = max([len(r[i]) for r in rows] + [len(foot), len(head)])
            table.add_column(head, footer=foot, justify="left" if head in ("job", "GPU") else "right", min_width=width)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        if not wide:
            console.print("[dim]GPU hours, on-demand price, idle time, $ per 1,000 steps and the checkpoint interval: "
                          "on a wider terminal, with `--json` or `--csv`, or per job (`cost JOB`).[/]")
    if any(c.billed_by != "provider" for c in rep.jobs):
        console.print("[dim]* the runner's own observation of each attempt at the rate at launch (no provider billing "
                      "record)[/]")
    if total["on_demand_usd"]:
        share = total["saving_usd"] / total["on_demand_usd"]
        verdict = "saved" if total["saving_usd"] >= 0 else "cost"
        console.print(f"Spot {verdict} [bold]{_money(abs(total['saving_usd']))}[/] ({abs(share):.0%}) against the same "
                      f"hours on-demand; {total['preemptions']} preemption(s) threw away {total['lost_steps']:,} steps "
                      f"({total['lost_hours']:.2f} h, {_money(total['lost_usd'])}) that were trained again.")


def _money(x: float | None) -> str:
    return "-" if x is None else f"${x:,.2f}"


def _print_cost_card(console, c, since: str) -> None:
    """One job's cost as labelled lines."""
    import math

    from rich.markup import escape

    from runner.view import kv_table

    iv = c.interval
    where = "this machine" if c.capacity == "local" else f"{c.gpu or '?'} {c.capacity}"
    mtbf = "with no preemption expected" if iv is None or iv.mtbf_hours == math.inf else f"at MTBF {iv.mtbf_hours:.1f} h"
    saved = (f"spot saved [bold]{_money(c.saving_usd)}[/] ({c.saving_fraction:.0%})" if c.saving_fraction and
             c.saving_usd > 0.005 else f"difference {_money(c.saving_usd)}")
    estimated = "" if c.billed_by == "provider" else "[dim]*[/]"  # the runner's own observation
    rows = [
        ("billed", f"[bold]{_money(c.usd)}[/]{estimated} for {c.gpu_hours:.2f} GPU hours (compute "
                   f"{_money(c.compute_usd)}, disks {_money(c.storage_usd)})"),
        ("on-demand", f"{_money(c.on_demand_usd)} for the same hours: {saved}"),
        ("idle", f"{c.idle_hours:.2f} h billed while not training ({_money(c.idle_usd)}): boot, image, loading"),
        ("preemptions", f"{c.preemptions}: {c.lost_steps:,} steps trained again, {c.lost_hours:.2f} h, "
                        f"{_money(c.lost_usd)}"),
        ("per 1k steps", f"{_money(c.usd_per_1k_steps)} ({c.steps:,} steps)"),
    ]
    if iv is not None:
        rows.append(("checkpoints", f"{escape(iv.in_use)}; Young/Daly: [bold]every {iv.recommended_minutes:.1f} "
                                    f"min[/] for a {iv.checkpoint_seconds:.2f} s checkpoint {mtbf}"))
        rows.append(("", f"[dim]checkpoint: {escape(iv.checkpoint_basis)}; preemptions: {escape(iv.mtbf_basis)}[/]"))
    console.print(f"[bold]{escape(c.job_id)}[/] ({c.state}) on {escape(where)}, {c.attempts} attempt(s){since}")
    console.print(kv_table(rows))


def _scenario(job, gpu, hours, mtbf_hours, checkpoint_seconds, restart_minutes, fixed_minutes, wait_minutes, trace,
              trace_job):
    """The simulated job and, in words, where each figure comes from."""
    from runner import observed
    from runner.catalog import load_catalog
    from runner.cost import estimate, storage_rate
    from runner.cost import restart_minutes as observed_restart
    from runner.simulate import Scenario, parse_trace, trace_from_job

    state = _open_state()
    notes: list[str] = []
    count, spec_job, disks = 1, None, 0.0
    if job is not None:
        from runner.spec import load_job
        from trainer.jobfile import JobFileError

        try:
            spec_job = load_job(str(job), gpu=None if gpu is None else str(gpu))
        except JobFileError as e:
            _fail(str(e))
        count = spec_job.spec.resources.gpu_count
    catalog = load_catalog()
    alias = str(gpu) if gpu is not None else (spec_job.gpus[0].alias if spec_job and spec_job.gpus else "rtx3090")
    gpu_type = catalog.resolve(alias)
    if gpu_type is None:
        _fail(f"unknown GPU {alias!r}; `python -m runner gpus` lists them")
    notes.append(f"{gpu_type.alias} x {count}: ${gpu_type.spot * count:.2f}/h spot, ${gpu_type.on_demand * count:.2f}/h "
                 f"on-demand (catalog)")
    est = estimate(spec_job, state) if spec_job is not None else None
    if spec_job is not None:
        disks = storage_rate("runpod", spec_job.spec.resources.container_disk_gb, spec_job.spec.resources.volume_gb)
        if disks:
            notes.append(f"disks ${disks:.4f}/h ({spec_job.spec.resources.container_disk_gb} GB container, "
                         f"{spec_job.spec.resources.volume_gb} GB volume)")
    if hours is None:
        if est is None or est.hours is None:
            _fail("give --hours (the hours of training the job needs) or a job file whose length can be estimated")
        hours = est.hours
        notes.append(f"{hours:.2f} h of training: {est.steps:,} steps x {est.seconds_per_step:.3f} s ({est.basis})")
    else:
        notes.append(f"{float(hours):g} h of training (given)")
    name = spec_job.name if spec_job else ""
    if checkpoint_seconds is None:
        measured = observed.checkpoint_cost(state, name, gpu_type.alias) if name else None
        checkpoint_seconds = measured.seconds if measured else observed.DEFAULT_CHECKPOINT_SECONDS
        notes.append(f"a checkpoint costs {checkpoint_seconds:.2f} s ("
                     f"{measured.basis if measured else 'assumed: give --checkpoint-seconds'})")
    else:
        notes.append(f"a checkpoint costs {float(checkpoint_seconds):g} s (given)")
    if restart_minutes is None:
        restart_minutes, why = observed_restart(state, "runpod", gpu_type.alias)
        notes.append(f"{restart_minutes:.1f} min billed per launch before training ({why})")
    else:
        notes.append(f"{float(restart_minutes):g} min billed per launch before training (given)")
    times = None
    if trace is not None or trace_job is not None:
        if trace is not None:
            from pathlib import Path

            try:
                times = parse_trace(Path(str(trace)).read_text())
            except (OSError, ValueError) as e:
                _fail(f"--trace {trace}: {e}")
            notes.append(f"preemptions at {len(times)} recorded times ({trace})")
        else:
            recorded = _find(state, trace_job)
            times = trace_from_job(state.segments(recorded.id))
            notes.append(f"preemptions at the {len(times)} times {recorded.id} was preempted")
        mtbf_hours = None
    elif mtbf_hours is None:
        rate = observed.preemption_rate(state, gpu_type.alias, True)
        mtbf_hours = rate.mtbf_hours
        notes.append(f"a preemption every {mtbf_hours:.2f} h of machine time ({rate.basis})")
    else:
        notes.append(f"a preemption every {float(mtbf_hours):g} h of machine time on average (Poisson, given)")
    notes.append(f"{float(wait_minutes):g} min unbilled wait for each new machine")
    try:
        scenario = Scenario(work_hours=float(hours), spot_rate=gpu_type.spot * count, on_demand_rate=gpu_type.on_demand * count,
                            checkpoint_seconds=float(checkpoint_seconds), restart_minutes=float(restart_minutes),
                            mtbf_hours=None if mtbf_hours is None else float(mtbf_hours), trace=times,
                            fixed_minutes=float(fixed_minutes), relaunch_wait_minutes=float(wait_minutes),
                            storage_rate=disks, gpu=gpu_type.alias)
        if scenario.work_hours <= 0 or scenario.checkpoint_seconds <= 0 or scenario.fixed_minutes <= 0 or (
                scenario.mtbf_hours is not None and scenario.mtbf_hours <= 0):
            raise ValueError("hours, mtbf-hours, checkpoint-seconds and fixed-minutes must be positive")
    except (TypeError, ValueError) as e:
        _fail(str(e))
    return scenario, notes


def _print_simulation(scenario, notes: list[str], results, lines: list[str]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    console.print(f"[bold]Simulated: {scenario.work_hours:.1f} h of training on {scenario.gpu}[/]")
    for note in notes:
        console.print(f"  [dim]- {escape(note)}[/]")
    many = results[0].trials > 1
    table = Table(box=None, header_style="bold", title=f"Expected over {results[0].trials} run(s)" if many else "One replay",
                  title_justify="left")
    for col in ("strategy", "cost", "wall h", "billed h", "preempted", "work lost h", "relaunch h", "checkpoint h"):
        table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=col in ("strategy", "cost"))
    for r in results:
        table.add_row(escape(r.strategy.name), f"${r.usd.mean:.2f}", f"{r.wall_h.mean:.1f}", f"{r.uptime_h.mean:.1f}",
                      f"{r.preemptions.mean:.1f}", f"{r.lost_h.mean:.2f}", f"{r.restart_h.mean:.2f}",
                      f"{r.checkpoint_h.mean:.2f}")
    console.print(table)
    for line in lines:
        console.print(line, highlight=False)


def main(argv: list[str] | None = None) -> None:
    import fire

    from runner import cli_args

    # fire reads docstrings through IPython when it is installed: 0.3 s of imports for every --help.
    # Its own fallback reads the same docstrings; the runner never needs IPython.
    sys.modules.setdefault("IPython", None)  # type: ignore[arg-type]
    args = list(sys.argv[1:] if argv is None else argv)
    commands = Commands()
    if not args or args[0] in ("-h", "--help", "help"):
        print(cli_args.main_help(commands))
        return
    if args[0] in ("--version", "-V", "version"):
        print(f"runner {_version()}")
        return
    if args[0] in cli_args.commands(commands) and any(a in ("-h", "--help") for a in args[1:]):
        print(cli_args.command_help(commands, args[0]))
        return
    # The whole line is checked before anything runs: fire would run the command with what it could
    # match and only then complain, so a misspelled --dryrun used to launch the job.
    try:
        name, _words, options = cli_args.parse(commands, args)
    except cli_args.UsageError as e:
        _fail(str(e))
    if os.environ.get("RUNPOD_API_KEY"):  # pods left behind are terminated before anything else
        from runner.runpod.commands import RECONCILING, reconcile_pods

        if name in RECONCILING:
            reconcile_pods()
    spec = cli_args.params(cli_args.commands(commands)[name])
    fire.Fire(commands, command=cli_args.canonical(name, spec, options), name="runner")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spot-runner")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0.1.0 (not installed)"


if __name__ == "__main__":
    main()
