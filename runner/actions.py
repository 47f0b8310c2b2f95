"""What the commands do to jobs, apart from showing them: record a submitted job, reopen an ended one,
cancel a running one. Each refuses with an :class:`ActionError` whose message says what to do, and
nothing is recorded or launched when it does. :mod:`runner.cli` calls these; :mod:`runner.show`
prints the outcome."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from runner.action_error import ActionError

__all__ = ["ActionError"]


def _missing_secrets(names: list[str], environ: Mapping[str, str]) -> list[str]:
    from runner.secret_guard import forwarded

    return forwarded(names, environ)[1]


def _preflight(spec_job: Any, environ: Mapping[str, str], extra: Sequence[tuple[str, str]] = ()) -> None:
    """Everything the job needs here (:mod:`runner.preflight`) and in its GPUs' memory (:mod:`runner.memory`),
    or a refusal listing every problem at once. What else the user should hear goes to stderr."""
    from runner import preflight
    from runner.memory import MemoryFitError, check_fit

    problems: list[str] = []
    try:
        _note(check_fit(spec_job))
    except MemoryFitError as e:
        problems.append(str(e))
    problems += preflight.check(spec_job, environ, extra).problems
    if problems:
        raise ActionError(preflight.refusal(problems))


def _note(notes: list[str]) -> None:
    if notes:
        from rich.console import Console
        from rich.markup import escape

        console = Console(stderr=True, highlight=False, soft_wrap=True)  # as runner.show's (which imports this module)
        for note in notes:
            console.print(f"[yellow]note:[/] {escape(note)}")


def submit(spec_job: Any, environ: Mapping[str, str] = os.environ) -> tuple[Any, Any]:
    """Check everything the job needs here (:mod:`runner.preflight`), then record it: (state, job row)."""
    _preflight(spec_job, environ)
    import secrets as token

    from runner import paths
    from runner.state import State

    image_ref = _prepare_remote(spec_job, environ)
    state = State.open(create=True)
    job_id = f"{spec_job.name}-{token.token_hex(3)}"
    root = spec_job.storage_root or str(paths.default_runs_dir())
    row = state.create_job(id=job_id, name=spec_job.name, job_file=str(spec_job.path), job_sha256=spec_job.sha256,
                           spec=spec_job.spec, workdir=os.getcwd(), backend=spec_job.backend,
                           run_uri=f"{root.rstrip('/')}/{job_id}", max_steps=spec_job.train.max_steps or 0,
                           supervisor=spec_job.spec.supervisor, image_ref=image_ref)
    if row.remote:
        from runner.remote.client import hand_over

        hand_over(state, [row], spec_job, environ)
    return state, state.job(row.id)


def _prepare_remote(spec_job: Any, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """For a job supervised elsewhere, what must hold before it is recorded: the image its pods run."""
    if spec_job.spec.supervisor == "none":
        return None
    from runner.remote.client import prepare

    return prepare(spec_job, environ)


def submit_pipeline(spec_job: Any, environ: Mapping[str, str] = os.environ) -> tuple[Any, list[Any], list[Any]]:
    """Record a pipeline's stages as jobs, each a run of its own under ``<storage>/<pipeline id>/<stage>``,
    each starting from its inputs: (state, stages to run, stages already done).

    Submitting the same pipeline again (same stages, same train: sections, same storage) goes on with
    it: finished stages are kept, the first unfinished one resumes from its own checkpoints."""
    from trainer.contract import BEST

    given = [(f"stages.{stage}.init_from", _checkpoint_file(ref)) for stage, section in spec_job.spec.stages.items()
             for ref in section.inputs().values() if ref not in spec_job.spec.stages]  # earlier stages' come later
    _preflight(spec_job, environ, given)
    import secrets as token

    from runner import paths
    from runner.state import State

    image_ref = _prepare_remote(spec_job, environ)
    state = State.open(create=True)
    spec = spec_job.spec
    root = (spec_job.storage_root or str(paths.default_runs_dir())).rstrip("/")
    earlier = _same_pipeline(state, spec, root)
    if earlier:
        running = [r for r in earlier if r.active]
        if running:
            raise ActionError(f"pipeline {earlier[0].pipeline} is already running (stage {running[0].stage}: "
                              f"{running[0].state}); `python -m runner watch` follows it")
        done = [r for r in earlier if r.state == "done"]
        for row in earlier[len(done):]:
            reopen(state, row, None, environ)
        return state, [state.job(r.id) for r in earlier[len(done):]], done

    pipeline = f"{spec_job.name}-{token.token_hex(3)}"
    rows = []
    with state.transaction():
        for stage, section in spec.stages.items():
            inputs = {key: (f"{root}/{pipeline}/{ref}/{BEST}" if ref in spec.stages else ref)
                      for key, ref in section.inputs().items()}
            rows.append(state.create_job(
                id=f"{pipeline}.{stage}", name=f"{spec_job.name}.{stage}", job_file=str(spec_job.path),
                job_sha256=spec_job.sha256, spec=spec.stage_spec(stage), workdir=os.getcwd(), backend=spec_job.backend,
                run_uri=f"{root}/{pipeline}/{stage}", max_steps=section.train.max_steps or 0, pipeline=pipeline,
                stage=stage, inputs=inputs, supervisor=spec.supervisor, image_ref=image_ref))
    if rows[0].remote:
        from runner.remote.client import hand_over

        hand_over(state, rows, spec_job, environ)
    return state, [state.job(r.id) for r in rows], []


def _checkpoint_file(uri: str) -> str:
    """``<run>/best`` and ``<run>/latest`` name a run's checkpoint files (as the trainer reads them)."""
    from trainer.contract import BEST, LATEST

    for suffix, key in (("/best", BEST), ("/latest", LATEST)):
        if uri.rstrip("/").endswith(suffix):
            return uri.rstrip("/").removesuffix(suffix) + "/" + key
    return uri


