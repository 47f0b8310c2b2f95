"""What the docker backend says when the engine cannot do what a job asks: no engine at the
address given, a remote engine asked to write a folder of this machine, GPUs on an engine without
the NVIDIA runtime. Each message says what to do next, and nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.backends.base import BackendError, LaunchRequest
from runner.backends.docker import LABEL_JOB, DockerBackend
from runner.backends.docker_client import connect, is_remote
from runner.catalog import load_catalog
from runner.spec import Image
from tests.fixtures.docker import BASE_IMAGE, unique
from tests.fixtures.s3 import free_ports


def request(job: Path, run_uri: str, **overrides) -> LaunchRequest:
    job_id = unique("engine")
    fields = dict(attempt_id=f"{job_id}-1", job_id=job_id, job_file=job, run_uri=run_uri, workdir=job.parent,
                  env={}, image=Image(base=BASE_IMAGE))
    return LaunchRequest(**{**fields, **overrides})


def test_no_engine_at_docker_host_says_what_to_do(monkeypatch):
    (port,) = free_ports(1)  # nothing listens there
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    with pytest.raises(BackendError) as e:
        connect(timeout=5)
    message = str(e.value)
    assert f"cannot reach a Docker engine at DOCKER_HOST=tcp://127.0.0.1:{port}" in message
    assert "start Docker" in message and "DOCKER_HOST=ssh://" in message


def test_which_engines_are_remote():
    assert not is_remote("unix:///var/run/docker.sock")
    assert not is_remote("tcp://127.0.0.1:2375") and not is_remote("tcp://localhost:2375")
    assert is_remote("ssh://me@gpu-box") and is_remote("tcp://gpu-box.example:2376")


def test_a_remote_engine_is_not_asked_to_write_a_folder_of_this_machine(docker_engine, docker_project,
                                                                          tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "ssh://me@gpu-box.example")
    backend = DockerBackend(client=docker_engine)  # the check comes before anything is sent
    with pytest.raises(BackendError) as e:
        backend.launch(request(docker_project.jobs["docker-quick"], str(tmp_path / "run")))
    assert "is a folder on this machine" in str(e.value) and "storage: s3://BUCKET/PREFIX" in str(e.value)


def test_gpus_on_an_engine_without_the_nvidia_runtime(docker_engine, docker_project, project_image, tmp_path: Path):
    if "nvidia" in (docker_engine.info().get("Runtimes") or {}):
        pytest.skip("this engine has the NVIDIA runtime: asking for a GPU would succeed")
    rtx3090 = load_catalog().resolve("rtx3090")
    launch = request(docker_project.jobs["docker-quick"], f"s3://{docker_project.s3.bucket}/gpu", gpus=(rtx3090,))
    with pytest.raises(BackendError) as e:
        DockerBackend(client=docker_engine).launch(launch)
    assert "cannot give the container GPUs" in str(e.value) and "NVIDIA Container Toolkit" in str(e.value)
    assert not docker_engine.containers.list(all=True, filters={"label": f"{LABEL_JOB}={launch.job_id}"})


def test_launch_adopts_its_attempt_s_container_and_stop_forces_one_that_ignores_sigterm(
        docker_engine, docker_project, project_image, tmp_path: Path):
    # A runner that died after creating an attempt's container, before recording or starting it.
    launch = request(docker_project.jobs["docker-quick"], f"s3://{docker_project.s3.bucket}/adopt")
    from runner.backends.docker import container_name

    docker_engine.containers.create(
        project_image.name, ["-c", "import time; time.sleep(600)"], entrypoint=["python"],  # PID 1 ignores SIGTERM
        name=container_name(launch.attempt_id), labels={LABEL_JOB: launch.job_id}, network_mode="host")
    backend = DockerBackend(client=docker_engine)
    try:
        launched = backend.launch(launch)
        assert launched.adopted and launched.handle["container"] == container_name(launch.attempt_id)
        assert backend.poll(launched.handle).state == "running"
        assert len(docker_engine.containers.list(filters={"label": f"{LABEL_JOB}={launch.job_id}"})) == 1
        ended = backend.stop(launched.handle, grace_s=1, timeout_s=30)
        assert ended.state == "exited" and ended.signal == "SIGKILL" and ended.exit_code is None
        assert backend.stop(launched.handle, grace_s=1).signal == "SIGKILL"  # stopping again is harmless
    finally:
        for container in docker_engine.containers.list(all=True, filters={"label": f"{LABEL_JOB}={launch.job_id}"}):
            container.remove(force=True)
