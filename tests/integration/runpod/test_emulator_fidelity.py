"""The RunPod emulator follows RunPod's *published* documents (tests/fixtures/runpod_openapi/*.yaml and
../shared/RUNPOD.md), not what our client sends: for each documented rule, a request that breaks it
gets the documented answer. Plain ``requests`` calls, no client of ours; every pod runs a short
``python -c`` loop, so no Dockerfile or bucket is needed."""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from tests.fixtures import runpod_billing, runpod_openapi, runpod_rest
from tests.fixtures.runpod_emulator import CAPACITY_MESSAGES, RunPodEmulator
from tests.fixtures.runpod_graphql import INTERNAL_ERROR_MESSAGE
from tests.fixtures.runpod_pods import BillingInterval, EmulatedPod, Image, Interval

IMAGE = "emulated/loop:1"
RTX3090 = "NVIDIA GeForce RTX 3090"
#: The container: prints its arguments, then a line every 0.1 s; ``--exit-after N`` ends it after N lines.
LOOP = ("import sys, time\n"
        "print('args', sys.argv[1:], flush=True)\n"
        "n = int(sys.argv[sys.argv.index('--exit-after') + 1]) if '--exit-after' in sys.argv else 10**9\n"
        "for i in range(n):\n"
        "    print('tick', i, flush=True)\n"
        "    time.sleep(0.1)\n")
JS_DATE = r"[A-Z][a-z]{2} [A-Z][a-z]{2} \d{2} \d{4} \d{2}:\d{2}:\d{2} GMT\+0000 \(Coordinated Universal Time\)"
EVENT_ID = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z/\d{12}")


class Api:
    """``requests`` against the emulator with the account key (or another)."""

    def __init__(self, emulator: RunPodEmulator, key: str | None = None):
        self.url, self.session = emulator.url, requests.Session()
        if key != "":
            self.session.headers["Authorization"] = f"Bearer {key or emulator.api_key}"

    def get(self, path: str, **kw) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, body=None, **kw) -> requests.Response:
        return self.session.post(self.url + path, json=body, timeout=30, **kw)

    def delete(self, path: str) -> requests.Response:
        return self.session.delete(self.url + path, timeout=30)

    def graphql(self, query: str, variables: dict | None = None) -> requests.Response:
        return self.post("/graphql", {"query": query, "variables": variables or {}})


@pytest.fixture
def emulator(tmp_path: Path):
    with RunPodEmulator(tmp_path / "emulator", [Image(IMAGE, tmp_path, ("python", "-c", LOOP))]) as emu:
        emu.set_boot_seconds(0.1, 0.1)
        yield emu


@pytest.fixture
def api(emulator) -> Api:
    return Api(emulator)


def pod_body(**overrides) -> dict:
    return {"name": "fidelity", "image": IMAGE, "gpu": {"id": RTX3090, "count": 1}, **overrides}


def create(api: Api, **overrides) -> dict:
    answer = api.post("/v2/pods", pod_body(**overrides))
    assert answer.status_code == 201, answer.text
    return answer.json()


def wait_status(emulator: RunPodEmulator, pod_id: str, status: str, timeout: float = 30) -> None:
    emulator.wait_until(lambda: emulator.pods[pod_id].status == status, timeout, f"pod {pod_id} {status}")


def problem(answer: requests.Response, status: int) -> dict:
    """An ``ErrorResponse`` answer with ``status``: problem+json, no ``type``, ``errors`` strings."""
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/problem+json"
    body = answer.json()
    runpod_openapi.check("ErrorResponse", body)
    assert body["status"] == status and body["title"] == runpod_rest.TITLES[status] and "type" not in body
    return body


def events(answer: requests.Response, limit: int | None = None) -> list[tuple[str, dict]]:
    """(id, data) per Server-Sent Event, up to ``limit`` events (then the stream is closed)."""
    out, lines = [], []
    for raw in answer.iter_lines():
        line = raw.decode()
        if line:
            lines.append(line)
            continue
        assert [ln.split(":", 1)[0] for ln in lines] == ["id", "data"], lines
        out.append((lines[0].removeprefix("id: "), json.loads(lines[1].removeprefix("data: "))))
        lines = []
        if limit is not None and len(out) >= limit:
            answer.close()
            break
    return out


