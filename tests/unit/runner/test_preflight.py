"""Before a job is recorded or anything built, pushed or paid for, everything it can be found to lack
here is listed at once, each with its fix; the submit exits 2, quickly, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner import preflight
from runner.spec import load_job
from tests.fixtures.jobs import ROOT, make_job, trainer_env
from tests.fixtures.s3 import free_ports


def test_the_docker_backend_without_an_engine_is_refused_at_submit(runner_home: Path):
    (port,) = free_ports(1)  # nothing listens there
    done = subprocess.run([sys.executable, "-m", "runner", "submit", "jobs/quickstart.yaml", "--backend", "docker"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=trainer_env(RUNNER_HOME=str(runner_home), DOCKER_HOST=f"tcp://127.0.0.1:{port}"))
    assert done.returncode != 0
    assert f"cannot reach a Docker engine at DOCKER_HOST=tcp://127.0.0.1:{port}" in done.stderr, done.stderr
    assert "Nothing was built or launched, and no job was recorded" in done.stderr
    assert not runner_home.exists(), "no job was recorded, so `watch` has nothing to relaunch"


def runpod_job_with_every_mistake(folder: Path) -> Path:
    """What a newcomer submits first: the example's placeholder registry, data that is not there, a
    secret not exported, no RunPod key."""
    return make_job(folder, {"backend": "runpod", "storage": "s3://my-training-runs/quickstart",
                             "resources": {"gpu": "rtx3090"}, "secrets": ["SURELY_UNSET_HF_TOKEN"],
                             "image": {"push_to": "ghcr.io/YOUR_USER/spot-runner"},
                             "train": {"data": {"train": "data/missing.txt"}}})


def test_a_runpod_submit_with_a_placeholder_registry_is_refused_at_once_with_every_problem(runner_home: Path,
                                                                                          tmp_path: Path, monkeypatch):
    project = tmp_path / "project"
    (project / "jobs").mkdir(parents=True)
    (project / "Dockerfile").write_text("ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n")
    job = runpod_job_with_every_mistake(project / "jobs")
    (port,) = free_ports(1)  # no Docker engine there either
    env = trainer_env(RUNNER_HOME=str(runner_home), DOCKER_HOST=f"tcp://127.0.0.1:{port}")
    env.pop("RUNPOD_API_KEY", None)
    done = subprocess.run([sys.executable, "-m", "runner", "submit", str(job), "--detach"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr
    assert err.startswith("error: 5 problems:\n"), err
    assert "the runpod backend needs a RunPod API key: export RUNPOD_API_KEY" in err
    assert "secrets: SURELY_UNSET_HF_TOKEN is listed but not set in this shell; export it" in err
    assert "train.data.train: data/missing.txt: not found" in err
    assert (f"{job}:{line_of(job, 'push_to')}: image.push_to: 'ghcr.io/YOUR_USER/spot-runner' still holds the "
            f"placeholder 'YOUR_USER'") in err
    assert "the image is built on this machine's Docker engine: cannot reach a Docker engine" in err
    assert err.rstrip().endswith("Nothing was built or launched, and no job was recorded; fix them and submit again.")
    assert "watch" not in done.stdout + err
    assert not runner_home.exists(), "nothing recorded"
    # The old submit spent 71 s pulling before it failed. Here nothing reaches for a network it cannot use:
    # the checks themselves find the same five (their speed is bench/bench_cli.py's, not a unit test's).
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    found = preflight.check(load_job(job), {})
    assert len(found.problems) == 5


def line_of(path: Path, key: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(f"{key}:"))


@pytest.mark.parametrize("reference,hole", [
    ("ghcr.io/YOUR_USER/spot-runner", "YOUR_USER"), ("docker.io/your-org/trainer", "your-org"),
    ("registry.example.com/<user>/x", "<user>"), ("ghcr.io/CHANGEME/x", "CHANGEME"),
    ("ghcr.io/alice/spot-runner", None), ("registry.example/spot-runner:emulated", None),
    ("127.0.0.1:5000/you/never", None), ("yourself.example/x", None)])
def test_placeholders_are_the_example_s_holes_not_real_names(reference, hole):
    assert preflight.placeholder(reference) == hole


def test_the_registry_of_a_repository():
    assert preflight.registry_host("ghcr.io/alice/x") == "ghcr.io"
    assert preflight.registry_host("127.0.0.1:5000/x") == "127.0.0.1:5000"
    assert preflight.registry_host("localhost/x") == "localhost"
    assert preflight.registry_host("alice/x") == "docker.io"


def test_credentials_are_looked_up_where_docker_login_stores_them(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    def has(host: str) -> bool:
        return preflight.docker_logins().has(host)

    assert not has("ghcr.io")  # no configuration at all
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"https://ghcr.io": {"auth": "eDp5"}}}))
    assert has("ghcr.io") and not has("quay.io")
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": "eDp5"}}}))
    assert has("docker.io") and not has("ghcr.io")
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {"123.dkr.ecr.us-east-1.amazonaws.com": "ecr"}}))
    assert has("123.dkr.ecr.us-east-1.amazonaws.com")


def test_a_registry_that_does_not_answer_is_named_without_the_repository(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    (port,) = free_ports(1)
    job = load_job(make_job(tmp_path, {"backend": "docker", "image": {"push_to": f"127.0.0.1:{port}/never/pushed",
                                                                       "base": "spot-runner-base:cpu"}}))
    problems = preflight._image(job, lambda loc: "job.yaml:1")
    assert any(f"image.push_to: the registry 127.0.0.1:{port} does not answer from this machine" in p
               for p in problems), problems
    assert not any("never/pushed" in p for p in problems)
