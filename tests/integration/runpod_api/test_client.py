"""The client against the emulator: retries where a retry can help and never where it cannot,
RunPod's own words in every error, GraphQL values sent as variables."""

from __future__ import annotations

import time

import pytest

from runner.runpod.client import RunPodClient
from runner.runpod.errors import AuthError, BalanceError, InvalidRequest, NoCapacity, SpotRefused
from runner.runpod.http import Transport
from tests.conftest import ROOT
from tests.integration.runpod_api.conftest import IMAGE

RTX3090 = "NVIDIA GeForce RTX 3090"


def calls(emulator, path: str) -> list[int]:
    return [status for _method, p, status in emulator.requests if p == path]


def test_a_burst_of_429s_is_waited_out_as_retry_after_says(emulator, client):
    emulator.fail_next(3, 429, retry_after=0.4)
    started = time.monotonic()
    assert client.list_pods() == []
    assert calls(emulator, "/v2/pods") == [429, 429, 429, 200]
    assert time.monotonic() - started >= 1.2  # 3 × Retry-After, not the (shorter) backoff


@pytest.mark.parametrize("status", [500, 502, 503, 0])
def test_server_errors_and_dropped_connections_are_retried(emulator, client, status):
    emulator.fail_next(2, status)
    assert any(g.id == RTX3090 for g in client.gpu_catalog())
    assert calls(emulator, "/v2/catalog/gpus") == [status, status, 200]


@pytest.mark.parametrize("status, error, words", [
    (401, AuthError, "RUNPOD_API_KEY"), (402, BalanceError, "add credit"), (403, AuthError, "permission"),
    (422, InvalidRequest, "HTTP 422"),
])
def test_errors_a_retry_cannot_fix_are_sent_once(emulator, client, status, error, words):
    emulator.fail_next(1, status)
    with pytest.raises(error) as caught:
        client.list_pods()
    assert calls(emulator, "/v2/pods") == [status]
    assert words in str(caught.value)


def test_a_wrong_key_is_refused_once_with_what_to_do(emulator):
    bad = RunPodClient(Transport("rpa_WRONGKEY0000000000000000", emulator.url))
    with pytest.raises(AuthError, match="check RUNPOD_API_KEY"):
        bad.list_pods()
    assert calls(emulator, "/v2/pods") == [401]


def test_a_schema_violation_names_the_field_and_is_not_retried(emulator, client):
    with pytest.raises(InvalidRequest) as caught:
        client.create_pod({"name": "x", "image": IMAGE, "gpu": {"id": RTX3090}, "args": ["a", "b"]})
    assert "HTTP 422" in str(caught.value) and "$.args" in str(caught.value)
    assert calls(emulator, "/v2/pods") == [422]


def test_no_capacity_is_told_apart_from_other_400s(emulator, client):
    emulator.exhaust(RTX3090, cloud="SECURE")
    body = {"name": "x", "image": IMAGE, "gpu": {"id": RTX3090, "count": 1}, "cloud": "SECURE"}
    with pytest.raises(NoCapacity, match="instances"):
        client.create_pod(body)
    with pytest.raises(InvalidRequest) as caught:
        client.create_pod({**body, "gpu": {"id": "NVIDIA Imaginary 9000", "count": 1}})
    assert not isinstance(caught.value, NoCapacity)


def test_graphql_values_travel_as_variables_never_in_the_query_text(emulator, client):
    nasty = 'it\'s "quoted" }) { id } mutation { podTerminate(input: {podId: "x"}) }\nnew line \\ back'
    pod = client.create_spot_pod({
        "bidPerGpu": 0.35, "gpuTypeId": RTX3090, "gpuCount": 1, "cloudType": "COMMUNITY", "imageName": IMAGE,
        "name": "spot-x", "env": [{"key": "NASTY", "value": nasty}], "dockerArgs": "jobs/job.yaml --run-uri /tmp/x"})
    assert emulator.pods[pod.id].env["NASTY"] == nasty and emulator.pods[pod.id].spot
    details = client.pod_details(pod.id)
    assert details.pod_type == "INTERRUPTABLE" and not details.interrupted_by_runpod
    source = (ROOT / "runner" / "runpod" / "graphql.py").read_text()
    assert "{" + "input" not in source.replace("{input: {", "").replace("(input: {", "")  # no f-string fields


