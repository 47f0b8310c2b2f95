"""One test per way the client used to disagree with RunPod's published API (each failed before the
client was fixed, against the emulator rebuilt from RunPod's OpenAPI documents, which validates every
request the client sends)."""

from __future__ import annotations

import time

import pytest

from runner.backends.base import NoCapacityError
from runner.backends.runpod import RunPodBackend
from runner.runpod import launch
from runner.runpod.errors import NoCapacity
from runner.runpod.names import pod_name
from tests.fixtures.runpod_emulator import CAPACITY_MESSAGES
from tests.integration.runpod_api.conftest import launch_request

RTX3090, RTX4090 = "NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 4090"


@pytest.fixture
def backend(client) -> RunPodBackend:
    return RunPodBackend(client=client)


def test_1_an_on_demand_pod_is_created_with_args_as_one_string(emulator, backend, project, tmp_path):
    run = tmp_path / "run with space"
    launched = backend.launch(launch_request(project, str(run), spot=False))
    pod = emulator.pods[launched.handle["pod_id"]]
    assert not pod.spot and pod.args == f"jobs/job.yaml --run-uri '{run}'"
    assert [s for m, p, s in emulator.requests if (m, p) == ("POST", "/v2/pods")] == [201]
    emulator.wait_until(lambda: (run / "status.json").exists(), 30, "the stand-in trainer to run with those args")


def test_2_a_graphql_internal_error_after_a_real_create_finds_that_pod(emulator, backend, project, tmp_path):
    emulator.graphql_internal_error_after_create(1)
    emulator.lag_listing(3.0)  # and the pod list does not show it at once
    events: list = []
    launched = backend.launch(launch_request(project, str(tmp_path / "run"), events=events))
    [pod] = emulator.pods.values()
    assert launched.handle["pod_id"] == pod.id and launched.adopted and pod.spot
    assert [k for k, _ in events] == ["create_retry", "create_found"], events
    assert "INTERNAL_SERVER_ERROR" in events[0][1]


@pytest.mark.parametrize("wording", CAPACITY_MESSAGES)
def test_3_each_capacity_wording_walks_on_to_the_next_gpu(emulator, backend, project, tmp_path, wording):
    emulator.exhaust(RTX3090, message=wording)
    events: list = []
    launched = backend.launch(launch_request(project, str(tmp_path / "run"), gpus=("rtx3090", "rtx4090"),
                                             spot=False, events=events))
    assert launched.gpu == "rtx4090"
    assert [k for k, _ in events] == ["no_capacity", "no_capacity"] and wording in events[0][1]


def test_4_gpu_hours_come_from_the_pods_running_time_not_the_billing_buckets(emulator, backend, project, tmp_path):
    launched = backend.launch(launch_request(project, str(tmp_path / "run"), spot=False))
    handle = launched.handle
    deadline = time.monotonic() + 30
    while emulator.running_seconds(handle["pod_id"]) < 3:  # the supervisor's looks at the pod
        assert backend.poll(handle).state == "running" and time.monotonic() < deadline
        time.sleep(0.2)
    backend.stop(handle, grace_s=10)
    billed = backend.billed(handle)
    seconds = emulator.running_seconds(handle["pod_id"])
    # Buckets are an hour wide: within a second of the pod's running time can only come from the
    # timeline (the slack is the time between the last look and the stop on a loaded machine).
    assert billed.ended - billed.started == pytest.approx(seconds, rel=0.01, abs=1.0)
    assert billed.usd == pytest.approx(emulator.billed_gpu_usd(handle["pod_id"]), abs=1e-9)
    assert billed.note is None


def test_4b_a_bill_the_running_time_does_not_explain_is_reported(emulator, backend, project, tmp_path, monkeypatch):
    launched = backend.launch(launch_request(project, str(tmp_path / "run"), spot=False))
    handle = launched.handle
    emulator.wait_until(lambda: emulator.running_seconds(handle["pod_id"]) > 2, 30, "two seconds of running")
    backend.poll(handle)
    backend.stop(handle, grace_s=10)
    from runner.runpod import client as client_module

    real = client_module.RunPodClient.billing

    def doubled(self, *a, **kw):
        return [client_module.BillingRecord(r.pod_id, r.bucket_start, r.bucket_end, r.total_usd * 2, r.gpu_usd * 2,
                                            r.cpu_usd, r.disk_usd) for r in real(self, *a, **kw)]

    monkeypatch.setattr(client_module.RunPodClient, "billing", doubled)
    billed = backend.billed(handle)
    assert billed.note and "RunPod billed" in billed.note and "as the runner saw it" in billed.note


