"""A RunPod client: pods through REST v2, spot pods and interruption details through GraphQL, the GPU
catalog, billing records and pod logs. Every call goes through :class:`~runner.runpod.http.Transport`
(retries, errors with RunPod's words); creates are sent once and the caller checks before retrying.

Pod objects from RunPod carry the pod's ``env`` (secrets included): :class:`Pod` keeps only what the
runner needs, and no pod object is ever stored or printed whole."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from runner.runpod import graphql as gql
from runner.runpod.errors import NotFound, RunPodError
from runner.runpod.http import Transport

#: The most lines RunPod backfills from a pod's log (``tail``, 0–5000).
LOG_BACKFILL_MAX = 5000

# Pod statuses (REST v2).
PROVISIONING, STARTING, RUNNING, EXITED, ERROR, TERMINATED = (
    "PROVISIONING", "STARTING", "RUNNING", "EXITED", "ERROR", "TERMINATED")
ALIVE = (PROVISIONING, STARTING, RUNNING)


def parse_time(text: Any) -> float | None:
    """Unix seconds of an RFC 3339 time as RunPod writes it (``2026-12-01T12:00:00.123Z``), or None."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Pod:
    id: str
    name: str
    status: str
    cost_per_hour: float  # $/h actually billed for the whole pod; 0.0 while EXITED
    gpu_id: str | None
    gpu_count: int
    cloud: str | None
    uptime_seconds: float | None  # runtime.uptime: seconds since the *container* started (RUNNING only)
    started_at: float | None = None  # startedAt: when the pod last went to RUNNING
    created_at: float | None = None

    @classmethod
    def from_rest(cls, raw: dict[str, Any]) -> Pod:
        """A v2 ``Pod`` (tests/fixtures/runpod_openapi/get-a-pod.yaml)."""
        gpu = raw.get("gpu") or {}
        runtime = raw.get("runtime") or {}
        return cls(id=str(raw["id"]), name=str(raw.get("name") or ""), status=str(raw.get("status") or "").upper(),
                   cost_per_hour=float(raw.get("cost") or 0.0),
                   gpu_id=gpu.get("id") if isinstance(gpu, dict) else None,
                   gpu_count=int(gpu.get("count") or 1) if isinstance(gpu, dict) else 1,
                   cloud=raw.get("cloud"), uptime_seconds=runtime.get("uptime") if isinstance(runtime, dict) else None,
                   started_at=parse_time(raw.get("startedAt")), created_at=parse_time(raw.get("createdAt")))


@dataclass(frozen=True)
class PodDetails:
    """GraphQL's view of a pod: why it is where it is."""

    id: str
    desired_status: str
    last_status_change: str
    pod_type: str  # INTERRUPTABLE (spot) or RESERVED (on-demand)
    cost_per_hour: float

    @property
    def interrupted_by_runpod(self) -> bool:
        """An interrupted spot pod reads "Exited by Runpod…"; a stop by its owner "Exited by user"."""
        return self.desired_status == EXITED and "by runpod" in self.last_status_change.lower()

    @property
    def changed_at(self) -> float | None:
        """When the last change happened: RunPod appends a JavaScript ``Date.toString()`` to the reason
        ("Exited by Runpod: Tue Dec 01 2026 12:31:47 GMT+0000 (Coordinated Universal Time)"); to the second."""
        m = _JS_DATE.search(self.last_status_change)
        if not m:
            return None
        try:
            return datetime.strptime(f"{m.group(1)} {m.group(2)}", "%b %d %Y %H:%M:%S %z").timestamp()
        except ValueError:
            return None


_JS_DATE = re.compile(r"\w{3} (\w{3} \d{1,2} \d{4} \d{2}:\d{2}:\d{2}) GMT([+-]\d{4})")