def test_graphql_errors_come_as_http_200_and_say_what_runpod_said(emulator, client):
    emulator.refuse_spot("Interruptible pods are retired; deploy on-demand.")
    spec = {"bidPerGpu": 0.35, "gpuTypeId": RTX3090, "gpuCount": 1, "cloudType": "SECURE", "imageName": IMAGE,
            "name": "spot-y", "env": [], "dockerArgs": ""}
    with pytest.raises(SpotRefused, match="Interruptible pods are retired"):
        client.create_spot_pod(spec)
    emulator.refuse_spot(None)
    emulator.exhaust(RTX3090, spot=True)
    with pytest.raises(NoCapacity):
        client.create_spot_pod(spec)
    assert set(calls(emulator, "/graphql")) == {200}


def test_prices_per_cloud_minimum_bids_and_billing_per_second(emulator, client):
    emulator.set_price(RTX3090, secureMinimumBidPrice=0.2, communityMinimumBidPrice=0.17, secureSpotPrice=0.25)
    offer = client.gpu_prices(RTX3090)
    assert (offer.secure.minimum_bid, offer.secure.spot, offer.secure.on_demand) == (0.2, 0.25, 0.44)
    assert offer.community.minimum_bid == 0.17
    pod = client.create_pod({"name": "billed", "image": IMAGE, "gpu": {"id": RTX3090, "count": 2},
                             "cloud": "SECURE", "args": f"jobs/job.yaml --run-uri {emulator.root / 'r'}"})
    assert pod.cost_per_hour == pytest.approx(0.88)
    emulator.wait_until(lambda: emulator.running_seconds(pod.id) > 0.5, 10, "half a second of running")
    client.terminate(pod.id)
    assert client.get_pod(pod.id) is None and client.list_pods() == []
    records = client.billing(pod_id=pod.id)
    seconds = emulator.running_seconds(pod.id)
    assert sum(r.gpu_usd for r in records) == pytest.approx(seconds * 0.88 / 3600) and seconds > 0.5
    assert all(r.bucket_end - r.bucket_start == 3600 for r in records)  # hour buckets, not the pod's uptime


def test_an_interrupted_spot_pod_resumes_only_with_a_bid(emulator, client):
    pod = client.create_spot_pod({
        "bidPerGpu": 0.34, "gpuTypeId": RTX3090, "gpuCount": 1, "cloudType": "SECURE", "imageName": IMAGE,
        "name": "spot-z", "env": [], "dockerArgs": f"jobs/job.yaml --run-uri {emulator.root / 'z'}"})
    emulator.preempt(pod.id, kill_after=1)
    emulator.wait_until(lambda: emulator.pods[pod.id].status == "EXITED", 15, "the interrupted pod to exit")
    assert client.pod_details(pod.id).interrupted_by_runpod
    with pytest.raises(InvalidRequest, match="Cannot resume a spot pod as an on demand pod"):
        client.action(pod.id, "start")
    client.resume_spot_pod(pod.id, 0.36, 1)
    assert client.get_pod(pod.id).status in ("STARTING", "RUNNING") and emulator.pods[pod.id].rate_per_hour == 0.36
    emulator.wait_until(lambda: emulator.pods[pod.id].status == "RUNNING", 15, "the resumed pod to run")
    assert not client.pod_details(pod.id).interrupted_by_runpod


def test_a_container_whose_main_process_exits_is_restarted_and_the_pod_bills_on(emulator, client):
    pod = client.create_pod({"name": "crashy", "image": IMAGE, "gpu": {"id": RTX3090, "count": 1},
                             "env": {"POD_MODE": "fail"}, "args": f"jobs/job.yaml --run-uri {emulator.root / 'c'}"})
    emulator.wait_until(lambda: emulator.pods[pod.id].container_starts >= 3, 30, "two restarts of the container")
    again = client.get_pod(pod.id)
    assert again.status == "RUNNING" and again.cost_per_hour == 0.44
    assert len(emulator.pods[pod.id].billing) == 1 and emulator.pods[pod.id].billing[0].end is None
