"""The command line is checked whole, against each command's signature, before the command runs."""

from __future__ import annotations

import pytest

from runner import cli_args
from runner.cli import Commands

COMMANDS = Commands()
ALL = cli_args.commands(COMMANDS)


def misspell(flag: str) -> str:
    """A typo a person makes: a hyphen dropped (--dryrun), else a letter swapped with its neighbour."""
    if "-" in flag[2:]:
        return flag[:2] + flag[2:].replace("-", "", 1)
    body = flag[2:]
    if len(body) == 2:  # --to: its two letters swapped
        return "--" + body[::-1]
    i = next(i for i in range(1, len(body) - 1) if body[i] != body[i + 1])
    return "--" + body[:i] + body[i + 1] + body[i] + body[i + 2:]


def required_words(name: str) -> list[str]:
    return ["x" for p in cli_args.params(ALL[name]) if p.required]


@pytest.mark.parametrize("name,flag", [(n, p.flag) for n in ALL for p in cli_args.params(ALL[n])
                                       if not p.positional])
def test_every_misspelled_option_of_every_command_is_refused_with_the_right_suggestion(name, flag):
    typo = misspell(flag)
    with pytest.raises(cli_args.UsageError) as e:
        cli_args.parse(COMMANDS, [name, *required_words(name), typo, "1"])
    assert str(e.value).startswith(f"unknown option {typo} for 'runner {name}'")
    assert str(e.value).endswith(f"did you mean {flag}?")


def test_the_issue_example_reads_as_one_line():
    with pytest.raises(cli_args.UsageError) as e:
        cli_args.parse(COMMANDS, ["submit", "jobs/quickstart.yaml", "--dryrun"])
    assert str(e.value) == "unknown option --dryrun for 'runner submit'; did you mean --dry-run?"


@pytest.mark.parametrize("argv,message", [
    (["sbumit", "job.yaml"], "unknown command 'sbumit' for 'runner'; did you mean submit?"),
    (["submit"], "'runner submit' needs JOB (the job file (YAML)); usage: runner submit JOB [options]"),
    (["submit", "a.yaml", "b.yaml"], "unexpected argument 'b.yaml' for 'runner submit'"),
    (["list", "7"], "unexpected argument '7' for 'runner list', which takes no word"),
    (["submit", "a.yaml", "--gpu"], "--gpu for 'runner submit' needs a value: --gpu GPU"),
    (["submit", "a.yaml", "--gpu", "--dry-run"], "--gpu for 'runner submit' needs a value"),
    (["list", "--limit", "ten"], "--limit for 'runner list' expects a whole number, got 'ten'"),
    (["resume", "j", "--budget", "lots"], "--budget for 'runner resume' expects a number, got 'lots'"),
    (["submit", "a.yaml", "--dry-run", "--dry-run"], "--dry-run given twice for 'runner submit'"),
    (["submit", "a.yaml", "--detach=maybe"], "--detach for 'runner submit' is a switch"),
    (["submit", "a.yaml", "-d"], "unknown option -d for 'runner submit'; options are spelled in full"),
    (["--dry-run"], "unknown option --dry-run for 'runner'; options come after a command"),
    (["submit", "a.yaml", "--", "--help"], "unexpected '--' for 'runner submit'"),
])
def test_bad_command_lines_say_what_is_wrong(argv, message):
    with pytest.raises(cli_args.UsageError) as e:
        cli_args.parse(COMMANDS, argv)
    assert str(e.value).startswith(message)


def test_good_command_lines_parse_to_typed_options():
    parse = lambda *a: cli_args.parse(COMMANDS, list(a))[2]  # noqa: E731
    assert parse("submit", "j.yaml", "--gpu", "rtx3090,rtx4090", "--dry-run") == \
        {"job": "j.yaml", "gpu": "rtx3090,rtx4090", "dry_run": True}
    assert parse("submit", "--dry_run", "--job=j.yaml", "--nodetach") == {"job": "j.yaml", "dry_run": True,
                                                                            "detach": False}
    # a switch never swallows the word after it (fire would have taken j.yaml as --detach's value)
    assert parse("submit", "--detach", "j.yaml") == {"job": "j.yaml", "detach": True}
    assert parse("status") == {}
    assert parse("status", "brad") == {"job": "brad"}
    assert parse("list", "--limit=3") == {"limit": 3}
    assert parse("resume", "j", "--budget", "12.5", "--detach=false") == {"job": "j", "budget": 12.5, "detach": False}
    assert parse("simulate", "--mtbf-hours", "-1") == {"mtbf_hours": -1.0}


def test_canonical_form_puts_values_with_equals_and_switches_last():
    name, _, options = cli_args.parse(COMMANDS, ["submit", "--detach", "j.yaml", "--gpu", "a,b"])
    spec = cli_args.params(ALL[name])
    assert cli_args.canonical(name, spec, options) == ["submit", "--job=j.yaml", "--gpu=a,b", "--detach"]


def test_help_lists_each_option_with_its_value_and_what_it_does():
    text = cli_args.command_help(COMMANDS, "submit")
    assert text.startswith("usage: runner submit JOB [options]")
    lines = text.splitlines()
    assert any(ln.strip().startswith("--gpu GPU") and "failover list" in ln for ln in lines)
    assert any(ln.strip().startswith("--dry-run") and "launch" in ln for ln in lines)
    cost = cli_args.command_help(COMMANDS, "simulate")
    assert any(ln.strip().startswith("--trials N") and "(default: 2000)" in ln for ln in cost.splitlines())
    main = cli_args.main_help(COMMANDS)
    for name in ALL:
        assert f"\n  {name} " in main