# --- the OpenAPI documents themselves ---------------------------------------------------------------
def test_published_examples_validate_against_their_schemas():
    checked = 0
    for op in runpod_openapi.operations().values():
        for raw in op.spec["responses"].values():
            for media in (runpod_openapi.resolve(raw).get("content") or {}).values():
                ref = media["schema"].get("$ref")
                for example in (media.get("examples") or {}).values():
                    if ref:
                        runpod_openapi.check(ref.rsplit("/", 1)[-1], example["value"])
                        checked += 1
    assert checked >= 8
    for name in ("CreatePodRequest", "PodActionRequest", "Pod", "ListPodsResponse", "ListGpuTypesResponse", "GpuType",
                 "ListPodBillingResponse", "ErrorResponse"):
        assert runpod_openapi.validator(name) is not None
    assert {"cudaVersion", "ssh"} <= set(runpod_openapi.validator("Pod").schema["components"]["schemas"]["Pod"]
                                         ["allOf"][1]["required"])


def test_the_documents_are_valid_openapi():
    spec_validator = pytest.importorskip("openapi_spec_validator")
    for doc in runpod_openapi.documents().values():
        spec_validator.validate(doc)


def test_body_errors_follow_the_documented_style():
    assert runpod_openapi.body_errors("CreatePodRequest", pod_body(bogus=1)) == [
        "$: additional properties 'bogus' not allowed"]
    assert runpod_openapi.body_errors("CreatePodRequest", pod_body(args=["a"])) == [
        "$.args: ['a'] is not of type 'string'"]  # not the spurious "'args', 'image' were unexpected"
    assert runpod_openapi.body_errors("CreatePodRequest", pod_body(gpu={"id": RTX3090, "cnt": 1})) == [
        "$.gpu: additional properties 'cnt' not allowed"]
    assert runpod_openapi.body_errors("CreatePodRequest", pod_body(templateId="t", image=None))[0] == (
        "$.image: None is not of type 'string'")


# --- create ---------------------------------------------------------------------------------------
def test_create_answers_a_documented_pod_in_provisioning_and_runs_entrypoint_plus_split_args(api, emulator):
    pod = create(api, args="--alpha 'two words'", env={"K": "v"}, ports=["8888/http", "22/tcp"])
    runpod_openapi.check("Pod", pod)
    assert pod["status"] == "PROVISIONING" and pod["actions"] == ["stop", "terminate"] and pod["runtime"] is None
    assert set(pod) <= runpod_openapi.declared_properties("Pod")  # nothing undocumented to lean on
    assert pod["args"] == "--alpha 'two words'" and pod["startedAt"] is None
    wait_status(emulator, pod["id"], "RUNNING")
    got = api.get(f"/v2/pods/{pod['id']}").json()
    runpod_openapi.check("Pod", got)
    assert got["runtime"]["uptime"] >= 0 and got["startedAt"] and got["ssh"]["proxy"] and got["ssh"]["direct"]
    emulator.wait_until(lambda: any("args" in e.line for e in emulator.pods[pod["id"]].logs.events()), 10, "output")
    lines = [e.line for e in emulator.pods[pod["id"]].logs.events() if e.source == "container"]
    assert lines[0] == "args ['--alpha', 'two words']"


@pytest.mark.parametrize(("body", "named"), [
    (pod_body(args=["--alpha"]), "$.args: ['--alpha'] is not of type 'string'"),
    (pod_body(bogus=True), "$: additional properties 'bogus' not allowed"),
    (pod_body(gpuCount=1), "$: additional properties 'gpuCount' not allowed"),  # a v1 / GraphQL name
    ({"image": IMAGE, "gpu": {"id": RTX3090}}, "$: 'name' is a required property"),
    ({"name": "x", "gpu": {"id": RTX3090}}, "$: 'image' is a required property"),
    (pod_body(env={"A": 1}), "$.env.A: 1 is not of type 'string'"),
    (pod_body(mounts={"persistent": {"size": 20}}), "$.mounts.persistent: 'path' is a required property"),
    (pod_body(cloud="SPOT"), "$.cloud: 'SPOT' is not one of ['SECURE', 'COMMUNITY']"),
])
def test_create_schema_violations_are_422_naming_the_field(api, emulator, body, named):
    found = problem(api.post("/v2/pods", body), 422)
    assert found["detail"] == "Request validation failed." and found["errors"][0] == named
    assert emulator.pods == {}


