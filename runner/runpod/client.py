"""A RunPod client: pods through REST v2, spot pods and interruption details through GraphQL, the GPU
catalog, billing records and pod logs. Every call goes through :class:`~runner.runpod.http.Transport`
(retries, errors with RunPod's words); creates are sent once and the caller checks before retrying.

Pod objects from RunPod carry the pod's ``env`` (secrets included): :class:`Pod` keeps only what the
runner needs, and no pod object is ever stored or printed whole."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from runner.runpod import graphql as gql
from runner.runpod.errors import NotFound
from runner.runpod.http import Transport

# Pod statuses (REST v2).
PROVISIONING, STARTING, RUNNING, EXITED, ERROR, TERMINATED = (
    "PROVISIONING", "STARTING", "RUNNING", "EXITED", "ERROR", "TERMINATED")
ALIVE = (PROVISIONING, STARTING, RUNNING)


@dataclass(frozen=True)
class Pod:
    id: str
    name: str
    status: str
    cost_per_hour: float  # $/h actually billed for the whole pod; 0.0 while EXITED
    gpu_id: str | None
    gpu_count: int
    cloud: str | None
    uptime_seconds: float | None

    @classmethod
    def from_rest(cls, raw: dict[str, Any]) -> Pod:
        gpu = raw.get("gpu") or {}
        runtime = raw.get("runtime") or {}
        return cls(id=str(raw["id"]), name=str(raw.get("name") or ""),
                   status=str(raw.get("status") or raw.get("desiredStatus") or "").upper(),
                   cost_per_hour=float(raw.get("cost") or raw.get("costPerHr") or 0.0),
                   gpu_id=gpu.get("id") if isinstance(gpu, dict) else None,
                   gpu_count=int(gpu.get("count") or 1) if isinstance(gpu, dict) else 1,
                   cloud=raw.get("cloud"), uptime_seconds=runtime.get("uptime") if isinstance(runtime, dict) else None)


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


@dataclass(frozen=True)
class GpuOffer:
    """One GPU type's live prices (USD per GPU-hour) and stock."""

    id: str
    display_name: str
    memory_gb: int
    secure_price: float | None
    community_price: float | None
    secure_spot_price: float | None
    community_spot_price: float | None
    minimum_bid: float | None = None
    on_demand_price: float | None = None  # lowestPrice.uninterruptablePrice
    stock: str | None = None

    def price(self, cloud: str, spot: bool) -> float | None:
        if cloud == "SECURE":
            return self.secure_spot_price if spot else self.secure_price
        return self.community_spot_price if spot else self.community_price

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> GpuOffer:
        lowest = raw.get("lowestPrice") or {}

        def num(value: Any) -> float | None:
            return None if value in (None, "") else float(value)

        return cls(id=str(raw.get("id") or raw.get("gpuId")), display_name=str(raw.get("displayName") or ""),
                   memory_gb=int(raw.get("memoryInGb") or 0), secure_price=num(raw.get("securePrice")),
                   community_price=num(raw.get("communityPrice")), secure_spot_price=num(raw.get("secureSpotPrice")),
                   community_spot_price=num(raw.get("communitySpotPrice")),
                   minimum_bid=num(lowest.get("minimumBidPrice", raw.get("minimumBidPrice"))),
                   on_demand_price=num(lowest.get("uninterruptablePrice", raw.get("uninterruptablePrice"))),
                   stock=lowest.get("stockStatus") or raw.get("stockStatus"))


@dataclass(frozen=True)
class BillingRecord:
    pod_id: str
    start: str  # ISO 8601, as RunPod gives it
    end: str
    total_usd: float
    gpu_usd: float
    cpu_usd: float = 0.0
    disk_usd: float = 0.0


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

    def log_lines(self, pod_id: str, follow: bool) -> Iterator[str]:
        """The pod's output from its event stream (``data:`` lines); with ``follow`` the stream stays
        open for new output until the pod ends."""
        params = {"follow": "true" if follow else "false"}
        for line in self.transport.stream_lines(f"/v2/pods/{quote(pod_id, safe='')}/logs", params,
                                                read_timeout=3600 if follow else 60):
            if line.startswith("data:"):
                yield line[5:].removeprefix(" ")

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
        """Every GPU type with prices and stock (REST v2 catalog)."""
        answer = self.transport.request("GET", "/v2/catalog/gpus")
        items = answer.get("gpus", []) if isinstance(answer, dict) else answer or []
        return [GpuOffer.from_raw(g) for g in items]

    def gpu_prices(self, gpu_id: str, gpu_count: int = 1) -> GpuOffer | None:
        """One GPU type's live prices with its current minimum spot bid (GraphQL ``lowestPrice``)."""
        data = self.graphql.run(gql.GPU_PRICES, {"gpuTypeId": gpu_id, "gpuCount": gpu_count}, operation="gpuTypes")
        found = [g for g in data.get("gpuTypes") or [] if g.get("id") == gpu_id]
        return GpuOffer.from_raw(found[0]) if found else None

    def billing(self, pod_id: str | None = None, start: str | None = None, end: str | None = None) -> list[BillingRecord]:
        params = {k: v for k, v in (("podId", pod_id), ("startTime", start), ("endTime", end)) if v}
        answer = self.transport.request("GET", "/v2/billing/pods", params=params)
        items = answer.get("records", answer.get("billing", [])) if isinstance(answer, dict) else answer or []
        return [BillingRecord(pod_id=str(r.get("podId")), start=str(r.get("startTime")), end=str(r.get("endTime")),
                              total_usd=float(r.get("totalAmount") or 0.0), gpu_usd=float(r.get("gpuAmount") or 0.0),
                              cpu_usd=float(r.get("cpuAmount") or 0.0), disk_usd=float(r.get("diskAmount") or 0.0))
                for r in items]
