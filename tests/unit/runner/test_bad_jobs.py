"""A corpus of malformed job files (bad_jobs/*.yaml). Each one must be refused with one clear
paragraph naming the file, the line and the field, a non-zero exit, and nothing written.

Each file says what its error must contain in its header:
``# expect-line: N`` (the line the error points at), ``# expect: TEXT`` (a substring, any number),
``# must-not-show: VALUE`` (a credential from the file that the message must not repeat)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import EXIT_BAD_INPUT, main
from tests.fixtures.jobs import ROOT, trainer_env

CORPUS = sorted((Path(__file__).parent / "bad_jobs").glob("*.yaml"))


def expectations(path: Path) -> tuple[int | None, list[str], list[str]]:
    line, expects, hidden = None, [], []
    for text in path.read_text().splitlines():
        if m := re.match(r"# expect-line: (\d+)$", text):
            line = int(m.group(1))
        elif m := re.match(r"# expect: (.+)$", text):
            expects.append(m.group(1))
        elif m := re.match(r"# must-not-show: (.+)$", text):
            hidden.append(m.group(1))
    return line, expects, hidden


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 20
    for path in CORPUS:
        assert expectations(path)[1], f"{path.name} says nothing about the error it expects"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_job_is_refused_clearly_and_nothing_is_written(path: Path, runner_home: Path, capsys):
    line, expects, hidden = expectations(path)
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", str(path)])
    assert exit_info.value.code == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    assert str(path) in err
    if line is not None:
        assert f"{path}:{line}: " in err, err
    for text in expects:
        assert text in err, f"expected {text!r} in:\n{err}"
    for value in hidden:
        assert value not in err, f"the message repeats a credential from the file:\n{err}"
    assert "\n\n" not in err.strip(), "one paragraph, no blank lines"
    assert "Nothing was launched" in err
    assert not runner_home.exists(), "a refused job must not create or touch the state"


@pytest.mark.parametrize("name", ["unknown_gpu", "secret_aws_key_in_env"])
def test_the_real_command_exits_non_zero_and_writes_nothing(name: str, runner_home: Path):
    path = Path(__file__).parent / "bad_jobs" / f"{name}.yaml"
    done = subprocess.run([sys.executable, "-m", "runner", "submit", str(path)], capture_output=True, text=True,
                          cwd=ROOT, env=trainer_env(RUNNER_HOME=str(runner_home)), timeout=60)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert f"{path}:" in done.stderr
    assert not runner_home.exists()


def test_dry_run_of_a_bad_job_is_refused_too(runner_home: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", str(Path(__file__).parent / "bad_jobs" / "unknown_gpu.yaml"), "--dry-run"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "closest known: rtx3090" in capsys.readouterr().err
