"""What the commands do to jobs, apart from showing them: record a submitted job, reopen an ended one,
cancel a running one. Each refuses with an :class:`ActionError` whose message says what to do, and
nothing is recorded or launched when it does. :mod:`runner.cli` calls these; :mod:`runner.show`
prints the outcome."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any


class ActionError(Exception):
    """The action cannot be done: the message says why and what to do; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _missing_secrets(names: list[str], environ: Mapping[str, str]) -> list[str]:
    from runner.secret_guard import forwarded

    return forwarded(names, environ)[1]


def check_inputs(spec_job: Any, environ: Mapping[str, str] = os.environ, extra: Sequence[tuple[str, str]] = ()) -> list[Any]:
    """Every location the job reads (its data, and ``extra`` ``(field, URI)`` pairs such as a stage's
    ``init_from``) exists and is readable with the trainer's credentials: checked here, before an
    image is built or pushed or a pod is started. What each holds (``runner.datacheck.DataLocation``)."""
    from runner.backends import BackendError
    from runner.datacheck import DataCheckError, check_job_data

    try:
        found = check_job_data(spec_job, extra, environ)
    except DataCheckError as e:
        raise ActionError(f"{e}\nNothing was built or launched; fix the location (or upload the data) and submit again.") from None
    try:
        _check_image_contents(spec_job)
    except BackendError as e:
        raise ActionError(f"{e}\nNothing was built or launched.") from None
    return found


def _check_image_contents(spec_job: Any) -> None:
    """A job whose image is built from its project must find every local file it reads in that image:
    the .dockerignore is applied now (no engine needed), not after a build and a push."""
    if spec_job.backend not in ("docker", "runpod"):
        return
    from runner.backends.docker_image import check_contents, context_files, find_context

    settings = spec_job.spec.image
    if settings.name:  # a prebuilt image: what is in it is its maker's business
        return
    context, dockerfile = find_context(spec_job.path, settings)
    check_contents(spec_job.path, context, context_files(context, dockerfile))


def _check_launchable(spec_job: Any, environ: Mapping[str, str], extra: Sequence[tuple[str, str]] = ()) -> None:
    """The job fits its GPUs, its backend works here, its secrets are set in this shell, and what it
    reads is there."""
    from runner.backends import BackendError, get_backend
    from runner.memory import MemoryFitError, check_fit

    try:
        notes = check_fit(spec_job)
    except MemoryFitError as e:
        raise ActionError(str(e)) from None
    if notes:
        from rich.markup import escape

        from runner.show import new_console

        for note in notes:
            new_console(stderr=True).print(f"[yellow]note:[/] {escape(note)}")
    try:
        get_backend(spec_job.backend).preflight(spec_job.spec.resources.gpu_count)
    except BackendError as e:
        raise ActionError(f"{e}\nNothing was launched.") from None
    missing = _missing_secrets(spec_job.spec.secrets, environ)
    if missing:
        raise ActionError(f"{spec_job.path}: secrets: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} listed "
                          f"but not set in this shell; export {'it' if len(missing) == 1 else 'them'} and submit again. "
                          f"Nothing was launched.")
    check_inputs(spec_job, environ, extra)


def submit(spec_job: Any, environ: Mapping[str, str] = os.environ) -> tuple[Any, Any]:
    """Check that the job can be launched here (its backend, its secrets), then record it: (state, job row)."""
    _check_launchable(spec_job, environ)
    import secrets as token

    from runner import paths
    from runner.state import State

    state = State.open(create=True)
    job_id = f"{spec_job.name}-{token.token_hex(3)}"
    root = spec_job.storage_root or str(paths.default_runs_dir())
    row = state.create_job(id=job_id, name=spec_job.name, job_file=str(spec_job.path), job_sha256=spec_job.sha256,
                           spec=spec_job.spec, workdir=os.getcwd(), backend=spec_job.backend,
                           run_uri=f"{root.rstrip('/')}/{job_id}", max_steps=spec_job.train.max_steps or 0)
    return state, row


def submit_pipeline(spec_job: Any, environ: Mapping[str, str] = os.environ) -> tuple[Any, list[Any], list[Any]]:
    """Record a pipeline's stages as jobs, each a run of its own under ``<storage>/<pipeline id>/<stage>``,
    each starting from its inputs: (state, stages to run, stages already done).

    Submitting the same pipeline again (same stages, same train: sections, same storage) goes on with
    it: finished stages are kept, the first unfinished one resumes from its own checkpoints."""
    from trainer.contract import BEST

    given = [(f"stages.{stage}.init_from", _checkpoint_file(ref)) for stage, section in spec_job.spec.stages.items()
             for ref in section.inputs().values() if ref not in spec_job.spec.stages]  # earlier stages' come later
    _check_launchable(spec_job, environ, given)
    import secrets as token

    from runner import paths
    from runner.state import State

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
                stage=stage, inputs=inputs))
    return state, rows, []


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


def reopen(state: Any, row: Any, budget: Any, environ: Mapping[str, str] = os.environ) -> tuple[str, float]:
    """Reopen an ended job to relaunch it from its last checkpoint, with a new budget if given:
    (a note on the budget for messages, dollars spent so far)."""
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
