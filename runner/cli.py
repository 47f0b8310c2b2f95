"""``python -m runner``: the command line (fire).

Imports stay inside the commands: ``--help`` and ``status`` must start in a blink, so pydantic,
yaml and rich are loaded only by the commands that use them, and torch never."""

from __future__ import annotations

import os
import sys

from runner import actions, pull, show
from runner.remote.commands import SupervisorCommands
from runner.show import (  # noqa: F401  (EXIT_* are the command line's exit codes)
    EXIT_BAD_INPUT,
    EXIT_DETACHED,
    EXIT_JOB_NOT_DONE,
    EXIT_OK,
    act,
    fail,
    find_job,
    follow,
    new_console,
    open_state,
    print_json,
)


class Commands:
    """Run training jobs on RunPod spot GPUs or on this machine, and bring them back after preemption.

    Start with:  python -m runner submit jobs/quickstart.yaml
    State lives in $RUNNER_HOME (default: $XDG_STATE_HOME/spot-runner).
    """

    supervisor = SupervisorCommands

    def submit(self, job: str, gpu: str | None = None, backend: str | None = None, env: list[str] | None = None,
               supervisor: str | None = None, detach: bool = False, dry_run: bool = False, json: bool = False,
               smoke: bool = False, smoke_first: bool = False, smoke_steps: int | None = None,
               smoke_seconds: float | None = None, stage: str | None = None) -> None:
        """Validate a job file, launch it and follow it until it ends (--detach: return at once).

        Args:
            job: the job file (YAML).
            gpu: GPU alias, RunPod GPU id, or a comma-separated failover list; overrides resources.gpu.
            backend: local, docker or runpod; overrides the job file's backend (default local).
            env: NAME=VALUE for a job variable declared under envs: (give it again for more).
            supervisor: none, docker or runpod: who relaunches it while this machine is off; overrides the job file's.
            detach: launch, print the job id and return; `python -m runner watch` supervises it.
            dry_run: print the plan (backend, GPU, price, estimated time and cost) and launch nothing.
            json: print the job (or the plan) as JSON on stdout; progress goes to stderr.
            smoke: train the job here (CPU or this GPU) for 100 steps or 60 s, launch nothing: does the loss fall,
                any NaN/Inf, gradient norms, memory, speed, and the full job's hours and dollars on the GPU.
            smoke_first: a smoke run first; launch only if it passes.
            smoke_steps: the smoke run's steps at most (default 100).
            smoke_seconds: the smoke run's seconds at most, setting up included (default 60).
            stage: smoke only this stage of a pipeline (default: every stage, in order).
        """
        from runner import submit_flow
        from runner.smoke import SmokeOptions

        smoke_options = SmokeOptions(smoke, smoke_first, smoke_steps, smoke_seconds, stage, dry_run, json)
        return submit_flow.submit(job, gpu=gpu, backend=backend, env=env, supervisor=supervisor, detach=detach,
                                  dry_run=dry_run, json=json, smoke=smoke_options)

    def status(self, job: str | None = None, json: bool = False) -> None:
        """Show one job in detail, or the active and recent jobs.

        Args:
            job: a job id, a unique prefix of one, or a job name (its newest job).
            json: print JSON (one job record, or a list of every job).
        """
        state = open_state()
        if job is None:
            return show.print_jobs(state, None, json, overview=True)
        if state and (stages := state.find_pipeline(job)):
            return show.print_pipeline(state, stages, json)
        from runner.describe import job_record

        row = find_job(state, job)
        record = job_record(state, row, detail=True)
        return print_json(record) if json else show.print_job(state, row, record)

    def list(self, limit: int | None = None, json: bool = False) -> None:
        """List every job, newest first.

        Args:
            limit: show at most this many.
            json: print JSON.
        """
        state = open_state()
        return show.print_jobs(state, state.jobs(limit=limit) if state else [], json)

    def logs(self, job: str, follow: bool = False, attempt: int | None = None) -> None:
        """Print a job's output, attempt by attempt; --follow keeps printing until the job ends.

        Args:
            job: a job id, a unique prefix of one, or a job name.
            follow: keep printing new output, through relaunches, until the job ends.
            attempt: only this attempt number.
        """
        from runner.job_logs import print_logs

        state = open_state()
        return print_logs(state, find_job(state, job), follow, attempt)

    def cancel(self, job: str, json: bool = False) -> None:
        """Stop a job for good: its trainer writes an emergency checkpoint, then nothing of it runs.

        Args:
            job: a job id, a unique prefix of one, or a job name.
            json: print the job as JSON afterwards.
        """
        from runner.describe import job_record

        state = open_state()
        row = find_job(state, job)
        if row.active:
            with new_console(stderr=json).status(f"cancelling {row.id} (its trainer writes an emergency checkpoint first)"):
                row = act(lambda: actions.cancel(state, row))
        elif not json:
            return print(f"{row.id} is already {row.state}; nothing to cancel.")
        return print_json(job_record(state, row)) if json else new_console().print(f"{row.id} {row.state}: {row.reason}")

    def watch(self, forever: bool = False, json: bool = False) -> None:
        """Supervise every active job: adopt running attempts, relaunch after preemptions, until all end.

        Args:
            forever: keep running and pick up jobs submitted later (--detach) too.
            json: print the supervised jobs as JSON at the end; progress goes to stderr.
        """
        state = open_state(create=forever)
        if state is None:
            return print_json([]) if json else print("Nothing to watch: no job was ever submitted here.")
        return follow(state, None, json=json, forever=forever)

    def gpus(self, json: bool = False) -> None:
        """List the GPU types a job can ask for, with memory and prices per GPU-hour.

        Args:
            json: print JSON.
        """
        return show.print_catalog(json)

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
        from runner.cost import parse_since, report

        state = open_state()
        since_t = act(lambda: parse_since(since)) if since is not None else None
        stages = state.find_pipeline(job) if state and job is not None else []
        jobs = stages or ([find_job(state, job)] if job is not None else (state.jobs() if state else []))
        return show.print_costs(state, jobs, report(state, jobs, since=since_t), json=json, csv=csv, plot=plot)

    def curves(self, job: str, out: str | None = None, json: bool = False) -> None:
        """Draw a job's loss curves (train and validation) from its run, one colour per attempt, with
        the steps a preemption made it train twice shaded.

        Args:
            job: a job id, a unique prefix of one, or a job name (its newest job).
            out: the picture to write (PNG, or any format matplotlib knows from the suffix);
                default: <job id>-curves.png here.
            json: also print the curves as JSON on stdout.
        """
        state = open_state()
        return show.print_curves(state, find_job(state, job), out, json)

    def pull(self, job: str, to: str | None = None, json: bool = False) -> None:
        """Bring a job's results home: final/ weights, samples, report and TensorBoard events.

        Args:
            job: a job id, a unique prefix of one, a job name, or a pipeline (a folder per stage).
            to: the folder to copy into (default: ./<job id>).
            json: print what was copied as JSON.
        """
        return pull.pull(open_state(), job, to, json)

    def report(self, job: str, json: bool = False) -> None:
        """Print a finished job's report: validation loss, perplexity, accuracy, samples, hours, cost.

        Args:
            job: a job id, a unique prefix of one, a job name, or a pipeline (every stage).
            json: print report.json, with what the runner billed, instead.
        """
        return pull.report(open_state(), job, json)

    def resume(self, job: str, budget: float | None = None, detach: bool = False, json: bool = False) -> None:
        """Go on with an ended job from its last checkpoint: one stopped over budget, cancelled or failed.

        Args:
            job: a job id, a unique prefix of one, or a job name (its newest job).
            budget: the job's new budget in USD (its budget.max_usd); needed when it stopped over budget.
            detach: relaunch, print the job id and return; `python -m runner watch` supervises it.
            json: print the job as JSON at the end; progress goes to stderr.
        """
        from runner import submit_flow

        return submit_flow.resume(job, budget=budget, detach=detach, json=json)

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
        from runner.simulate import ScenarioError, build_scenario, simulate

        scenario, notes = act(lambda: build_scenario(open_state(), job, gpu, hours, mtbf_hours, checkpoint_seconds,
                                                     restart_minutes, fixed_minutes, wait_minutes, trace, trace_job),
                              ScenarioError)
        if int(trials) < 1:
            fail("--trials must be at least 1")
        return show.print_simulation(scenario, notes, simulate(scenario, trials=int(trials), seed=int(seed)),
                                     json=json, plot=plot)

    def check(self, job: str | None = None, json: bool = False) -> None:
        """Check what jobs rely on: RunPod key, S3 bucket, registry login, Docker engine, GPU; ok or the fix.

        Args:
            job: a job file: check what it needs (its bucket with its trainer's keys, its registry, its backend).
            json: print JSON.
        """
        from runner.check import main as check_main
        return check_main(job, json)

    def prune(self, dry_run: bool = False, json: bool = False) -> None:
        """Remove what ended jobs left: exited containers, images built for them, stray RunPod pods of ours.

        Args:
            dry_run: list what would be removed and remove nothing.
            json: print JSON.
        """
        from runner.prune import main as prune_main
        return prune_main(dry_run, json)

    def tensorboard(self, job: str, port: int = 6006) -> None:
        """Serve a job's TensorBoard on 127.0.0.1; an S3 run's events are copied here, and again as they grow.

        Args:
            job: a job id, a unique prefix of one, or a job name (its newest job).
            port: the port to serve on (when it is taken, a free one).
        """
        from runner.tensorboard import serve
        return serve(job, port)


def main(argv: list[str] | None = None) -> None:
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
        print(cli_args.help_for(commands, args))
        return
    # The whole line is checked before anything runs: fire would run the command with what it could
    # match and only then complain, so a misspelled --dryrun used to launch the job.
    try:
        name, _words, options = cli_args.parse(commands, args)
    except cli_args.UsageError as e:
        fail(str(e))
    if os.environ.get("RUNPOD_API_KEY"):  # pods left behind are terminated before anything else
        from runner.runpod.commands import RECONCILING, reconcile_pods

        if name in RECONCILING:
            reconcile_pods()
    import fire  # after --help and the checks: its imports (asyncio) cost 70 ms

    spec = cli_args.params(cli_args.method(commands, name))
    fire.Fire(commands, command=cli_args.canonical(name, spec, options), name="runner")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spot-runner")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0.1.0 (not installed)"


if __name__ == "__main__":
    main()
