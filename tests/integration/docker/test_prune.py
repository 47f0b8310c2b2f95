"""`runner prune` on a real Docker engine: the exited containers of ended jobs and the images built
for them go; nothing of an active job, nothing of another state's jobs, no container without the
runner's label and no image the runner did not build is touched. `--dry-run` lists the same and
removes nothing."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from runner.backends.docker import LABEL_ATTEMPT, LABEL_JOB, DockerBackend, container_name
from runner.backends.docker_image import LABEL_INPUTS
from runner.state import DONE, FAILED, State
from tests.fixtures.docker import BASE_IMAGE, remove_containers
from tests.fixtures.jobs import ROOT, job_spec, trainer_env


def build_image(client: Any, tag: str, built_by_runner: bool) -> str:
    """A tiny image on the local base (metadata only, built in a moment); labelled as the runner labels its builds."""
    label = f"LABEL {LABEL_INPUTS}={uuid.uuid4().hex}\n" if built_by_runner else ""
    client.images.build(fileobj=io.BytesIO(f"FROM {BASE_IMAGE}\n{label}".encode()), tag=tag, rm=True,
                        network_mode="host", pull=False)
    return tag


class World:
    """A state with jobs whose attempts ran as real containers, as the docker backend names and labels them."""

    def __init__(self, client: Any, home: Path, tag: str):
        self.client, self.tag = client, tag
        self.state = State(home / "state.db")
        self.containers: dict[str, Any] = {}

    def job(self, job_id: str, image: str, commands: list[list[str]], final: str | None) -> None:
        self.state.create_job(id=job_id, name=job_id, job_file="job.yaml", job_sha256="0", spec=job_spec(), workdir=".",
                              backend="docker", run_uri=f"/tmp/{job_id}")
        for command in commands:
            attempt = self.state.add_attempt(job_id, backend="docker", gpu=None, gpu_count=1, spot=False, start_step=0)
            container = self.container(container_name(attempt.id), image, command,
                                       {LABEL_JOB: job_id, LABEL_ATTEMPT: attempt.id})
            self.state.attempt_started(attempt, DockerBackend(self.client)._handle(container), gpu=None, spot=False,
                                       rate_per_hour=0, on_demand_rate_per_hour=0)
            if command[-1] != "600":
                self.state.attempt_ended(attempt, outcome="done", exit_code=0, detail="", end_step=1)
        if final:
            self.state.set_job_state(job_id, final, "test")

    def container(self, name: str, image: str, command: list[str], labels: dict[str, str]) -> Any:
        container = self.client.containers.create(image, command, name=name, labels={**labels, "prunetest": self.tag},
                                                  network_mode="host")
        container.start()
        if command[-1] != "600":
            container.wait(timeout=60)
        container.reload()
        self.containers[name] = container
        return container

    def exists(self, name: str) -> bool:
        try:
            self.client.containers.get(self.containers[name].id)
            return True
        except docker.errors.NotFound:
            return False


def image_exists(client: Any, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def prune(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in trainer_env(RUNNER_HOME=str(home)).items() if not k.startswith("RUNPOD_")}
    return subprocess.run([sys.executable, "-m", "runner", "prune", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=180)


@pytest.fixture
def world(docker_engine, tmp_path: Path):
    tag = uuid.uuid4().hex[:8]
    w = World(docker_engine, tmp_path / "home", tag)
    images = {
        "ended": build_image(docker_engine, f"spot-runner:prunetest-ended-{tag}", True),
        "active": build_image(docker_engine, f"spot-runner:prunetest-active-{tag}", True),
        "users": build_image(docker_engine, f"prunetest-users-own:{tag}", False),
    }
    done = ["python3", "-c", "pass"]
    w.job(f"done-{tag}", images["ended"], [done, done], DONE)
    w.job(f"failed-{tag}", images["users"], [done], FAILED)  # ran in the user's image.name: never removed
    # Active: its first attempt ended, its second runs; none of it may go, nor its image.
    w.job(f"active-{tag}", images["active"], [done, ["sleep", "600"]], None)
    # Labelled for a job this state does not know (another RUNNER_HOME), and not the runner's at all.
    w.container(f"spot-runner-other-{tag}-1", images["users"], done, {LABEL_JOB: f"elsewhere-{tag}"})
    w.container(f"not-ours-{tag}", images["users"], done, {})
    w.images = images
    yield w
    w.state.close()
    remove_containers(docker_engine, label=f"prunetest={tag}")
    for ref in images.values():
        with contextlib.suppress(docker.errors.APIError):
            docker_engine.images.remove(ref, force=True)


def test_prune_removes_what_ended_jobs_left_and_nothing_else(world, tmp_path):
    tag, images = world.tag, world.images
    ended = {f"spot-runner-done-{tag}-1", f"spot-runner-done-{tag}-2", f"spot-runner-failed-{tag}-1"}

    dry = prune(tmp_path / "home", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)
    containers = {r["name"] for r in listed["removals"] if r["kind"] == "container"}
    assert containers == ended
    assert [r["name"] for r in listed["removals"] if r["kind"] == "image"] == [images["ended"]]
    assert all(r["done"] is None for r in listed["removals"])
    assert all(world.exists(name) for name in world.containers), "a dry run removed something"
    assert image_exists(world.client, images["ended"])
    assert any("this state does not know" in n for n in listed["notes"])

    text = prune(tmp_path / "home", "--dry-run")
    assert f"would remove container spot-runner-done-{tag}-1" in text.stdout and "dry run" in text.stdout

    done = prune(tmp_path / "home")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"removed container spot-runner-done-{tag}-1" in done.stdout
    assert f"removed image {images['ended']}" in done.stdout
    for name in world.containers:
        assert world.exists(name) == (name not in ended), name
    assert not image_exists(world.client, images["ended"])
    assert image_exists(world.client, images["active"]) and image_exists(world.client, images["users"])
    assert world.client.containers.get(world.containers[f"spot-runner-active-{tag}-2"].id).status == "running"

    again = prune(tmp_path / "home", "--json")
    assert json.loads(again.stdout)["removals"] == []
    # `runner logs` of a pruned job says its container is gone, instead of failing.
    logs = subprocess.run([sys.executable, "-m", "runner", "logs", f"done-{tag}"], capture_output=True, text=True,
                          cwd=ROOT, env=trainer_env(RUNNER_HOME=str(tmp_path / "home")), timeout=60)
    assert logs.returncode == 0 and "is gone" in logs.stdout, logs.stdout + logs.stderr