def _same_pipeline(state: Any, spec: Any, root: str) -> list[Any]:
    """The newest recorded pipeline of this name with the same stages, train: sections and storage."""
    for pipeline in state.pipelines_named(spec.name):
        rows = state.pipeline_jobs(pipeline)
        if [r.stage for r in rows] == list(spec.stages) and all(
                r.run_uri == f"{root}/{pipeline}/{r.stage}" and r.spec.train == spec.stages[r.stage].train for r in rows):
            return rows
    return []


def reopen(state: Any, row: Any, budget: Any, environ: Mapping[str, str] = os.environ,
           here: bool = False) -> tuple[str, float]:
    """Reopen an ended job to relaunch it from its last checkpoint, with a new budget if given:
    (a note on the budget for messages, dollars spent so far). A job supervised elsewhere is reopened
    by its supervisor, asked through the job's storage (``here``: this process is that supervisor)."""
    if row.remote and not here:
        from runner.remote.client import resume

        return resume(state, row, budget)
    if row.active:
        raise ActionError(f"{row.id} is {row.state}, not ended: nothing to resume (`python -m runner watch` supervises it)")
    if row.state == "done":
        raise ActionError(f"{row.id} is done: its final weights are in {row.run_uri}/final")
    spent = state.spent(row.id)
    current = row.spec.budget.max_usd if row.spec.budget else None
    if budget is not None:
        try:
            budget = float(budget)
        except (TypeError, ValueError):
            raise ActionError(f"--budget {budget!r}: expected a number of dollars") from None
        if budget <= spent:
            raise ActionError(f"{row.id} has spent ${spent:.2f} already: a budget of ${budget:.2f} would stop it at "
                              f"once; give more than ${spent:.2f}")
    elif current is not None and spent >= current:
        raise ActionError(f"{row.id} has spent ${spent:.2f} of its ${current:.2f} budget: resume it with a larger one, "
                          f"e.g. --budget {max(current * 1.5, spent + 1):.2f}")
    missing = _missing_secrets(row.spec.secrets, environ)
    if missing:
        raise ActionError(f"{row.id} needs {', '.join(missing)} in the environment to launch; export "
                          f"{'it' if len(missing) == 1 else 'them'} and resume again. Nothing was launched.")
    if budget is not None:
        state.raise_budget(row.id, budget)
    note = f" with a ${budget:.2f} budget" if budget is not None else ""
    state.reopen(row.id, f"resumed{note} after it was {row.state}: relaunching from the last checkpoint")
    return note, spent


def cancel(state: Any, row: Any) -> Any:
    """Ask the job's supervisor to stop it (its trainer writes an emergency checkpoint first), or do it
    here when nobody supervises it; wait until it has ended. The ended job's row."""
    from runner.supervisor import STOP_GRACE_SECONDS, Supervisor

    if row.remote:
        from runner.remote.client import cancel as cancel_elsewhere

        return cancel_elsewhere(state, row)
    state.request_cancel(row.id)
    deadline = time.monotonic() + STOP_GRACE_SECONDS + 120
    while state.job(row.id).active:
        if not state.job(row.id).supervised():  # nobody supervises it: do it here
            Supervisor(state).run([row.id])
            continue
        if time.monotonic() > deadline:
            raise ActionError(f"{row.id} is still {state.job(row.id).state}; its supervisor (pid {row.supervisor_pid}) "
                              f"has not stopped it yet: check `python -m runner status {row.id}`", code=1)
        time.sleep(0.2)
    return state.job(row.id)
