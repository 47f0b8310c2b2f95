"""The quickstart through the docker backend, against SeaweedFS on loopback: its container is
killed with `docker kill` (SIGKILL) and stopped with `docker stop` (SIGTERM) mid-run; the
supervisor relaunches it each time, and the final weights are byte identical to those of a run of
the same image that was never interrupted."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from runner.backends.docker import LABEL_JOB, container_name
from runner.state import State
from tests.fixtures.docker import CONTAINER_ENV, remove_containers
from tests.fixtures.jobs import ROOT, trainer_env, wait_for
from trainer import contract


class Run:
    """A run URI in the test bucket, read through boto3."""

    def __init__(self, s3, uri: str):
        self.s3, self.uri = s3, uri
        self.bucket, _, self.prefix = uri.removeprefix("s3://").partition("/")
        self.client = s3.client()

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def status(self) -> contract.Status | None:
        raw = self.get(contract.STATUS)
        return contract.Status.from_json(raw) if raw else None


def runner_env(home: Path, s3) -> dict[str, str]:
    # The credentials the job forwards by name (secrets:), and the runner's own state folder.
    return trainer_env(**{k: v for k, v in s3.env().items() if k.startswith("AWS_")},
                       RUNNER_HOME=str(home), RUNNER_POLL_SECONDS="0.2", RUNNER_STOP_GRACE_SECONDS="60")


def test_quickstart_survives_docker_kill_and_docker_stop(docker_engine, docker_project, project_image, tmp_path: Path):
    s3 = docker_project.s3
    job = docker_project.jobs["docker-quick"]
    home = tmp_path / "runner-home"
    env = runner_env(home, s3)
    reference = Run(s3, f"s3://{s3.bucket}/reference-{uuid.uuid4().hex[:8]}")
    job_id = None
    try:
        # The reference: the image's own entrypoint (the restart loop), never interrupted.
        ref = docker_engine.containers.run(
            project_image.name, ["jobs/docker-quick.yaml", "--run-uri", reference.uri], detach=True,
            network_mode="host", labels={LABEL_JOB: "reference"},
            environment={**CONTAINER_ENV, **{k: v for k, v in s3.env().items() if k.startswith("AWS_")}},
        )
        result = ref.wait(timeout=600)
        assert result["StatusCode"] == 0, ref.logs().decode()[-3000:]
        assert reference.status().state == contract.DONE

        log = open(tmp_path / "submit.log", "wb")  # noqa: SIM115 - the runner process owns it
        submit = subprocess.Popen([sys.executable, "-m", "runner", "submit", str(job)], stdout=log,
                                  stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        job_id = wait_for(lambda: _job_ids(home), timeout=120, what="the job row")[0]
        run = Run(s3, wait_for(lambda: _run_uri(home, job_id), timeout=30, what="the run URI"))

        def training(attempt: int, at_least: int):
            status = run.status()
            return status is not None and status.attempt == f"{job_id}-{attempt}" \
                and status.state == contract.RUNNING and status.step >= at_least

        wait_for(lambda: training(1, 60), timeout=300, what="attempt 1 at step 60")
        docker_engine.containers.get(container_name(f"{job_id}-1")).kill()  # docker kill: SIGKILL

        wait_for(lambda: training(2, 150), timeout=300, what="attempt 2 at step 150")
        second = docker_engine.containers.get(container_name(f"{job_id}-2"))
        second.stop(timeout=60)  # docker stop: SIGTERM, an emergency checkpoint, exit 75
        second.reload()
        assert second.attrs["State"]["ExitCode"] == contract.EXIT_INTERRUPTED, second.logs().decode()[-3000:]

        output = lambda: (tmp_path / "submit.log").read_text(errors="replace")  # noqa: E731
        assert submit.wait(timeout=600) == 0, output()[-4000:]
        record = json.loads(_cli(env, "status", job_id, "--json").stdout)
        assert record["state"] == "done"
        attempts = record["attempts"]
        assert [a["outcome"] for a in attempts] == ["interrupted", "interrupted", "done"], attempts
        assert [a["exit_code"] for a in attempts] == [None, 75, 0]
        assert "SIGKILL" in attempts[0]["detail"] and "emergency checkpoint" in attempts[1]["detail"]
        assert all(a["handle"]["container"] == container_name(a["id"]) for a in attempts)

        final = run.get("final/model.safetensors")
        assert final is not None and final == reference.get("final/model.safetensors")

        # Each attempt's output is there to read, through the backend.
        logs = _cli(env, "logs", job_id).stdout
        assert logs.count("── attempt") == 3 and "done at step 400" in logs

        # The credentials went to the containers only: not into the state, a build log or the output.
        secret = s3.secret_key.encode()
        for path in [*home.rglob("*"), tmp_path / "submit.log"]:
            if path.is_file():
                assert secret not in path.read_bytes(), f"the S3 secret key is in {path}"
    finally:
        remove_containers(docker_engine, tmp_path / "containers", label=f"{LABEL_JOB}=reference")
        if job_id:
            remove_containers(docker_engine, tmp_path / "containers", label=f"{LABEL_JOB}={job_id}")


def test_a_job_on_two_gpus_runs_torchrun_with_two_processes_in_its_container(docker_engine, docker_project,
                                                                              project_image, tmp_path: Path):
    """resources.gpu_count: 2 on an engine without GPUs: one container, torchrun, two gloo ranks."""
    s3 = docker_project.s3
    home = tmp_path / "runner-home"
    env = runner_env(home, s3)
    job_id = None
    try:
        done = subprocess.run([sys.executable, "-m", "runner", "submit", str(docker_project.jobs["docker-two-process"])],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
        job_id = next(iter(_job_ids(home)), None)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        record = json.loads(_cli(env, "status", job_id, "--json").stdout)
        assert record["state"] == "done" and [a["outcome"] for a in record["attempts"]] == ["done"]
        container = docker_engine.containers.get(container_name(f"{job_id}-1"))
        command = [*(container.attrs["Config"]["Entrypoint"] or []), *container.attrs["Config"]["Cmd"]]
        assert command[:3] == ["python", "-m", "trainer.contract"], command  # the launcher reading stdin
        assert command[3:8] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"], command
        log = Run(s3, record["run_uri"]).get(contract.TRAINER_LOG).decode()
        assert "batch 16 per process x 2 process(es)" in log and "done at step 80" in log
        assert "process group up: rank 0 of 2 (gloo)" in log
    finally:
        if job_id:
            remove_containers(docker_engine, tmp_path / "containers", label=f"{LABEL_JOB}={job_id}")


def _job_ids(home: Path) -> list[str]:
    if not (home / "state.db").exists():
        return []
    state = State(home / "state.db")
    try:
        return [j.id for j in state.jobs()]
    finally:
        state.close()


def _run_uri(home: Path, job_id: str) -> str:
    state = State(home / "state.db")
    try:
        return state.job(job_id).run_uri
    finally:
        state.close()


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done
