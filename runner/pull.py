"""``runner pull JOB [--to DIR]`` and ``runner report JOB``: what a run's finish wrote, brought home.

The trainer's finish (``trainer/finish.py``) leaves in the run URI ``final/`` (the chosen weights,
and ``final/merged`` for LoRA), ``samples/``, ``report.json`` and ``report.md``; TensorBoard events
are there from the start. ``pull`` copies those (``trainer.contract.PULLED``) into a folder with the
run's layout, from a local run folder or S3, with the job's own S3 settings (its ``env:``, and the
credentials its ``secrets:`` forward from this shell). ``report`` prints ``report.md`` and what the
runner itself billed for the job. A pipeline (its id or name) gives every stage, in order.

Imports stay inside the functions: the command line imports this module for every command."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.show import fail, new_console, print_json


@dataclass
class Pulled:
    job_id: str
    stage: str | None
    folder: Path
    files: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "stage": self.stage, "folder": str(self.folder), "files": self.files,
                "bytes": self.bytes}


@contextlib.contextmanager
def _job_environment(row) -> Iterator[None]:
    """This process's environment as the job's trainer has it, for its storage settings: the job's
    ``env:`` (an S3 endpoint, a region) over this shell's (the credentials ``secrets:`` forward)."""
    from runner.datacheck import trainer_environ

    saved = dict(os.environ)
    try:
        wanted = trainer_environ(row, os.environ)
        for name in [n for n in os.environ if n.startswith("AWS_") and n not in wanted]:
            del os.environ[name]
        os.environ.update({k: v for k, v in wanted.items() if k.startswith("AWS_")})
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def open_run(row):
    """The storage of a job's run URI."""
    from trainer.storage import open_storage

    with _job_environment(row):
        return open_storage(row.run_uri)


def _jobs(state, ref: str) -> list:
    from runner.show import find_job

    if state is not None and (stages := state.find_pipeline(ref)):
        return stages
    return [find_job(state, ref)]


def pull_keys(storage) -> list[str]:
    """The keys of the run that ``pull`` brings home (``trainer.contract.PULLED``), sorted."""
    from trainer import contract

    keys: set[str] = set()
    for item in contract.PULLED:
        if item.endswith("/"):
            keys.update(storage.list(item))
        elif storage.get_bytes(item) is not None:
            keys.add(item)
    return sorted(k for k in keys if not Path(k).name.startswith("."))


def pull_run(row, folder: Path, progress, task) -> Pulled:
    """Copy one job's results into ``folder``, advancing ``progress`` (a rich Progress) by file."""
    from trainer.storage import StorageError

    storage = open_run(row)
    try:
        keys = pull_keys(storage)
        progress.update(task, total=(progress.tasks[task].total or 0) + len(keys))
        size = 0
        for key in keys:
            progress.update(task, description=f"{row.id}: {key}")
            target = folder / key
            if not storage.get_file(key, target):
                raise StorageError(f"{key} vanished from {storage.uri} while it was copied")
            size += target.stat().st_size
            progress.advance(task)
        return Pulled(row.id, row.stage, folder, len(keys), size)
    finally:
        storage.close()


def pull(state, ref: str, to: str | None, json: bool) -> None:
    """``runner pull``: every file of ``contract.PULLED`` of a job (or each stage of a pipeline) into
    ``to`` (default ``./<job id>``; a pipeline's stages in a folder each)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trainer import contract

    jobs = _jobs(state, ref)
    root = Path(to) if to else Path.cwd() / (jobs[0].pipeline if len(jobs) > 1 or jobs[0].stage else jobs[0].id)
    console = new_console(stderr=True)
    done: list[Pulled] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("listing", total=0)
        for row in jobs:
            try:
                done.append(pull_run(row, root / row.stage if row.stage else root, progress, task))
            except Exception as e:  # storage refused or failed: which run, and why
                progress.stop()
                fail(f"cannot copy the results of {row.id} from {row.run_uri}: {e}", code=1)
    if json:
        return print_json([p.to_dict() for p in done] if len(jobs) > 1 else done[0].to_dict())
    out = new_console()
    for p, row in zip(done, jobs, strict=True):
        missing = "" if (p.folder / contract.FINAL_DIR).is_dir() else f" (no {contract.FINAL_DIR}/ yet: the job is {row.state})"
        out.print(f"{p.job_id}: {p.files} file(s), {p.bytes / 1e6:.1f} MB in {p.folder}{missing}")
    if not any(p.files for p in done):
        fail(f"nothing to pull from {ref}: its run holds no results yet", code=1)
    return None


def billed(state, row) -> dict[str, Any]:
    """What the runner recorded for the job: billed GPU hours, dollars and preemptions."""
    from runner.cost import job_cost

    c = job_cost(state, row)
    return {"gpu_hours": round(c.gpu_hours, 6), "usd": round(c.usd, 4), "preemptions": c.preemptions,
            "attempts": c.attempts, "billed_by": c.billed_by}


def report(state, ref: str, json: bool) -> None:
    """``runner report``: the trainer's report.md (or report.json, rendered) of a job or of each stage
    of a pipeline, with what the runner billed for it."""
    from trainer import contract
    from trainer.storage_api import StorageError

    reports = []
    for row in _jobs(state, ref):
        try:
            storage = open_run(row)
            try:
                raw_json, raw_md = storage.get_bytes(contract.REPORT_JSON), storage.get_bytes(contract.REPORT_MD)
            finally:
                storage.close()
        except (StorageError, OSError) as e:
            fail(f"cannot read the report of {row.id} under {row.run_uri}: {e}", code=1)
        if raw_json is None and raw_md is None:
            fail(f"{row.id} has no report yet (it is {row.state}): the trainer writes {contract.REPORT_MD} when "
                 f"training is over", code=1)
        data = _loads(raw_json) if raw_json is not None else {}
        reports.append((row, data, raw_md.decode("utf-8", errors="replace") if raw_md else _render(data)))
    if json:
        records = [{**data, "job_id": row.id, "billed": billed(state, row)} for row, data, _ in reports]
        return print_json(records if len(records) > 1 else records[0])
    for row, _data, text in reports:
        b = billed(state, row)
        print(text.rstrip() + "\n")
        print(f"Billed (the runner's records for {row.id}): {b['gpu_hours']:.3f} GPU hours, ${b['usd']:.2f}, "
              f"{b['preemptions']} preemption(s), {b['attempts']} attempt(s).\n")
    return None


def _loads(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _render(data: dict[str, Any]) -> str:
    """A report.json without its report.md, as lines of text."""
    lines = [f"# {data.get('job', '?')}: training report", ""]
    for name, values in (data.get("validation") or {}).items():
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        lines.append(f"- {name}: {shown}")
    for key in ("steps", "train_hours", "billed_hours", "usd", "preemptions"):
        if data.get(key) is not None:
            lines.append(f"- {key}: {data[key]}")
    return "\n".join(lines) + "\n"