@pytest.mark.parametrize(("body", "detail"), [
    (pod_body(cpu={"id": "cpu5c", "vcpuCount": 2}), "exactly one of gpu or cpu"),
    ({"name": "x", "image": IMAGE}, "exactly one of gpu or cpu"),
    (pod_body(mounts={"persistent": {"size": 20, "path": "/w"}, "network": [{"volumeId": "v", "path": "/n"}]}),
     "mutually exclusive"),
    ({"name": "x", "image": IMAGE, "cpu": {"id": "cpu5c", "vcpuCount": 2}, "mounts": {"persistent": {"size": 20, "path": "/w"}}},
     "persistent is invalid for a CPU pod"),
    (pod_body(gpu={"id": RTX3090, "allowedCudaVersions": ["12.8"], "minCudaVersion": "12.1"}), "mutually exclusive"),
])
def test_create_handler_rules_are_400(api, emulator, body, detail):
    assert detail in problem(api.post("/v2/pods", body), 400)["detail"]
    assert emulator.pods == {}


def test_create_with_an_unknown_template_is_404(api):
    problem(api.post("/v2/pods", {"name": "x", "templateId": "30zmvf89kd", "gpu": {"id": RTX3090}}), 404)


def test_no_capacity_is_a_400_whose_detail_rotates_through_runpods_wordings(api, emulator):
    emulator.exhaust(RTX3090)
    details = [problem(api.post("/v2/pods", pod_body()), 400)["detail"] for _ in range(3)]
    assert sorted(details) == sorted(CAPACITY_MESSAGES)
    emulator.restore()
    emulator.exhaust(RTX3090, cloud="COMMUNITY", message="There are no instances currently available")
    assert problem(api.post("/v2/pods", pod_body(cloud="COMMUNITY")), 400)["detail"] == (
        "There are no instances currently available")
    create(api)  # SECURE is not exhausted
    assert problem(api.post("/v2/pods", pod_body(dataCenterIds=["EU-RO-1"])), 400)["detail"] in CAPACITY_MESSAGES


def test_a_create_that_answers_500_made_its_pod_and_lists_lag(api, emulator):
    emulator.fail_after_create()
    emulator.lag_listing(3)
    assert problem(api.post("/v2/pods", pod_body(name="leaky")), 500)
    [pod] = emulator.pods_named("leaky")
    assert api.get("/v2/pods").json() == {"pods": []}  # not listed yet
    assert api.get(f"/v2/pods/{pod.id}").status_code == 200  # but there
    time.sleep(3)
    assert [p["name"] for p in api.get("/v2/pods").json()["pods"]] == ["leaky"]


# --- actions --------------------------------------------------------------------------------------
def test_actions_follow_the_documented_status_table(api, emulator):
    pod = create(api)
    pid = pod["id"]
    problem(api.post(f"/v2/pods/{pid}/action", {"action": "pause"}), 422)
    problem(api.post(f"/v2/pods/{pid}/action", {"action": "stop", "force": True}), 422)
    problem(api.post(f"/v2/pods/{pid}/action", {}), 422)
    problem(api.post(f"/v2/pods/{pid}/action", {"action": "start"}), 409)  # PROVISIONING: stop, terminate
    wait_status(emulator, pid, "RUNNING")
    problem(api.post(f"/v2/pods/{pid}/action", {"action": "start"}), 409)  # RUNNING: stop, restart, terminate
    stopped = api.post(f"/v2/pods/{pid}/action", {"action": "stop"})
    assert stopped.status_code == 200
    runpod_openapi.check("Pod", stopped.json())
    wait_status(emulator, pid, "EXITED")
    got = api.get(f"/v2/pods/{pid}").json()
    assert got["actions"] == ["start", "terminate"] and got["cost"] == 0.0 and got["runtime"] is None
    problem(api.post(f"/v2/pods/{pid}/action", {"action": "stop"}), 409)
    problem(api.post(f"/v2/pods/{pid}/action", {"action": "restart"}), 409)
    assert api.post(f"/v2/pods/{pid}/action", {"action": "start"}).json()["status"] == "STARTING"
    wait_status(emulator, pid, "RUNNING")
    terminated = api.post(f"/v2/pods/{pid}/action", {"action": "terminate"})
    assert terminated.status_code == 204 and terminated.content == b""
    problem(api.get(f"/v2/pods/{pid}"), 404)
    assert api.get("/v2/pods").json() == {"pods": []}
    other = create(api)
    assert api.delete(f"/v2/pods/{other['id']}").status_code == 204
    problem(api.delete(f"/v2/pods/{other['id']}"), 404)
    assert [(a, who) for _p, a, who in emulator.actions] == [("start", "account"), ("start", "account"),
                                                             ("stop", "account"), ("stop", "account"),
                                                             ("restart", "account"), ("start", "account"),
                                                             ("terminate", "account"), ("terminate", "account")]


