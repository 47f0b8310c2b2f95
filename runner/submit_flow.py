"""``runner submit`` and ``runner resume``: from the command line's values to a recorded job that is
launched and followed here, or handed to a background launcher (``--detach``).

:mod:`runner.cli` only parses; the checks before anything is recorded live in :mod:`runner.actions`,
what is printed in :mod:`runner.show`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from runner import actions
from runner.show import EXIT_BAD_INPUT, act, fail, follow, new_console


def parse_variables(items: Iterable[Any] | None) -> dict[str, str]:
    """``--env NAME=VALUE`` options as a mapping; a malformed one exits 2 with an example."""
    variables: dict[str, str] = {}
    for item in items or []:
        name, sep, value = str(item).partition("=")
        if not sep or not name:
            fail(f"--env {item!r}: expected NAME=VALUE, e.g. --env PRESET=tiny", EXIT_BAD_INPUT)
        variables[name] = value
    return variables


def load(job: str, gpu: Any = None, backend: str | None = None, env: Iterable[Any] | None = None,
         supervisor: str | None = None) -> Any:
    """The validated job file with the command line's overrides; an invalid one exits 2 with every problem."""
    from runner.spec import load_job
    from trainer.jobfile import JobFileError

    if isinstance(gpu, (tuple, list)):  # fire turns "a,b" into a tuple
        gpu = ",".join(map(str, gpu))
    try:
        return load_job(str(job), gpu=None if gpu is None else str(gpu), backend=backend, env=parse_variables(env),
                        supervisor=supervisor)
    except JobFileError as e:
        fail(f"{e}\nNothing was launched; fix the file and submit again.")


def submit(job: str, *, gpu: Any = None, backend: str | None = None, env: Iterable[Any] | None = None,
           supervisor: str | None = None, detach: bool = False, dry_run: bool = False, json: bool = False,
           smoke: Any = None) -> None:
    """Validate, then plan (``dry_run``), or check (:mod:`runner.preflight`), record and launch: followed
    here until the job ends (exit 1 unless it ended done), or with ``detach`` handed to a background
    launcher as soon as it is recorded (:mod:`runner.background`). ``smoke``
    (:class:`runner.smoke.SmokeOptions`) runs the smoke run first when asked for: instead of launching, or as
    the gate before it."""
    spec_job = load(job, gpu, backend, env, supervisor)
    if smoke is not None:
        from runner.smoke import before_submit

        before_submit(spec_job, smoke)
    if dry_run:
        from runner.show import print_plan

        return print_plan(spec_job, json)
    if spec_job.spec.stages:
        state, rows, done = act(lambda: actions.submit_pipeline(spec_job))
        kept = "".join(f"\nstage {r.stage} is done already: {r.run_uri}" for r in done)
        if not rows:
            return new_console().print(f"pipeline {done[0].pipeline} is done: every stage finished{kept}", highlight=False)
        if detach:
            return _launch_detached(state, rows[0], json, f"pipeline {rows[0].pipeline} recorded")
        return follow(state, [r.id for r in rows], json=json,
                      announce=f"submitted pipeline {rows[0].pipeline}: {', '.join(r.stage for r in rows)}{kept}")
    state, row = act(lambda: actions.submit(spec_job))
    if detach:
        return _launch_detached(state, row, json, "recorded")
    return follow(state, [row.id], json=json, announce=f"submitted {row.id}: run {row.run_uri}")


def resume(job: str, *, budget: float | None = None, detach: bool = False, json: bool = False) -> None:
    """Reopen an ended job (with a new budget if given) and relaunch it from its last checkpoint."""
    from runner.show import find_job, open_state

    state = open_state()
    row = find_job(state, job)
    note, spent = act(lambda: actions.reopen(state, row, budget))
    if detach:
        return _launch_detached(state, row, json, f"reopened{note}")
    return follow(state, [row.id], json=json, announce=f"resuming {row.id}{note} (spent so far: ${spent:.2f})")


def _launch_detached(state: Any, row: Any, json: bool, what: str) -> None:
    """Hand the recorded job to a background launcher and return at once."""
    from runner import background
    from runner.show import print_detached

    if state.job(row.id).remote:  # handed over at submit: its supervisor elsewhere launches it, not this machine
        return print_detached(state, row, json, what, None, None)
    pid, log = background.spawn(state, row.id)
    return print_detached(state, row, json, what, pid, log)
