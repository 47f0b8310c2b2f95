"""Before anything is paid for (an image build or push, a pod), every location a job reads from must
exist and be readable with the credentials its trainer will get: a dataset that is missing, or a
bucket the keys cannot read, is found at ``submit``, not after a pod has started and failed.

Locations are ``(field, location)`` pairs: the job's ``train.data.train``/``val`` entries, plus any
the caller adds (a pipeline stage's ``init_from`` weights). A local path must exist (relative to the
job file's folder); an ``s3://`` location is listed (how many files, how many bytes) and one of its
objects is HEADed, through the trainer's own S3 client (:mod:`trainer.dataset_cache`), with the
environment the trainer will have: the job's ``env:`` and the ``secrets:`` it forwards, nothing else
of this shell's ``AWS_*``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DataCheckError", "DataLocation", "check_data", "check_job_data", "job_data_locations", "trainer_environ"]


class DataCheckError(Exception):
    """One or more locations are missing or unreadable; the message names each, and what to do."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class DataLocation:
    """A location the job reads: its field, where it is, and what it holds (or why it cannot be used)."""

    field: str
    location: str
    kind: str  # "file" or "folder"; "" when it was not found
    files: int
    bytes: int
    #: Why it cannot be used (the message, with the job file's line and the fix); None when it can.
    problem: str | None = None

    def summary(self) -> str:
        what = "1 file" if self.kind == "file" else f"{self.files:,} file{'s' if self.files != 1 else ''}"
        return f"{what}, {human_bytes(self.bytes)}"


def job_data_locations(job: Any) -> list[tuple[str, str]]:
    """``(field, location)`` for each entry of ``data.train`` and ``data.val`` of the job's train:
    section, or of every stage's for a pipeline."""
    stages = job.spec.stages or {}
    sections = [(f"stages.{name}.train", stage.train) for name, stage in stages.items()] or [("train", job.train)]
    found: list[tuple[str, str]] = []
    for prefix, train in sections:
        data = getattr(train, "data", None)
        for key in ("train", "val") if data is not None else ():
            value = getattr(data, key, None)
            if isinstance(value, str):
                found.append((f"{prefix}.data.{key}", value))
            elif isinstance(value, list):
                found += [(f"{prefix}.data.{key}[{i}]", v) for i, v in enumerate(value)]
    return found


def trainer_environ(job: Any, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The ``AWS_*`` settings the job's trainer will have: its ``env:`` and forwarded ``secrets:``
    (this shell's other ``AWS_*`` variables never reach it, so they must not make the check pass)."""
    from runner.secret_guard import forwarded

    values, _missing = forwarded(list(job.spec.secrets), environ)
    env = {k: v for k, v in environ.items() if not k.startswith("AWS_")}
    env.update(job.spec.env_text())
    env.update(values)
    return env


def check_data(locations: Sequence[tuple[str, str]], base: str | Path, environ: Mapping[str, str] | None = None,
               where: Mapping[str, str] | None = None, *, strict: bool = True) -> list[DataLocation]:
    """Check each ``(field, location)``: it exists, and for ``s3://`` the credentials in ``environ``
    list it and read one object. Relative local paths are relative to ``base`` (the job file's folder).

    ``where`` maps a field to the ``file:line`` it comes from, for the messages. Returns what each
    location holds, in order. ``strict``: raise :class:`DataCheckError` naming every problem at once;
    otherwise the problems are returned in :attr:`DataLocation.problem` (for a plan that shows them)."""
    from trainer.dataset_cache import is_remote, list_location
    from trainer.storage_api import StorageError

    found: list[DataLocation] = []
    for field, location in locations:
        prefix = f"{(where or {}).get(field, '')}: {field}".lstrip(": ")
        try:
            listing = list_location(location, base, environ)
        except FileNotFoundError as e:
            fix = "" if is_remote(location) else "; paths are relative to the job file's folder: fix the path or create the data"
            problem = f"{prefix}: {e}{fix}"
        except StorageError as e:
            hint = ""
            if "no S3 credentials" in str(e):
                hint = " (list AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY under `secrets:` in the job and export them)"
            problem = f"{prefix}: cannot read {location}: {e}{hint}"
        except Exception as e:  # an S3 store that kept failing: say so now rather than on a paid pod
            problem = f"{prefix}: cannot check {location}: {e}"
        else:
            found.append(DataLocation(field, location, listing.kind, listing.files, listing.bytes))
            continue
        found.append(DataLocation(field, location, "", 0, 0, problem))
    problems = [d.problem for d in found if d.problem]
    if problems and strict:
        raise DataCheckError(problems)
    return found


def check_job_data(job: Any, extra: Sequence[tuple[str, str]] = (), environ: Mapping[str, str] = os.environ,
                   *, strict: bool = True) -> list[DataLocation]:
    """:func:`check_data` for a job loaded by ``runner.spec.load_job``: its data entries, then ``extra``
    (for example ``[("stages.vqvae.init_from", "s3://runs/.../best.pt")]``), with the environment its
    trainer will have. Messages point at the job file's lines."""
    locations = [*job_data_locations(job), *extra]
    if not locations:
        return []
    return check_data(locations, Path(job.path).parent, trainer_environ(job, environ), _lines(job.path, locations),
                      strict=strict)


def _lines(path: Path, locations: Sequence[tuple[str, str]]) -> dict[str, str]:
    """``file:line`` of each field that can be found in the job file (``train.data.train[1]`` style)."""
    import re

    from trainer.jobfile import load_yaml

    try:
        doc = load_yaml(path)
    except Exception:  # already validated by the caller; a second read that fails only loses lines
        return {}
    out = {}
    for field, _location in locations:
        loc = (int(index) if index else name for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field))
        out[field] = doc.where(tuple(loc))
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