def test_5_the_catalog_reads_v2_prices_per_cloud_stock_and_graphql_spot_prices(emulator, client):
    emulator.exhaust(RTX4090)
    offers = {o.id: o for o in client.gpu_catalog()}
    price = emulator.prices[RTX3090]
    rtx3090 = offers[RTX3090]
    assert (rtx3090.secure.on_demand, rtx3090.community.on_demand) == (price["securePrice"], price["communityPrice"])
    assert (rtx3090.secure.minimum_bid, rtx3090.community.minimum_bid) == \
        (price["secureMinimumBidPrice"], price["communityMinimumBidPrice"])
    assert rtx3090.memory_gb == 24 and rtx3090.stock not in (None, "NONE")
    assert offers[RTX4090].stock == "NONE"
    [catalog_call] = [p for m, p, s in emulator.requests if p == "/v2/catalog/gpus"]
    assert catalog_call


def test_6_logs_read_without_follow_return_promptly_while_the_pod_runs(emulator, backend, project, tmp_path):
    launched = backend.launch(launch_request(project, str(tmp_path / "run"), spot=False))
    handle = launched.handle
    emulator.wait_until(lambda: (tmp_path / "run" / "status.json").exists(), 30, "the trainer to start")
    started = time.monotonic()
    lines = list(backend.logs(handle, follow=False))
    assert time.monotonic() - started < 10
    assert any("stand-in trainer up in pod" in line for line in lines), lines


def test_7_each_cloud_gets_its_own_spot_bid(emulator, backend, project, tmp_path):
    emulator.set_price(RTX3090, secureMinimumBidPrice=0.30, communityMinimumBidPrice=0.20)
    emulator.exhaust(RTX3090, cloud="SECURE", spot=True)
    launched = backend.launch(launch_request(project, str(tmp_path / "run"), margin=0.01, max_bid=0.33))
    pod = emulator.pods[launched.handle["pod_id"]]
    assert launched.handle["cloud"] == "COMMUNITY" and pod.bid_per_gpu == pytest.approx(0.21)
    # and the cap holds in both: secure's minimum above it is skipped with the reason
    emulator.restore()
    with pytest.raises(NoCapacityError, match=r"SECURE: the minimum bid is \$0.300/GPU-hour, above your cap"):
        emulator.exhaust(RTX3090, cloud="COMMUNITY", spot=True)
        backend.launch(launch_request(project, str(tmp_path / "r2"), attempt_id="job-abc-2", max_bid=0.25))


def test_8_an_ambiguous_create_is_looked_up_for_a_minute_and_never_doubled(emulator, backend, project, tmp_path,
                                                                          monkeypatch):
    emulator.fail_after_create(1)
    emulator.lag_listing(6.0)  # several lookups miss it before it shows
    events: list = []
    launched = backend.launch(launch_request(project, str(tmp_path / "run"), spot=False, events=events))
    [pod] = emulator.pods.values()
    assert launched.handle["pod_id"] == pod.id and launched.adopted
    lookups = [s for m, p, s in emulator.requests if (m, p) == ("GET", "/v2/pods")]
    assert len(lookups) >= 3, "one miss is no proof: the name is looked up again with backoff"


def test_8b_a_create_that_made_nothing_is_sent_again_only_after_the_lookup_window(emulator, client, monkeypatch):
    monkeypatch.setattr(launch, "AMBIGUOUS_LOOKUP_SECONDS", 2.0)
    emulator.fail_next(1, 500, path_prefix="/v2/pods")  # refused before anything was made
    plan = launch.PodPlan(name=pod_name("job-abc-1"), image="emu/stand-in:1", args=("x",), env={})
    option = launch.Option(gpu=_gpu("rtx3090"), cloud="SECURE", spot=False)
    started = time.monotonic()
    pod, found = launch.create_once(client, plan, option, None, lambda kind, message: None)
    assert not found and time.monotonic() - started >= 2.0 and len(emulator.pods) == 1
    with pytest.raises(NoCapacity):  # and the capacity wording is still told apart
        emulator.exhaust(RTX3090, cloud="SECURE")
        launch.create_once(client, launch.PodPlan(name="other", image="emu/stand-in:1", args=(), env={}), option, None,
                           lambda kind, message: None)


def _gpu(alias: str):
    from runner.catalog import load_catalog

    return load_catalog().resolve(alias)
