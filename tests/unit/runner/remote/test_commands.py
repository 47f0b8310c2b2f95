"""`runner supervisor ...` is a command group checked like every command; the job field and
`submit --supervisor` are validated with the line, and nothing is recorded when they are wrong."""

from __future__ import annotations

import pytest

from runner import cli_args
from runner.cli import Commands, main
from runner.spec import load_job
from tests.fixtures.jobs import make_job
from trainer.jobfile import JobFileError

COMMANDS = Commands()


def test_the_group_parses_checks_and_helps():
    assert cli_args.parse(COMMANDS, ["supervisor", "up", "--on", "runpod", "--storage", "s3://b/p"]) == \
        ("supervisor up", [], {"on": "runpod", "storage": "s3://b/p"})
    name, _words, options = cli_args.parse(COMMANDS, ["supervisor", "status", "--json"])
    assert cli_args.canonical(name, cli_args.params(cli_args.method(COMMANDS, name)), options) == \
        ["supervisor", "status", "--json"]
    with pytest.raises(cli_args.UsageError, match="needs a command: down, run, status, up"):
        cli_args.parse(COMMANDS, ["supervisor"])
    with pytest.raises(cli_args.UsageError, match="unknown option --onn for 'runner supervisor up'; did you mean --on?"):
        cli_args.parse(COMMANDS, ["supervisor", "up", "--onn", "docker"])
    with pytest.raises(cli_args.UsageError, match="unknown command 'dwon'.*did you mean down"):
        cli_args.parse(COMMANDS, ["supervisor", "dwon"])
    with pytest.raises(cli_args.UsageError, match="'runner supervisor run' needs STORAGE"):
        cli_args.parse(COMMANDS, ["supervisor", "run"])
    assert "usage: runner supervisor up [options]" in cli_args.help_for(COMMANDS, ["supervisor", "up", "--help"])
    assert "  status" in cli_args.help_for(COMMANDS, ["supervisor", "--help"])


def test_the_job_field_and_its_override(tmp_path):
    runpod = {"backend": "runpod", "resources": {"gpu": "rtx3090"}, "storage": "s3://bucket/runs"}
    assert load_job(make_job(tmp_path, {**runpod, "supervisor": "docker"})).spec.supervisor == "docker"
    assert load_job(make_job(tmp_path, runpod), supervisor="runpod").spec.supervisor == "runpod"
    assert load_job(make_job(tmp_path, runpod)).spec.supervisor == "none"
    with pytest.raises(JobFileError) as e:
        load_job(make_job(tmp_path, {"supervisor": "docker"}))
    assert "job.yaml" in str(e.value) and "supervisor: a supervisor on docker relaunches RunPod pods" in str(e.value)
    assert ":" in str(e.value).split("supervisor:")[0]  # the line
    with pytest.raises(JobFileError, match="unknown supervisor 'laptop'"):
        load_job(make_job(tmp_path, runpod), supervisor="laptop")
    with pytest.raises(JobFileError, match="supervisor"):
        load_job(make_job(tmp_path, {**runpod, "supervisor": "kubernetes"}))


def test_a_bad_supervisor_records_nothing(tmp_path, runner_home, capsys):
    job = make_job(tmp_path, {"supervisor": "docker"})
    with pytest.raises(SystemExit) as e:
        main(["submit", str(job)])
    assert e.value.code == 2 and "supervisor" in capsys.readouterr().err
    assert not (runner_home / "state.db").exists()
