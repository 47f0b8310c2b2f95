"""Hostile job files (tests/fixtures/hostile_jobs.py): alias bombs of growing depth, recursive
aliases, a 50 MB file, deep nesting, huge strings, binary garbage, byte-order marks, tabs. Each is
refused with one line ``file:line: what and why``, exit 2, well under a second and 100 MB."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures import hostile_jobs
from tests.fixtures.jobs import QUICKSTART, ROOT, make_job, trainer_env
from trainer.jobfile import JobFileError, load_yaml

NAMES = sorted(hostile_jobs.CORPUS)


@pytest.mark.parametrize("name", NAMES)
def test_hostile_job_file_is_refused_with_one_line_at_once(name: str, tmp_path: Path):
    path = hostile_jobs.write(tmp_path, name)
    _, expect, line = hostile_jobs.CORPUS[name]
    t0 = time.process_time()  # CPU time: a loaded CI machine stretches wall time, not this
    with pytest.raises(JobFileError) as info:
        load_yaml(path)
    elapsed = time.process_time() - t0
    message = str(info.value)
    assert "\n" not in message, message
    assert re.match(rf"{re.escape(str(path))}:\d+: \S", message), message
    if line is not None:
        assert message.startswith(f"{path}:{line}: "), message
    assert expect in message, message
    assert elapsed < 1.0, f"{name} took {elapsed:.2f}s of CPU"


@pytest.mark.parametrize("name", ["alias_bomb_12_levels", "merge_bomb_9_levels", "file_of_50_mb", "many_values",
                                  "deep_flow_nesting", "huge_string", "recursive_alias"])
def test_runner_submit_dry_run_refuses_it_in_bounded_memory(name: str, tmp_path: Path):
    home = tmp_path / "runner-home"
    env = trainer_env(RUNNER_HOME=str(home))
    path = hostile_jobs.write(tmp_path, name)
    code, err, seconds, rss_mb = hostile_jobs.measure("runner", ["submit", str(path), "--dry-run"], env, ROOT)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"error: {path}:"), err  # the problem, then "Nothing was launched"
    assert "Nothing was launched" in lines[1]
    assert rss_mb < 100, f"peak RSS {rss_mb:.0f} MB"
    assert seconds < 30  # the whole command, Python's start included, on a loaded CI machine
    assert not home.exists()


def test_trainer_refuses_it_with_exit_2_and_one_line(tmp_path: Path):
    path = hostile_jobs.write(tmp_path, "alias_bomb_9_levels")
    done = subprocess.run([sys.executable, "-m", "trainer", "run", str(path), "--run-uri", str(tmp_path / "run")],
                          cwd=ROOT, env=trainer_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"{path}:2: ")


def test_what_is_harmless_still_loads(tmp_path: Path):
    """A UTF-8 byte-order mark (some editors write one) and merge keys, where the keys written out win."""
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + QUICKSTART.read_bytes())
    assert load_yaml(bom).data["name"] == "quickstart"
    merged = tmp_path / "merge.yaml"
    merged.write_text("base: &b {x: 1, y: 2}\ntrain:\n  <<: *b\n  x: 3\n")
    doc = load_yaml(merged)
    assert doc.data["train"] == {"x": 3, "y": 2}
    assert doc.line_of(("train", "x")) == 4
    small_bomb = tmp_path / "small.yaml"
    small_bomb.write_bytes(hostile_jobs.alias_bomb(3))  # 9**3 = 729 values: a large job, not an attack
    assert len(load_yaml(small_bomb).data["train"]) == 9


def test_a_real_job_is_far_inside_the_limits(tmp_path: Path):
    from trainer import jobfile

    path = make_job(tmp_path)
    text = path.read_text()
    assert len(text.encode()) < jobfile.MAX_BYTES // 100
    assert len(load_yaml(path).lines) < jobfile.MAX_VALUES // 50
