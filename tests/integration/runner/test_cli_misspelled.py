"""A misspelled option never does anything: for every command, exit 2 with a suggestion, and no job,
event, attempt or process comes of it.

Before the whole command line was checked up front, fire ran ``submit JOB --dryrun`` in full (and
``watch --forevr`` supervised, ``cancel JOB --jsn`` cancelled) and complained only afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from runner import cli_args
from runner.cli import Commands
from runner.spec import load_job
from runner.state import State
from tests.fixtures.jobs import ROOT, make_job, trainer_env
from tests.unit.runner.test_cli_args import misspell


def _every_command(obj, prefix: str = "") -> dict[str, object]:
    """Every command as typed (``submit``, ``supervisor up``): a group's subcommands each in their own right."""
    found: dict[str, object] = {}
    for name, member in cli_args.commands(obj).items():
        if cli_args.is_group(member):
            found.update(_every_command(member(), f"{prefix}{name} "))
        else:
            found[prefix + name] = member
    return found


COMMANDS = _every_command(Commands())
#: Those with an option to misspell (``supervisor run`` has none).
WITH_OPTIONS = sorted(n for n, c in COMMANDS.items() if any(not p.positional for p in cli_args.params(c)))


def processes_with(marker: str) -> list[int]:
    """Every live process whose environment carries ``marker``: anything the command started,
    including a trainer in a session of its own that outlived it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


@pytest.fixture
def runner_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "runner-home"
    monkeypatch.setenv("RUNNER_HOME", str(home))
    return home


@pytest.fixture
def active_job(tmp_path: Path, runner_home: Path) -> tuple[Path, str]:
    """A pending local job in the state: what watch, cancel and resume would act on at once."""
    job_file = make_job(tmp_path / "jobs")
    job = load_job(job_file)
    state = State.open(create=True)
    try:
        row = state.create_job(id="quickstart-abc123", name=job.name, job_file=str(job_file), job_sha256=job.sha256,
                               spec=job.spec, workdir=str(ROOT), backend="local",
                               run_uri=str(tmp_path / "runs" / "quickstart-abc123"), max_steps=job.train.max_steps or 0)
    finally:
        state.close()
    return job_file, row.id


def snapshot(home: Path) -> tuple:
    state = State(home / "state.db")
    try:
        jobs = [(j.id, j.state, j.updated) for j in state.jobs()]
        events = [(e.id, e.kind) for j in state.jobs() for e in state.events(j.id)]
        attempts = [a.id for j in state.jobs() for a in state.attempts(j.id)]
    finally:
        state.close()
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if not p.name.startswith("state.db"))
    return jobs, events, attempts, files


@pytest.mark.parametrize("name", WITH_OPTIONS)
def test_a_misspelled_option_exits_2_with_a_suggestion_and_does_nothing(name, active_job, runner_home, tmp_path):
    job_file, job_id = active_job
    options = [p for p in cli_args.params(COMMANDS[name]) if not p.positional]
    # the first option whose name has a hyphen (the --dryrun mistake), else the first one
    option = next((p for p in options if "-" in p.flag[2:]), options[0])
    typo = misspell(option.flag)
    words = {"submit": [str(job_file)]}.get(name, [job_id] if any(p.positional for p in cli_args.params(COMMANDS[name]))
                                             else [])
    before = snapshot(runner_home)
    marker = f"RUNNER_TEST_MARK={uuid.uuid4().hex}"
    env = trainer_env(RUNNER_HOME=str(runner_home), RUNNER_TEST_MARK=marker.split("=", 1)[1])
    done = subprocess.run([sys.executable, "-m", "runner", *name.split(), *words, typo, "1"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == f"error: unknown option {typo} for 'runner {name}'; did you mean {option.flag}?"
    assert done.stdout == ""
    assert snapshot(runner_home) == before
    assert processes_with(marker) == []
    assert os.path.exists(runner_home / "state.db")


def test_submit_with_a_typo_records_no_job_in_a_fresh_home(tmp_path, runner_home):
    job_file = make_job(tmp_path / "jobs")
    done = subprocess.run([sys.executable, "-m", "runner", "submit", str(job_file), "--dryrun"], capture_output=True,
                          text=True, cwd=ROOT, env=trainer_env(RUNNER_HOME=str(runner_home)), timeout=120)
    assert (done.returncode, done.stderr.strip()) == \
        (2, "error: unknown option --dryrun for 'runner submit'; did you mean --dry-run?")
    assert not runner_home.exists()


def test_help_and_version(runner_home):
    run = lambda *a: subprocess.run([sys.executable, "-m", "runner", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=ROOT, env=trainer_env(RUNNER_HOME=str(runner_home)), timeout=60)
    helped = run("submit", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: runner submit JOB [options]")
    assert "  --dry-run " in helped.stdout and "  --gpu GPU " in helped.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("runner 0.")
    assert not runner_home.exists()