def test_a_pods_own_key_reaches_only_that_pod(api, emulator):
    pod = create(api)
    other = create(api, name="other")
    own = Api(emulator, emulator.pods[pod["id"]].pod_key)
    assert own.get(f"/v2/pods/{pod['id']}").status_code == 200
    problem(own.get(f"/v2/pods/{other['id']}"), 403)
    problem(own.get("/v2/pods"), 403)


def test_a_container_whose_main_process_exits_is_restarted_and_the_pod_bills_on(api, emulator):
    pod = create(api, args="--exit-after 3")
    pid = pod["id"]
    emulator.wait_until(lambda: emulator.pods[pid].container_starts >= 3, 30, "two container restarts")
    got = api.get(f"/v2/pods/{pid}").json()
    assert got["status"] == "RUNNING"
    started = datetime.fromisoformat(got["startedAt"].replace("Z", "+00:00")).timestamp()
    assert got["runtime"]["uptime"] <= 1 < time.time() - started  # uptime counts from the container's start
    before = emulator.running_seconds(pid)
    time.sleep(0.5)
    assert emulator.running_seconds(pid) > before and len(emulator.pods[pid].billing) == 1


# --- queries --------------------------------------------------------------------------------------
def test_unknown_or_bad_query_parameters_are_400(api):
    assert "follow" in problem(api.get("/v2/pods", params={"follow": "true"}), 400)["errors"][0]
    problem(api.get("/v2/pods", params={"includeClusterPods": "maybe"}), 400)
    assert api.get("/v2/pods", params={"includeClusterPods": "true"}).status_code == 200
    problem(api.get("/v2/billing/pods", params={"bucketSize": "minute"}), 400)
    problem(api.get("/v2/billing/pods", params={"lastN": "0"}), 400)
    problem(api.get("/v2/billing/pods", params={"startTime": "yesterday"}), 400)


# --- catalog --------------------------------------------------------------------------------------
def test_catalog_prices_per_cloud_and_availability_only_when_asked(api, emulator):
    listed = api.get("/v2/catalog/gpus").json()
    runpod_openapi.check("ListGpuTypesResponse", listed)
    gpu = next(g for g in listed["gpus"] if g["id"] == RTX3090)
    assert gpu["price"] == {"secure": 0.44, "community": 0.374} and "availability" not in gpu
    assert not {k for g in listed["gpus"] for k in g} & {"spot", "spotPrice", "minimumBidPrice", "interruptible"}
    problem(api.get("/v2/catalog/gpus", params={"include": "AVAILABILITY"}), 400)  # product required
    problem(api.get("/v2/catalog/gpus", params={"product": "POD"}), 400)  # valid only with include
    problem(api.get("/v2/catalog/gpus", params={"cloud": "COMMUNITY"}), 400)
    problem(api.get("/v2/catalog/gpus", params={"include": "AVAILABILITY", "product": "POD", "cudaVersions": "12.8",
                                                 "minCudaVersion": "12"}), 400)
    problem(api.get("/v2/catalog/gpus", params={"include": "AVAILABILITY", "product": "POD", "countryCodes": "us"}), 422)
    path = "/v2/catalog/gpus/NVIDIA%20GeForce%20RTX%203090"
    stocked = api.get(path, params={"include": "AVAILABILITY", "product": "POD"}).json()
    runpod_openapi.check("GpuType", stocked)
    assert stocked["availability"] == "HIGH" and stocked["dataCenters"][0]["availability"] == "HIGH"
    emulator.exhaust(RTX3090, cloud="SECURE")
    gone = api.get(path, params={"include": "AVAILABILITY", "product": "POD"}).json()
    assert gone["availability"] == "NONE" and "dataCenters" not in gone
    assert api.get(path, params={"include": "AVAILABILITY", "product": "POD", "cloud": "COMMUNITY"}).json()[
        "availability"] == "HIGH"
    problem(api.get("/v2/catalog/gpus/NVIDIA%20GeForce%20RTX%209999"), 404)