@dataclass(frozen=True)
class CloudPrice:
    """One GPU type in one cloud, USD per GPU-hour."""

    on_demand: float | None = None
    spot: float | None = None  # the listed spot price (secureSpotPrice / communitySpotPrice)
    minimum_bid: float | None = None  # lowestPrice(secureCloud: …).minimumBidPrice, live
    stock: str | None = None


@dataclass(frozen=True)
class GpuOffer:
    """One GPU type's live prices per cloud, and its stock. On-demand prices and stock come from the
    REST v2 catalog (``price: {secure, community}``, ``availability``); v2 has no spot prices, so those
    and the minimum bids come from GraphQL ``gpuTypes`` while RunPod still offers spot."""

    id: str
    display_name: str
    memory_gb: int
    secure: CloudPrice = field(default_factory=CloudPrice)
    community: CloudPrice = field(default_factory=CloudPrice)
    stock: str | None = None  # v2 availability: NONE, LOW, MEDIUM, HIGH

    def cloud(self, cloud: str) -> CloudPrice:
        return self.secure if cloud == "SECURE" else self.community

    def lowest(self, attr: str) -> float | None:
        return min((v for v in (getattr(self.secure, attr), getattr(self.community, attr)) if v), default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GpuOffer:
        return cls(**{**raw, "secure": CloudPrice(**raw["secure"]), "community": CloudPrice(**raw["community"])})

    @classmethod
    def from_catalog(cls, raw: dict[str, Any]) -> GpuOffer:
        """A v2 ``GpuType`` (tests/fixtures/runpod_openapi/list-gpus.yaml)."""
        price = raw.get("price") or {}
        return cls(id=str(raw["id"]), display_name=str(raw.get("name") or ""), memory_gb=int(raw.get("memory") or 0),
                   secure=CloudPrice(on_demand=_num(price.get("secure")) if raw.get("secure", True) else None),
                   community=CloudPrice(on_demand=_num(price.get("community")) if raw.get("community", True) else None),
                   stock=raw.get("availability"))

    def with_spot(self, raw: dict[str, Any]) -> GpuOffer:
        """Spot prices and per-cloud minimum bids from a GraphQL ``gpuTypes`` entry (:data:`gql.GPU_PRICES`)."""

        def cloud(old: CloudPrice, listed: Any, lowest: Any) -> CloudPrice:
            lowest = lowest or {}
            return CloudPrice(on_demand=old.on_demand if old.on_demand is not None
                              else _num(lowest.get("uninterruptablePrice")),
                              spot=_num(listed), minimum_bid=_num(lowest.get("minimumBidPrice")),
                              stock=lowest.get("stockStatus"))

        return replace(self, display_name=self.display_name or str(raw.get("displayName") or ""),
                       memory_gb=self.memory_gb or int(raw.get("memoryInGb") or 0),
                       secure=cloud(self.secure, raw.get("secureSpotPrice"), raw.get("secure")),
                       community=cloud(self.community, raw.get("communitySpotPrice"), raw.get("community")))

    @classmethod
    def from_graphql(cls, raw: dict[str, Any]) -> GpuOffer:
        base = cls(id=str(raw["id"]), display_name=str(raw.get("displayName") or ""),
                   memory_gb=int(raw.get("memoryInGb") or 0),
                   secure=CloudPrice(on_demand=_num(raw.get("securePrice"))),
                   community=CloudPrice(on_demand=_num(raw.get("communityPrice"))))
        return base.with_spot(raw)


def _num(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


@dataclass(frozen=True)
class BillingRecord:
    """One time bucket of a pod's bill (``GET /v2/billing/pods``): ``start``/``end`` are the
    *bucket's* edges (an hour, a day, …), not when the pod ran; only the amounts say what it cost."""

    pod_id: str
    bucket_start: float
    bucket_end: float
    total_usd: float
    gpu_usd: float
    cpu_usd: float = 0.0
    disk_usd: float = 0.0


@dataclass(frozen=True)
class LogLine:
    event_id: str  # the SSE id: a resume cursor for Last-Event-ID
    ts: str
    source: str  # container or system
    line: str


class RunPodClient:
    def __init__(self, transport: Transport | None = None):
        self.transport = transport or Transport()
        self.graphql = gql.GraphQL(self.transport)

    # --- pods (REST v2) -------------------------------------------------------------------------------
    def list_pods(self) -> list[Pod]:
        answer = self.transport.request("GET", "/v2/pods") or {}
        return [Pod.from_rest(p) for p in answer.get("pods", [])]

    def pods_named(self, name: str) -> list[Pod]:
        return [p for p in self.list_pods() if p.name == name and p.status != TERMINATED]

    def get_pod(self, pod_id: str) -> Pod | None:
        """The pod, or None when RunPod no longer knows it (terminated)."""
        try:
            return Pod.from_rest(self.transport.request("GET", f"/v2/pods/{quote(pod_id, safe='')}"))
        except NotFound:
            return None

    def create_pod(self, body: dict[str, Any]) -> Pod:
        """An on-demand pod. Sent once: on a failure the pod may exist all the same (check by name)."""
        return Pod.from_rest(self.transport.request("POST", "/v2/pods", json=body, retry=False))

    def action(self, pod_id: str, action: str) -> Pod | None:
        """start / stop / restart / terminate (terminate answers 204: None)."""
        answer = self.transport.request("POST", f"/v2/pods/{quote(pod_id, safe='')}/action", json={"action": action})
        return Pod.from_rest(answer) if answer else None

    def terminate(self, pod_id: str) -> None:
        """Terminate the pod; a pod that is already gone is fine."""
        with contextlib.suppress(NotFound):
            self.action(pod_id, "terminate")

    def logs(self, pod_id: str, follow: bool, last_event_id: str | None = None,
             idle_seconds: float = 2.0) -> Iterator[LogLine]:
        """The pod's container output from ``GET /v2/pods/{id}/logs`` (Server-Sent Events: ``id:`` and a
        JSON ``data: {ts, source, line}``). RunPod's stream has no end while the pod runs, so without
        ``follow`` it is read for what is there (up to the 5,000 lines RunPod backfills) and closed at the
        first line written after the call or after ``idle_seconds`` of silence. ``last_event_id``
        resumes after that event (a reopened stream does not repeat lines)."""
        params: dict[str, Any] = {"source": "container"}
        headers = {}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        else:
            params["tail"] = LOG_BACKFILL_MAX
        asked = time.time()
        for event in self.transport.stream_events(f"/v2/pods/{quote(pod_id, safe='')}/logs", params, headers=headers,
                                                  read_timeout=3600 if follow else idle_seconds):
            try:
                data = json.loads(event.get("data") or "")
            except ValueError:  # not RunPod's documented payload: show it as it came
                data = {"line": event.get("data", ""), "ts": "", "source": "container"}
            if not isinstance(data, dict):
                continue
            line = LogLine(event.get("id", ""), str(data.get("ts") or ""), str(data.get("source") or "container"),
                           str(data.get("line") or ""))
            if not follow and (parse_time(line.ts) or 0) > asked:
                return
            yield line

    def log_lines(self, pod_id: str, follow: bool) -> Iterator[str]:
        for event in self.logs(pod_id, follow):
            yield event.line

    # --- spot pods (GraphQL) --------------------------------------------------------------------------
    def create_spot_pod(self, spec: dict[str, Any]) -> Pod:
        """A spot pod with ``podRentInterruptable``; ``spec`` is its input. Sent once, like create_pod."""
        data = self.graphql.run(gql.RENT_SPOT_POD, {"input": spec}, operation="podRentInterruptable", retry=False)
        raw = data.get("podRentInterruptable") or {}
        return Pod(id=str(raw["id"]), name=str(raw.get("name") or spec.get("name") or ""),
                   status=str(raw.get("desiredStatus") or RUNNING), cost_per_hour=float(raw.get("costPerHr") or 0.0),
                   gpu_id=spec.get("gpuTypeId"), gpu_count=int(spec.get("gpuCount") or 1),
                   cloud=spec.get("cloudType"), uptime_seconds=None)

    def resume_spot_pod(self, pod_id: str, bid_per_gpu: float, gpu_count: int) -> None:
        """Resume an exited spot pod at a bid (a plain resume would be refused for a spot pod)."""
        self.graphql.run(gql.RESUME_SPOT_POD, {"input": {"podId": pod_id, "bidPerGpu": bid_per_gpu,
                                                         "gpuCount": gpu_count}}, operation="podBidResume")

    def pod_details(self, pod_id: str) -> PodDetails | None:
        data = self.graphql.run(gql.POD_DETAILS, {"podId": pod_id}, operation="pod")
        raw = data.get("pod")
        if not raw:
            return None
        return PodDetails(id=str(raw["id"]), desired_status=str(raw.get("desiredStatus") or ""),
                          last_status_change=str(raw.get("lastStatusChange") or ""),
                          pod_type=str(raw.get("podType") or ""), cost_per_hour=float(raw.get("costPerHr") or 0.0))

    # --- catalog and billing --------------------------------------------------------------------------
    def gpu_catalog(self) -> list[GpuOffer]:
        """Every GPU type with on-demand prices per cloud and pod stock (REST v2 catalog), and spot prices
        with per-cloud minimum bids (GraphQL) while RunPod answers them."""
        answer = self.transport.request("GET", "/v2/catalog/gpus", params={"include": "AVAILABILITY",
                                                                           "product": "POD"}) or {}
        offers = {g["id"]: GpuOffer.from_catalog(g) for g in answer.get("gpus", []) if isinstance(g, dict)}
        try:
            data = self.graphql.run(gql.ALL_GPU_PRICES, {"gpuCount": 1}, operation="gpuTypes")
        except RunPodError:  # spot prices are a GraphQL extra: the on-demand table stands without them
            data = {}
        for raw in data.get("gpuTypes") or []:
            if raw.get("id") in offers:
                offers[raw["id"]] = offers[raw["id"]].with_spot(raw)
        return list(offers.values())

    def gpu_prices(self, gpu_id: str, gpu_count: int = 1) -> GpuOffer | None:
        """One GPU type's live prices in both clouds, with each cloud's minimum spot bid (GraphQL)."""
        data = self.graphql.run(gql.GPU_PRICES, {"gpuTypeId": gpu_id, "gpuCount": gpu_count}, operation="gpuTypes")
        found = [g for g in data.get("gpuTypes") or [] if g.get("id") == gpu_id]
        return GpuOffer.from_graphql(found[0]) if found else None

    def billing(self, pod_id: str | None = None, since: float | None = None,
                bucket_size: str = "hour") -> list[BillingRecord]:
        """Billing buckets (``bucket_size`` wide) from ``since`` (snapped down to a bucket edge by RunPod)
        until now; one record per pod per bucket."""
        params: dict[str, Any] = {"bucketSize": bucket_size}
        if pod_id:
            params["podId"] = pod_id
        if since is not None:
            params["startTime"] = rfc3339(since)
        answer = self.transport.request("GET", "/v2/billing/pods", params=params) or {}
        out = []
        for r in answer.get("records", []) if isinstance(answer, dict) else []:
            start, end = parse_time(r.get("startTime")), parse_time(r.get("endTime"))
            if start is None or end is None:
                continue
            out.append(BillingRecord(pod_id=str(r.get("podId")), bucket_start=start, bucket_end=end,
                                     total_usd=float(r.get("totalAmount") or 0.0),
                                     gpu_usd=float(r.get("gpuAmount") or 0.0), cpu_usd=float(r.get("cpuAmount") or 0.0),
                                     disk_usd=float(r.get("diskAmount") or 0.0)))
        return out
