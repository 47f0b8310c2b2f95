"""What a build sends to the engine: the project's .dockerignore applied strictly, credential files
refused, the tar reproducible. (No engine needed: these check the runner's side of a build.)"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from runner.backends.base import BackendError
from runner.backends.docker_image import context_files, context_tar, job_path_in_image
from tests.fixtures.jobs import copy_project

CODE = ("Dockerfile", ".dockerignore", "pyproject.toml", "runner", "trainer", "infra/image_requirements.py",
        "jobs/quickstart.yaml", "jobs/data")


def test_the_project_sends_code_jobs_and_data_and_nothing_private(tmp_path: Path):
    project = copy_project(tmp_path / "p", CODE)
    for rel in (".git/config", "runs/q/checkpoints/latest.pt", "tests/test_a.py", "bench/b.py", "README.md",
                "state/state.db", "data/big.bin", "jobs/runs/x/status.json", "trainer/__pycache__/x.pyc",
                ".docker/config.json", ".aws/credentials", "sub/.ssh/id_rsa", "jobs/.env", ".env.production"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("x")
    files = set(context_files(project, "Dockerfile"))
    assert {"Dockerfile", "pyproject.toml", "trainer/contract.py", "runner/backends/docker.py",
            "infra/image_requirements.py", "jobs/quickstart.yaml", "jobs/data/python_reference.txt"} <= files
    private = {f for f in files if f.startswith((".git/", "runs/", "tests/", "bench/", "state/", "data/", ".docker/",
                                                 ".aws/", "sub/", "jobs/runs/", "jobs/.env", ".env"))}
    assert not private, private
    assert not any(f.endswith((".pyc", ".md")) and not f.startswith("jobs/") for f in files)
    assert job_path_in_image(project / "jobs" / "quickstart.yaml", project) == "/app/jobs/quickstart.yaml"


def test_a_credential_file_the_dockerignore_lets_through_stops_the_build(tmp_path: Path):
    project = copy_project(tmp_path / "p", CODE)
    (project / ".dockerignore").write_text("runs\n")  # a careless .dockerignore
    (project / "jobs" / "deploy.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (project / "jobs" / ".env.example").write_text("HF_TOKEN=\n")  # a template: fine
    with pytest.raises(BackendError) as e:
        context_files(project, "Dockerfile")
    assert "jobs/deploy.pem would go into the image and looks like credentials" in str(e.value)
    assert ".env.example" not in str(e.value) and str(project / ".dockerignore") in str(e.value)


def test_the_context_tar_depends_on_content_only(tmp_path: Path):
    digests = []
    for name in ("a", "b"):
        project = copy_project(tmp_path / name, CODE)
        files = context_files(project, "Dockerfile")
        with context_tar(project, files) as tar:
            digests.append(hashlib.sha256(tar.read()).hexdigest())
            tar.seek(0)
            with tarfile.open(fileobj=tar) as t:
                members = t.getmembers()
        assert [m.name for m in members] == list(files)
        assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, 0)}
    assert digests[0] == digests[1]