# --- billing --------------------------------------------------------------------------------------
def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_billing_records_are_bucket_aligned_and_sum_to_running_seconds_times_rate(api, emulator):
    pod = create(api)
    pid = pod["id"]
    wait_status(emulator, pid, "RUNNING")
    time.sleep(1.0)
    api.post(f"/v2/pods/{pid}/action", {"action": "stop"})
    wait_status(emulator, pid, "EXITED")
    answer = api.get("/v2/billing/pods", params={"bucketSize": "hour", "podId": pid, "lastN": "3"})
    assert answer.status_code == 200
    body = answer.json()
    runpod_openapi.check("ListPodBillingResponse", body)
    assert body["records"] and all(r["podId"] == pid for r in body["records"])
    for record in body["records"]:  # a record spans its bucket, not the pod's uptime
        start, end = _ts(record["startTime"]), _ts(record["endTime"])
        assert start % 3600 == 0 and end - start == 3600
        assert record["cpuAmount"] == 0 and record["totalAmount"] == pytest.approx(
            record["gpuAmount"] + record["diskAmount"])
    gpu = sum(r["gpuAmount"] for r in body["records"])
    seconds = emulator.running_seconds(pid)
    assert seconds > 1.0
    assert gpu == pytest.approx(seconds * 0.44 / 3600, rel=1e-9) == emulator.billed_gpu_usd(pid)
    assert body["metadata"]["totals"]["gpuAmount"] == pytest.approx(gpu)
    assert body["metadata"]["query"]["podId"] == pid and body["metadata"]["uniquePodCount"] == 1
    assert emulator.billed_usd(pid) > emulator.billed_gpu_usd(pid)  # disk too


def test_billing_window_snaps_outwards_to_bucket_edges(api):
    problem(api.get("/v2/billing/pods", params={"lastN": "2", "startTime": "2026-06-01T00:00:00Z"}), 400)
    query = api.get("/v2/billing/pods", params={"startTime": "2026-06-01T10:20:30Z", "endTime": "2026-06-03T01:00:00Z"}
                    ).json()["metadata"]["query"]
    assert query == {"startTime": "2026-06-01T00:00:00Z", "endTime": "2026-06-04T00:00:00Z", "bucketSize": "day",
                     "podId": None}
    on_edge = api.get("/v2/billing/pods", params={"startTime": "2026-06-01T00:00:00Z", "endTime": "2026-06-02T00:00:00Z",
                                                  "bucketSize": "hour"}).json()["metadata"]["query"]
    assert (on_edge["startTime"], on_edge["endTime"]) == ("2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z")


def test_billing_splits_a_pod_across_buckets_and_bills_a_stopped_volume_double(tmp_path):
    midnight = datetime(2026, 6, 2, tzinfo=timezone.utc).timestamp()
    pod = EmulatedPod(id="p1", name="n", image=Image(IMAGE, tmp_path), args="", env={}, gpu_id=RTX3090, gpu_count=1,
                      cloud="SECURE", spot=False, bid_per_gpu=None, rate_per_hour=3.6, pod_key="k", home=tmp_path,
                      disk_gb=0, volume_gb=730)
    pod.billing.append(BillingInterval(midnight - 1800, midnight + 1800, 3.6))  # 23:30 → 00:30 running
    pod.stopped.append(Interval(midnight + 1800, midnight + 5400))  # then stopped an hour
    window = runpod_billing.Window.resolve("day", midnight + 86400, start=midnight - 3600, end=midnight + 7200)
    body = runpod_billing.pod_billing([pod], window, None, now=midnight + 86400)
    runpod_openapi.check("ListPodBillingResponse", body)
    [first, second] = body["records"]
    assert (first["startTime"], first["endTime"]) == ("2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z")
    assert first["gpuAmount"] == pytest.approx(1.8) == second["gpuAmount"]
    # 730 GB at $0.10/GB-month running (half an hour each side), then $0.20 stopped for an hour
    assert first["diskAmount"] == pytest.approx(0.05) and second["diskAmount"] == pytest.approx(0.05 + 0.20)


