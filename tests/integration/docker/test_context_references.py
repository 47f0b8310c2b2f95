"""Every local file a job reads goes into its image, or the job is refused at submit naming the file,
the .dockerignore line that drops it and the line that lets it in. With the project's own
.dockerignore and a real build plan (the context the runner would send); no engine needed except for
the last test, which submits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.backends.base import BackendError
from runner.backends.docker_image import check_contents, context_files
from tests.fixtures.jobs import copy_project, trainer_env

CODE = ("Dockerfile", ".dockerignore", "pyproject.toml", "runner", "trainer", "infra/image_requirements.py",
        "jobs/quickstart.yaml", "jobs/data")


def job_with(project: Path, train_overrides: dict, name: str = "job.yaml") -> Path:
    doc = yaml.safe_load((project / "jobs" / "quickstart.yaml").read_text())
    doc["backend"] = "docker"
    for key, value in train_overrides.items():
        target = doc["train"]
        *parents, last = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[last] = value
    path = project / "jobs" / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def line_of(project: Path, text: str) -> int:
    return next(n for n, line in enumerate((project / ".dockerignore").read_text().splitlines(), 1) if line == text)


def write(path: Path, data: bytes = b"w" * 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_weights_beside_the_job_go_in_and_run_outputs_stay_out(tmp_path: Path):
    project = copy_project(tmp_path / "p", CODE)
    write(project / "jobs" / "weights" / "init.safetensors")
    write(project / "jobs" / "runs" / "old" / "checkpoints" / "step_100.pt")
    write(project / "jobs" / "checkpoints" / "best.pt")
    job = job_with(project, {"model": {"recipe": "pkg.mod:build", "options": {"init_from": "weights/init.safetensors"}}})
    files = context_files(project, "Dockerfile")
    assert "jobs/weights/init.safetensors" in files
    assert not any("runs/" in f or "checkpoints/" in f for f in files)
    check_contents(job, project, files)  # nothing left out


def test_a_weights_file_the_dockerignore_drops_is_named_with_its_line_and_the_fix(tmp_path: Path):
    project = copy_project(tmp_path / "p", CODE)
    write(project / "weights" / "init.safetensors")
    job = job_with(project, {"model": {"recipe": "pkg.mod:build", "options": {"init_from": "../weights/init.safetensors"}}})
    with pytest.raises(BackendError) as e:
        check_contents(job, project, context_files(project, "Dockerfile"))
    n = line_of(project, "**/*.safetensors")
    assert str(e.value) == (
        f"train.model.options.init_from: weights/init.safetensors would be left out of the image by line {n} of "
        f"{project / '.dockerignore'} (`**/*.safetensors`), and the trainer reads it; add a "
        f"`!weights/init.safetensors` line after that one, or keep the file in S3 (s3://BUCKET/...) and name that instead")
    # The fix it gives works.
    with open(project / ".dockerignore", "a") as f:
        f.write("!weights/init.safetensors\n")
    files = context_files(project, "Dockerfile")
    assert "weights/init.safetensors" in files
    check_contents(job, project, files)


def test_a_data_folder_and_a_pattern_are_checked_file_by_file(tmp_path: Path):
    project = copy_project(tmp_path / "p", CODE)
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        write(project / "data" / "corpus" / name, b"text " * 40)
    job = job_with(project, {"data.train": "../data/corpus"})
    with pytest.raises(BackendError) as e:
        check_contents(job, project, context_files(project, "Dockerfile"))
    assert str(e.value).startswith(f"train.data.train: data/corpus/a.txt (and 2 more files under data/corpus) would be "
                                   f"left out of the image by line {line_of(project, 'data')} of ")
    assert "add a `!data/corpus/**` line after that one" in str(e.value)
    job = job_with(project, {"data.train": ["data/python_reference.txt", "../data/corpus/*.txt"]})
    with pytest.raises(BackendError, match=r"^train\.data\.train\[1\]: data/corpus/a\.txt would be left out"):
        check_contents(job, project, context_files(project, "Dockerfile"))


def test_submit_refuses_such_a_job_before_anything_is_built(tmp_path: Path):
    project = copy_project(tmp_path / "p", CODE)
    write(project / "weights" / "init.pt")
    job = job_with(project, {"model": {"recipe": "pkg.mod:build", "options": {"init_from": "../weights/init.pt"}}})
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-m", "runner", "submit", str(job), "--detach"], capture_output=True,
                          text=True, cwd=project, env=trainer_env(RUNNER_HOME=str(home)), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"weights/init.pt would be left out of the image by line {line_of(project, '**/*.pt')}" in done.stderr
    assert "Nothing was built or launched" in done.stderr
    assert not (home / "state.db").exists()
