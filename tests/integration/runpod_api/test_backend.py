"""The runpod backend against the emulator, with a stand-in trainer in each pod: one pod per attempt
whatever RunPod answers, the capacity walk, spot bids, preemption told from done and from a crash,
stop that always ends in terminate, and reconcile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.backends.base import NoCapacityError, SpotUnavailableError
from runner.backends.runpod import RunPodBackend
from runner.runpod.names import pod_name
from runner.runpod.reconcile import reconcile
from runner.state import State
from tests.fixtures.jobs import job_spec
from tests.integration.runpod_api.conftest import launch_request
from trainer import contract
from trainer.runpod_pod import stop_own_pod

RTX3090, RTX4090 = "NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 4090"


@pytest.fixture
def backend(client) -> RunPodBackend:
    return RunPodBackend(client=client)


def status_of(run: Path) -> dict | None:
    try:
        return json.loads((run / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_a_create_answered_500_after_the_pod_was_made_gives_one_pod(emulator, backend, project, tmp_path):
    emulator.fail_after_create(1)  # a REST create: an on-demand pod
    events: list = []
    launched = backend.launch(launch_request(project, str(tmp_path / "run"), spot=False, events=events))
    [pod] = emulator.pods_named(pod_name("job-abc-1"))
    assert launched.handle["pod_id"] == pod.id and len(emulator.pods) == 1
    kinds = [k for k, _ in events]
    assert kinds == ["create_retry", "create_found"], events
    # Launch again for the same attempt (a runner restarted before recording it): the same pod.
    again = backend.launch(launch_request(project, str(tmp_path / "run"), spot=False))
    assert again.adopted and again.handle["pod_id"] == pod.id and len(emulator.pods) == 1


def test_the_capacity_walk_goes_through_clouds_then_gpus(emulator, backend, project, tmp_path):
    emulator.exhaust(RTX3090, cloud="SECURE")
    events: list = []
    first = backend.launch(launch_request(project, str(tmp_path / "r1"), attempt_id="job-abc-1",
                                          gpus=("rtx3090", "rtx4090"), events=events))
    assert (first.gpu, first.handle["cloud"], first.spot) == ("rtx3090", "COMMUNITY", True)
    assert "no longer any instances available" in events[0][1]
    emulator.exhaust(RTX3090)
    second = backend.launch(launch_request(project, str(tmp_path / "r2"), attempt_id="job-abc-2",
                                           gpus=("rtx3090", "rtx4090")))
    assert (second.gpu, second.handle["cloud"]) == ("rtx4090", "SECURE")
    emulator.exhaust(RTX4090)
    with pytest.raises(NoCapacityError) as caught:
        backend.launch(launch_request(project, str(tmp_path / "r3"), attempt_id="job-abc-3",
                                      gpus=("rtx3090", "rtx4090")))
    assert caught.value.spot and "rtx4090 spot on COMMUNITY" in str(caught.value)
    assert "resources.gpu" in str(caught.value)  # what to change
    assert len(emulator.pods) == 2


def test_the_spot_bid_is_the_live_minimum_plus_the_margin_under_the_cap(emulator, backend, project, tmp_path):
    emulator.set_price(RTX3090, secureMinimumBidPrice=0.2)
    launched = backend.launch(launch_request(project, str(tmp_path / "r"), margin=0.03, max_bid=0.3))
    pod = emulator.pods[launched.handle["pod_id"]]
    assert pod.bid_per_gpu == pytest.approx(0.23) and launched.rate_per_hour == pytest.approx(0.23)
    emulator.set_price(RTX3090, secureMinimumBidPrice=0.5)  # outbid: RunPod interrupts the pod
    emulator.wait_until(lambda: pod.status == "EXITED", 15, "the outbid pod to exit")
    assert "by Runpod" in pod.last_status_change
    emulator.set_price(RTX3090, communityMinimumBidPrice=0.5)  # and in the other cloud too
    with pytest.raises(NoCapacityError, match=r"minimum bid is \$0.500/GPU-hour, above your cap of \$0.300"):
        backend.launch(launch_request(project, str(tmp_path / "r2"), attempt_id="job-abc-2", max_bid=0.3))


def test_spot_refused_says_what_runpod_said_and_what_to_change(emulator, backend, project, tmp_path):
    emulator.refuse_spot("Spot is gone. Use on-demand.")
    with pytest.raises(SpotUnavailableError) as caught:
        backend.launch(launch_request(project, str(tmp_path / "r")))
    message = str(caught.value)
    assert '"Spot is gone. Use on-demand."' in message and "resources.spot: false" in message
    assert "fallback_to_on_demand_after" in message and emulator.pods == {}
    on_demand = backend.launch(launch_request(project, str(tmp_path / "r"), spot=False))
    assert not on_demand.spot and on_demand.rate_per_hour == pytest.approx(0.44)


def test_secrets_reach_the_pod_env_and_nothing_else(emulator, backend, project, tmp_path):
    secret = "hf_" + "S3cr3tV4lu3" * 3
    emulator.fail_after_create(1)
    events: list = []
    launched = backend.launch(launch_request(project, str(tmp_path / "r"), env={"HF_TOKEN": secret}, events=events))
    pod = emulator.pods[launched.handle["pod_id"]]
    assert pod.env["HF_TOKEN"] == secret and pod.env[contract.ENV_ATTEMPT_ID] == "job-abc-1"
    assert pod.env["RUNPOD_API_BASE_URL"] == emulator.url  # the pod calls the API the runner uses
    assert secret not in json.dumps(launched.handle) and secret not in repr(launched) and secret not in str(events)
    emulator.fail_next(1, 422)
    with pytest.raises(Exception) as caught:
        backend.launch(launch_request(project, str(tmp_path / "r"), attempt_id="job-abc-2",
                                      env={"HF_TOKEN": secret}))
    assert secret not in str(caught.value)


def test_preempted_done_and_failed_pods_are_told_apart(emulator, backend, project, tmp_path):
    run = tmp_path / "run"
    launched = backend.launch(launch_request(project, str(run)))
    handle = launched.handle
    emulator.wait_until(lambda: (status_of(run) or {}).get("state") == "running", 30, "the stand-in to run")
    assert backend.poll(handle).state == "running"
    emulator.preempt(handle["pod_id"])
    pod = emulator.pods[handle["pod_id"]]
    emulator.wait_until(lambda: pod.status == "EXITED", 15, "the preempted pod to exit")
    obs = backend.poll(handle)
    assert obs.state == "vanished" and "RunPod interrupted" in obs.detail and "Exited by Runpod" in obs.detail
    assert status_of(run)["state"] == "interrupted"  # it got SIGTERM and wrote its emergency status
    stopped = backend.stop(handle, grace_s=5)
    assert stopped.state == "vanished" and emulator.live_pods() == []

    done = backend.launch(launch_request(project, str(tmp_path / "d"), attempt_id="job-abc-2", env={"POD_MODE": "done"}))
    emulator.wait_until(lambda: (status_of(tmp_path / "d") or {}).get("state") == "done", 30, "done")
    obs = backend.poll(done.handle)
    assert (obs.state, obs.exit_code) == ("exited", 0)  # done while RunPod still runs the pod

    failed = backend.launch(launch_request(project, str(tmp_path / "f"), attempt_id="job-abc-3", env={"POD_MODE": "fail"}))
    emulator.wait_until(lambda: (status_of(tmp_path / "f") or {}).get("state") == "failed", 30, "failed")
    obs = backend.poll(failed.handle)
    assert (obs.state, obs.exit_code) == ("exited", 2)  # permanent: RunPod would restart it forever
    assert emulator.pods[failed.handle["pod_id"]].container_starts >= 1
    for h in (done.handle, failed.handle):
        backend.stop(h, grace_s=0)
    assert emulator.live_pods() == []


def test_a_crash_is_told_from_a_preemption_and_a_vanished_pod_from_both(emulator, backend, client, project,
                                                                          tmp_path):
    crashed = backend.launch(launch_request(project, str(tmp_path / "c"), env={"POD_MODE": "crash"}))
    pod = emulator.pods[crashed.handle["pod_id"]]
    emulator.wait_until(lambda: pod.status == "EXITED", 30, "the crashed pod to stop itself")
    assert pod.last_status_change.startswith("Exited by user:") and pod.container_starts == 1  # no restart after the stop
    obs = backend.poll(crashed.handle)
    assert (obs.state, obs.exit_code) == ("exited", 1) and "Exited by user" in obs.detail

    lost = backend.launch(launch_request(project, str(tmp_path / "l"), attempt_id="job-abc-2"))
    client.terminate(lost.handle["pod_id"])  # gone behind the runner's back
    obs = backend.poll(lost.handle)
    assert obs.state == "vanished" and "is gone" in obs.detail
    assert backend.stop(lost.handle, grace_s=5).state == "vanished"  # stopping what is gone is fine


def test_stop_gives_the_trainer_its_emergency_checkpoint_then_terminates(emulator, backend, project, tmp_path):
    run = tmp_path / "run"
    launched = backend.launch(launch_request(project, str(run)))
    emulator.wait_until(lambda: (status_of(run) or {}).get("state") == "running", 30, "the stand-in to run")
    obs = backend.stop(launched.handle, grace_s=20)
    assert (obs.state, obs.exit_code) == ("exited", 75), obs
    pod = emulator.pods[launched.handle["pod_id"]]
    assert pod.status == "TERMINATED" and pod.last_status_change.startswith("Terminated by user:")
    billed = backend.billed(launched.handle)  # compute and disk, as RunPod billed them
    assert emulator.billed_usd(pod.id) > 0 and billed.usd + billed.storage_usd == pytest.approx(
        emulator.billed_usd(pod.id))
    assert billed.usd == pytest.approx(emulator.billed_gpu_usd(pod.id))


def test_a_pod_stops_itself_with_its_own_key_which_reaches_no_other_pod(emulator, backend, project, tmp_path):
    mine = emulator.pods[backend.launch(launch_request(project, str(tmp_path / "a"))).handle["pod_id"]]
    other = emulator.pods[backend.launch(launch_request(project, str(tmp_path / "b"), attempt_id="job-abc-2"))
                          .handle["pod_id"]]
    env = {"RUNPOD_POD_ID": other.id, "RUNPOD_API_KEY": mine.pod_key, "RUNPOD_API_BASE_URL": emulator.url}
    assert not stop_own_pod("test", env)  # 403: a pod's key only reaches that pod
    env["RUNPOD_POD_ID"] = mine.id
    assert stop_own_pod("test", env)
    emulator.wait_until(lambda: mine.status == "EXITED", 20, "the pod to stop itself")
    assert mine.last_status_change.startswith("Exited by user:") and other.status in ("PROVISIONING", "STARTING",
                                                                                     "RUNNING")


def test_reconcile_terminates_our_pods_that_no_active_attempt_owns(emulator, backend, client, project, tmp_path):
    state = State(tmp_path / "state.db")
    job = state.create_job(id="job-abc", name="job", job_file="j.yaml", job_sha256="0", spec=job_spec(), workdir=".",
                           backend="runpod", run_uri=str(tmp_path / "run"))
    first = state.add_attempt(job.id, backend="runpod", gpu="rtx3090", gpu_count=1, spot=True, start_step=0)
    h1 = backend.launch(launch_request(project, str(tmp_path / "run"), attempt_id=first.id)).handle
    state.attempt_ended(first, outcome="interrupted", exit_code=None, detail="", end_step=0)
    second = state.add_attempt(job.id, backend="runpod", gpu="rtx3090", gpu_count=1, spot=True, start_step=0)
    h2 = backend.launch(launch_request(project, str(tmp_path / "run"), attempt_id=second.id)).handle
    stray = backend.launch(launch_request(project, str(tmp_path / "x"), attempt_id="gone-1")).handle
    foreign = client.create_pod({"name": "spot-runner-someone-else-1", "image": "emu/stand-in:1",
                                 "gpu": {"id": RTX3090, "count": 1}, "args": f"j --run-uri {tmp_path / 'y'}"})
    said: list[str] = []
    from runner.runpod.names import owner_id

    decisions = reconcile(state, client, owner_id(), said.append)
    by_pod = {d.pod_id: d.action for d in decisions}
    assert by_pod == {h1["pod_id"]: "terminate", h2["pod_id"]: "keep", stray["pod_id"]: "terminate"}
    assert {p.id for p in emulator.live_pods()} == {h2["pod_id"], foreign.id}
    assert len(said) == 2 and all("terminated RunPod pod" in s for s in said)
    assert any(e.kind == "pod_terminated" for e in state.events(job.id))
