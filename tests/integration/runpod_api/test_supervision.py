"""The supervisor's capacity policy with the runpod backend: launches that find no spot capacity count
toward `retry.fallback_to_on_demand_after` like preemptions, and then the job goes on on-demand."""

from __future__ import annotations

import hashlib
import time

from runner import state as st
from runner.backends.runpod import RunPodBackend
from runner.supervisor import JobSupervisor
from tests.fixtures.jobs import job_spec
from tests.integration.runpod_api.conftest import IMAGE

RTX3090 = "NVIDIA GeForce RTX 3090"


def test_spot_shortfalls_fall_back_to_on_demand_after_the_jobs_number(emulator, client, project, tmp_path):
    job_file = project / "jobs" / "job.yaml"
    spec = {"name": "job", "backend": "runpod", "image": {"name": IMAGE}, "secrets": [], "env": {},
            "resources": {"gpu": "rtx3090", "spot": True},
            "retry": {"fallback_to_on_demand_after": 2, "backoff_seconds": 0}, "train": {}}
    state = st.State(tmp_path / "state.db")
    job = state.create_job(id="job-abc", name="job", job_file=str(job_file),
                           job_sha256=hashlib.sha256(job_file.read_bytes()).hexdigest(), spec=job_spec(spec),
                           workdir=str(project), backend="runpod", run_uri=str(tmp_path / "run"))
    emulator.exhaust(RTX3090, spot=True)  # no spot capacity in either cloud; on-demand is there
    supervisor = JobSupervisor(state, job.id, {}, backend=RunPodBackend(client=client))
    deadline = time.monotonic() + 60
    while not (state.current_attempt(job.id) and state.current_attempt(job.id).state == st.ATTEMPT_RUNNING):
        assert time.monotonic() < deadline, [a.outcome for a in state.attempts(job.id)]
        supervisor.step()
    attempts = state.attempts(job.id)
    assert [(a.outcome, bool(a.spot)) for a in attempts] == [("no_capacity", True), ("no_capacity", True),
                                                              (None, False)]
    assert "RunPod has no spot capacity for any GPU" in attempts[0].detail
    assert [p.spot for p in emulator.pods.values()] == [False]
    fallback = [e.message for e in state.events(job.id) if e.kind == "fallback"]
    assert fallback == ["0 preemptions and 2 launches without spot capacity: relaunching on on-demand capacity"]
    supervisor.backend.stop(attempts[-1].handle, grace_s=0)
    assert emulator.live_pods() == []
