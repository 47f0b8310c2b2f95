"""A docker-backend job with secrets (the bucket's keys and an HF_TOKEN): the trainer gets them, and
none of their values can be read from Docker, while the container runs or after it ended: not from
`docker inspect` of the container, nor the image (its configuration, history and layers), the
container's files, its logs, or the runner's state and output."""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import sys
import tarfile
from pathlib import Path

from runner.backends.docker import LABEL_JOB, container_name
from tests.fixtures.docker import remove_containers
from tests.fixtures.jobs import ROOT, trainer_env, wait_for
from tests.integration.docker.test_docker_backend import _job_ids


def docker(*args: str) -> bytes:
    done = subprocess.run(["docker", *args], capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout + done.stderr


def leaks(data: bytes, values: dict[str, str]) -> list[str]:
    return sorted(name for name, value in values.items() if value.encode() in data)


def stream_leaks(command: list[str], values: dict[str, str]) -> list[str]:
    """The secrets found in a command's (large) output, read in chunks that overlap by a value's length."""
    found: set[str] = set()
    overlap = max(len(v) for v in values.values())
    with subprocess.Popen(command, stdout=subprocess.PIPE) as proc:
        tail = b""
        while chunk := proc.stdout.read(8 << 20):
            window = tail + chunk
            found.update(leaks(window, values))
            tail = window[-overlap:]
    assert proc.returncode == 0
    return sorted(found)


def container_files_leaks(container, values: dict[str, str]) -> list[str]:
    """Secrets in the files the container added or changed (`docker diff`), read out of it."""
    found: set[str] = set()
    for change in container.diff() or []:
        if change["Kind"] == 2:  # deleted
            continue
        try:
            stream, _stat = container.get_archive(change["Path"])
        except Exception:
            continue
        data = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    content = tar.extractfile(member).read()
                    found.update(f"{name} in {member.name}" for name in leaks(content, values))
    return sorted(found)


def test_no_secret_value_is_readable_from_docker_during_or_after_the_attempt(docker_engine, docker_project,
                                                                              project_image, tmp_path: Path):
    s3 = docker_project.s3
    job = docker_project.jobs["docker-secrets"]
    values = {k: v for k, v in s3.env().items() if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    values["HF_TOKEN"] = "hf_" + secrets.token_hex(16)
    home = tmp_path / "runner-home"
    env = trainer_env(**{k: v for k, v in s3.env().items() if k.startswith("AWS_")}, HF_TOKEN=values["HF_TOKEN"],
                      RUNNER_HOME=str(home), RUNNER_POLL_SECONDS="0.2")
    output = tmp_path / "submit.log"
    job_id = None
    try:
        with open(output, "wb") as log:
            submit = subprocess.Popen([sys.executable, "-m", "runner", "submit", str(job)], stdout=log,
                                      stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            job_id = wait_for(lambda: _job_ids(home), timeout=180, what="the job row")[0]
            name = container_name(f"{job_id}-1")
            container = wait_for(lambda: _running(docker_engine, name), 300, what="the container running")

            # Running: the trainer gets every value (the launcher reads them from its standard input, which the
            # runner writes once the container has started, then execs the trainer with them)...
            wanted = f"HF_TOKEN={values['HF_TOKEN']}".encode()
            wait_for(lambda: wanted in _environments(container), 120, 0.5, what="the trainer's environment with HF_TOKEN")
            # ... and Docker shows none of them.
            assert leaks(docker("inspect", name), values) == []
            assert leaks(json.dumps(container.attrs).encode(), values) == []
            assert submit.wait(timeout=900) == 0, output.read_text(errors="replace")[-4000:]

        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0
        assert container.attrs["Config"]["StdinOnce"] is True
        record = json.loads(subprocess.run([sys.executable, "-m", "runner", "status", job_id, "--json"], cwd=ROOT,
                                           env=env, capture_output=True, text=True, timeout=60).stdout)
        assert record["state"] == "done"  # the bucket's keys reached the trainer: it wrote its run there

        # Ended: the container's configuration and state, its logs, its files, the image, the runner.
        assert leaks(docker("inspect", name), values) == []
        assert leaks(docker("logs", name), values) == []
        assert container_files_leaks(container, values) == []
        image = container.attrs["Config"]["Image"]
        assert leaks(docker("image", "inspect", image), values) == []
        assert leaks(docker("image", "history", "--no-trunc", image), values) == []
        assert stream_leaks(["docker", "save", image], values) == []  # every layer
        logs = subprocess.run([sys.executable, "-m", "runner", "logs", job_id], cwd=ROOT, env=env,
                              capture_output=True, timeout=120).stdout
        assert b"done at step 150" in logs and leaks(logs, values) == []
        for path in [*home.rglob("*"), output]:
            if path.is_file():
                assert leaks(path.read_bytes(), values) == [], f"a secret is in {path}"
    finally:
        if job_id:
            remove_containers(docker_engine, tmp_path / "containers", label=f"{LABEL_JOB}={job_id}")


def _environments(container) -> bytes:
    """The environment of every process in the container, one variable per line."""
    return container.exec_run(["sh", "-c", "cat /proc/[0-9]*/environ | tr '\\0' '\\n'"]).output


def _running(client, name: str):
    import docker.errors

    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        return None
    return container if container.status == "running" else None