# --- logs -----------------------------------------------------------------------------------------
def test_logs_are_server_sent_events_with_documented_headers_and_parameters(api, emulator):
    pod = create(api)
    pid = pod["id"]
    wait_status(emulator, pid, "RUNNING")
    emulator.wait_until(lambda: sum(e.source == "container" for e in emulator.pods[pid].logs.events()) >= 5, 20,
                        "five lines")
    assert "follow" in problem(api.get(f"/v2/pods/{pid}/logs", params={"follow": "true"}), 400)["errors"][0]
    problem(api.get(f"/v2/pods/{pid}/logs", params={"tail": "5001"}), 400)
    problem(api.get(f"/v2/pods/{pid}/logs", params={"source": "stdout"}), 400)

    stream = api.session.get(f"{api.url}/v2/pods/{pid}/logs", params={"tail": "2", "source": "container"},
                             stream=True, timeout=30)
    assert stream.status_code == 200 and stream.headers["Content-Type"] == "text/event-stream"
    assert {k: stream.headers[k] for k in runpod_rest.SSE_HEADERS} == {
        "Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
    assert "RateLimit" in stream.headers and "RateLimit-Policy" in stream.headers
    got = events(stream, limit=6)  # two backfilled, then live ones: the stream stays open while RUNNING
    assert all(EVENT_ID.fullmatch(i) for i, _ in got)
    assert all(set(d) == {"ts", "source", "line"} and d["source"] == "container" for _, d in got)
    assert all(i.startswith(d["ts"] + "/") for i, d in got)
    ticks = [int(d["line"].split()[1]) for _, d in got]
    assert ticks == list(range(ticks[0], ticks[0] + 6))

    resumed = api.session.get(f"{api.url}/v2/pods/{pid}/logs", headers={"Last-Event-ID": got[2][0]},
                              params={"source": "container", "tail": "0"}, stream=True, timeout=30)
    assert [d["line"] for _, d in events(resumed, limit=3)] == [d["line"] for _, d in got[3:6]]

    system = api.session.get(f"{api.url}/v2/pods/{pid}/logs", params={"source": "system"}, stream=True, timeout=30)
    lines = [d["line"] for _, d in events(system, limit=3)]
    assert lines[0].startswith(f"pod {pid}") and any("start container" in ln for ln in lines)


def test_the_log_stream_ends_when_the_pod_stops(api, emulator):
    pod = create(api)
    pid = pod["id"]
    wait_status(emulator, pid, "RUNNING")
    stream = api.session.get(f"{api.url}/v2/pods/{pid}/logs", params={"tail": "0"}, stream=True, timeout=30)
    api.post(f"/v2/pods/{pid}/action", {"action": "stop"})
    got = events(stream)  # ends by itself
    assert got[-1][1] == {"ts": got[-1][1]["ts"], "source": "system", "line": "pod exited"}
    after = events(api.session.get(f"{api.url}/v2/pods/{pid}/logs", params={"since": "2000-01-01T00:00:00Z"},
                                   stream=True, timeout=30))
    assert after[0][1]["line"].startswith(f"pod {pid}")  # since overrides tail: the whole log, then the end


# --- errors everywhere ----------------------------------------------------------------------------
def test_auth_and_not_found_are_problems(emulator, api):
    assert problem(Api(emulator, key="").get("/v2/pods"), 401)["detail"] == "missing bearer token"
    problem(Api(emulator, key="rpa_WRONG").get("/v2/pods"), 401)
    problem(api.get("/v2/pods/nosuchpod"), 404)
    problem(api.get("/v2/nothing"), 404)
    assert problem(api.session.patch(f"{api.url}/v2/catalog/gpus", timeout=30), 405)
    ok = api.get("/v2/pods")
    assert re.fullmatch(r'"minute";r=\d+;t=\d+, "hour";r=\d+;t=\d+, "day";r=\d+;t=\d+', ok.headers["RateLimit"])
    assert ok.headers["RateLimit-Policy"] == '"minute";q=60;w=60, "hour";q=3000;w=3600, "day";q=50000;w=86400'


def test_429_carries_an_integer_retry_after_and_rate_limit_headers_for_rest_and_graphql(api, emulator):
    emulator.fail_next(2, 429, retry_after=0.5)
    for answer in (api.get("/v2/pods"), api.graphql("{ gpuTypes { id } }")):
        body = problem(answer, 429)
        assert body["detail"] == "rate limit exceeded for the minute window"
        assert answer.headers["Retry-After"] == "1"
        assert answer.headers["RateLimit"].startswith('"minute";r=0;t=1, ')
        assert answer.headers["RateLimit-Policy"].startswith('"minute";q=60;w=60')
    assert api.get("/v2/pods").status_code == 200
    emulator.fail_next(1, 503, path_prefix="/v2/catalog")
    assert api.get("/v2/pods").status_code == 200
    problem(api.get("/v2/catalog/gpus"), 503)


def test_an_answer_that_breaks_the_schema_is_a_loud_500(api, emulator, monkeypatch):
    pod = create(api)
    real = runpod_rest.pod_view
    monkeypatch.setattr(runpod_rest, "pod_view", lambda p: {k: v for k, v in real(p).items() if k != "ssh"})
    broken = problem(api.get(f"/v2/pods/{pod['id']}"), 500)
    assert "'ssh' is a required property" in broken["errors"][0]
    assert len(emulator.bugs) == 1
    emulator.bugs.clear()  # seen; close() would raise otherwise


# --- GraphQL --------------------------------------------------------------------------------------
PRICES = """query Prices($id: String, $secure: Boolean) {
  gpuTypes(input: {id: $id}) { id securePrice communityPrice secureSpotPrice communitySpotPrice
    lowestPrice(input: {gpuCount: 1, secureCloud: $secure}) { minimumBidPrice uninterruptablePrice stockStatus } } }"""
RENT = """mutation Rent($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id desiredStatus podType costPerHr } }"""
POD = "query Pod($id: String!) { pod(input: {podId: $id}) { id desiredStatus lastStatusChange podType costPerHr " \
      "runtime { uptimeInSeconds } } }"


def rent_input(**overrides) -> dict:
    return {"input": {"bidPerGpu": 0.34, "gpuTypeId": RTX3090, "gpuCount": 1, "cloudType": "SECURE",
                      "imageName": IMAGE, "name": "spot", "env": [{"key": "A", "value": "b'\"c"}],
                      "dockerArgs": "--exit-after 1000", **overrides}}


def test_graphql_errors_are_http_200_with_codes_and_a_wrong_key_is_401(api, emulator):
    assert Api(emulator, key="rpa_WRONG").graphql("{ gpuTypes { id } }").status_code == 401
    for query, variables, code in [
        ("{ gpuTypes { id spotPrice } }", None, "GRAPHQL_VALIDATION_FAILED"),
        ("{ gpuTypes { id lowestPrice(input: {secureCloud: true}) { minimumBidPrice } } }", None,
         "GRAPHQL_VALIDATION_FAILED"),  # gpuCount: Int! is required
        ("{ gpuTypes { id ", None, "GRAPHQL_PARSE_FAILED"),
        (RENT, {"input": {"bidPerGpu": "cheap"}}, "BAD_USER_INPUT"),
        (RENT, rent_input(bidPerGpu=0.01), "BAD_USER_INPUT"),
    ]:
        answer = api.graphql(query, variables)
        assert answer.status_code == 200
        body = answer.json()
        assert body["data"] is None and body["errors"][0]["extensions"]["code"] == code, body
    assert emulator.pods == {}


def test_graphql_prices_differ_per_cloud_and_follow_set_price(api, emulator):
    def lowest(secure):
        return api.graphql(PRICES, {"id": RTX3090, "secure": secure}).json()["data"]["gpuTypes"][0]["lowestPrice"]

    secure, community = lowest(True), lowest(False)
    assert community["minimumBidPrice"] == round(0.34 * 0.85, 3) < secure["minimumBidPrice"] == 0.34
    assert community["uninterruptablePrice"] == 0.374 < secure["uninterruptablePrice"] == 0.44
    emulator.set_price(RTX3090, communityMinimumBidPrice=0.2)
    assert lowest(False)["minimumBidPrice"] == 0.2 and lowest(True)["minimumBidPrice"] == 0.34
    emulator.exhaust(RTX3090)
    assert lowest(True)["stockStatus"] is None


def test_spot_create_bid_floor_per_cloud_and_capacity_wordings(api, emulator):
    refused = api.graphql(RENT, rent_input(bidPerGpu=0.3)).json()  # under secure's 0.34, over community's 0.289
    assert "below the minimum bid" in refused["errors"][0]["message"] and emulator.pods == {}
    placed = api.graphql(RENT, rent_input(bidPerGpu=0.3, cloudType="ALL")).json()["data"]["podRentInterruptable"]
    assert placed["podType"] == "INTERRUPTABLE" and emulator.pods[placed["id"]].cloud == "COMMUNITY"
    assert placed["costPerHr"] == 0.3
    emulator.exhaust(RTX3090, spot=True)
    full = api.graphql(RENT, rent_input()).json()
    assert full["data"] is None and full["errors"][0]["message"] in CAPACITY_MESSAGES


def test_graphql_internal_error_after_create_leaves_a_real_pod(api, emulator):
    emulator.graphql_internal_error_after_create()
    answer = api.graphql(RENT, rent_input(name="ghost"))
    assert answer.status_code == 200
    assert answer.json() == {"data": None, "errors": [{"message": INTERNAL_ERROR_MESSAGE,
                                                       "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]}
    [pod] = emulator.pods_named("ghost")
    wait_status(emulator, pod.id, "RUNNING")
    assert pod.env == {"A": "b'\"c"} and pod.args == "--exit-after 1000"
    assert [p["name"] for p in api.get("/v2/pods").json()["pods"]] == ["ghost"]


def test_spot_pod_status_change_reads_like_runpods_and_resumes_with_a_bid(api, emulator):
    pod_id = api.graphql(RENT, rent_input()).json()["data"]["podRentInterruptable"]["id"]
    wait_status(emulator, pod_id, "RUNNING")
    seen = api.graphql(POD, {"id": pod_id}).json()["data"]["pod"]
    assert re.fullmatch(f"Rented by User: {JS_DATE}", seen["lastStatusChange"])
    assert seen["desiredStatus"] == "RUNNING" and seen["podType"] == "INTERRUPTABLE"
    emulator.preempt(pod_id, kill_after=0.5)
    wait_status(emulator, pod_id, "EXITED")
    seen = api.graphql(POD, {"id": pod_id}).json()["data"]["pod"]
    assert seen["desiredStatus"] == "EXITED" and re.fullmatch(f"Exited by Runpod: {JS_DATE}", seen["lastStatusChange"])
    assert seen["runtime"] is None and seen["costPerHr"] == 0.0
    assert "spot pod" in problem(api.post(f"/v2/pods/{pod_id}/action", {"action": "start"}), 400)["detail"]
    resume = "mutation R($i: PodBidResumeInput!) { podBidResume(input: $i) { id desiredStatus } }"
    assert api.graphql(resume, {"i": {"podId": pod_id, "bidPerGpu": 0.35, "gpuCount": 1}}).json()["data"][
        "podBidResume"]["desiredStatus"] == "RUNNING"
    wait_status(emulator, pod_id, "RUNNING")
    api.post(f"/v2/pods/{pod_id}/action", {"action": "stop"})
    wait_status(emulator, pod_id, "EXITED")
    assert re.fullmatch(f"Exited by user: {JS_DATE}",
                        api.graphql(POD, {"id": pod_id}).json()["data"]["pod"]["lastStatusChange"])
    assert emulator.billed_gpu_usd(pod_id) == pytest.approx(
        sum(b.rate_per_hour * (b.end - b.start) / 3600 for b in emulator.pods[pod_id].billing))
    assert math.isclose(emulator.pods[pod_id].billing[-1].rate_per_hour, 0.35)


def test_a_spot_pod_outbid_by_a_raised_minimum_is_interrupted_even_while_booting(api, emulator):
    emulator.set_boot_seconds(5, 5)
    pod_id = api.graphql(RENT, rent_input()).json()["data"]["podRentInterruptable"]["id"]
    emulator.set_price(RTX3090, secureMinimumBidPrice=0.4)
    wait_status(emulator, pod_id, "EXITED", timeout=3)
    seen = api.graphql(POD, {"id": pod_id}).json()["data"]["pod"]
    assert seen["desiredStatus"] == "EXITED" and seen["lastStatusChange"].startswith("Exited by Runpod: ")
