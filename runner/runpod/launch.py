"""One attempt's pod: find it if it exists, else walk the capacity options and create it once.

The options are the job's GPU failover list × RunPod's clouds (SECURE, then COMMUNITY), spot or
on-demand as the supervisor decided for this attempt. A spot bid is that cloud's live minimum bid
(the two clouds have their own) plus the job's margin, capped by ``max_bid_per_gpu`` (default: the
catalog's spot price) in both.

Create at most once: the pod is named after the attempt, and a create that failed in a way that
may have taken effect (a REST 5xx, a GraphQL ``INTERNAL_SERVER_ERROR``, a dropped connection, a
timeout) is followed by lookups by that name, with backoff, for :data:`AMBIGUOUS_LOOKUP_SECONDS`
before anything is sent again: RunPod is known to answer so after creating the pod, and its pod
list lags, so one miss proves nothing."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.catalog import GpuType, load_catalog
from runner.runpod import CLOUDS
from runner.runpod.client import CloudPrice, Pod, RunPodClient
from runner.runpod.errors import InvalidRequest, NoCapacity, RateLimited, RunPodError, SpotRefused
from runner.runpod.http import RETRY_AFTER_CAP_SECONDS, backoff_seconds

#: Creates tried per option before giving up on RunPod for now (each after a check by name).
CREATE_TRIES = 6
#: After a create that may have taken effect, how long the pod is looked for by name before the
#: runner concludes that nothing was created (RunPod's pod list lags behind a create).
AMBIGUOUS_LOOKUP_SECONDS = 60.0
#: RunPod's limit on a pod's environment, less the variables RunPod adds itself (RUNPOD_POD_ID, …).
MAX_POD_ENV = 50 - 8
VOLUME_PATH = "/workspace"

Report = Callable[[str, str], None]


@dataclass(frozen=True)
class PodPlan:
    """What every pod of the attempt runs, wherever it lands. ``env`` holds secret values."""

    name: str
    image: str
    args: tuple[str, ...]
    env: dict[str, str] = field(repr=False)
    gpu_count: int = 1
    container_disk_gb: int = 50
    volume_gb: int = 0


@dataclass(frozen=True)
class Option:
    gpu: GpuType
    cloud: str
    spot: bool

    def describe(self) -> str:
        return f"{self.gpu.alias} {'spot' if self.spot else 'on-demand'} on {self.cloud}"


@dataclass(frozen=True)
class Obtained:
    pod: Pod
    gpu: str | None  # alias from the catalog
    cloud: str | None
    spot: bool
    bid_per_gpu: float | None
    rate_per_hour: float
    on_demand_rate_per_hour: float
    adopted: bool


def obtain_pod(client: RunPodClient, plan: PodPlan, gpus: tuple[GpuType, ...], *, spot: bool,
               max_bid_per_gpu: float | None, bid_margin_per_gpu: float, report: Report) -> Obtained:
    """The attempt's pod: the one already named after it, or a new one from the first option with capacity."""
    if len(plan.env) > MAX_POD_ENV:
        raise InvalidRequest(f"the pod would get {len(plan.env)} environment variables; RunPod allows 50 per pod, "
                           f"{MAX_POD_ENV} of them for the job: trim env: and secrets: in the job file")
    existing = client.pods_named(plan.name)
    if existing:
        return adopt(client, existing[0])
    shortfalls: list[str] = []
    for gpu in gpus:
        offer = client.gpu_prices(gpu.id, plan.gpu_count) if spot else None
        for cloud in CLOUDS:
            option = Option(gpu, cloud, spot)
            bid = None
            if spot:
                bid, why_not = spot_bid(gpu, offer.cloud(cloud) if offer else None, max_bid_per_gpu,
                                        bid_margin_per_gpu)
                if bid is None:
                    shortfalls.append(f"{option.describe()}: {why_not}")
                    report("no_capacity", f"no {option.describe()}: {why_not}")
                    continue
            try:
                pod, adopted = create_once(client, plan, option, bid, report)
            except SpotRefused as e:
                raise SpotRefused(spot_refused_message(e.said), said=e.said) from None
            except NoCapacity as e:
                shortfalls.append(f"{option.describe()}: {e.said or e}")
                report("no_capacity", f"no capacity for {option.describe()}: RunPod said {e.said or e}")
                continue
            on_demand = offer.cloud(cloud).on_demand if offer else None
            if on_demand is None:
                on_demand = gpu.on_demand
            rate = pod.cost_per_hour or ((bid if spot else on_demand) * plan.gpu_count)
            return Obtained(pod, gpu.alias, cloud, spot, bid, rate, on_demand * plan.gpu_count, adopted)
    kind = "spot" if spot else "on-demand"
    listed = "; ".join(shortfalls) or "the job names no GPU"
    raise NoCapacity(f"RunPod has no {kind} capacity for any GPU in the job's list right now ({listed}). "
                     f"Add GPUs to resources.gpu (a failover list), raise resources.max_bid_per_gpu, or wait: "
                     f"the job retries after its backoff", said=listed)


def spot_bid(gpu: GpuType, price: CloudPrice | None, max_bid: float | None,
             margin: float) -> tuple[float | None, str]:
    """(bid per GPU-hour in this cloud, '') or (None, why not)."""
    cap = max_bid if max_bid is not None else gpu.spot
    minimum = price.minimum_bid if price else None
    if minimum is None and price is not None:
        minimum = price.spot
    if minimum is None:
        return None, "RunPod gives no spot price for it in this cloud right now"
    if minimum > cap:
        return None, (f"the minimum bid is ${minimum:.3f}/GPU-hour, above your cap of ${cap:.3f} "
                      f"(resources.max_bid_per_gpu{'' if max_bid is not None else ', default: the catalog spot price'})")
    return round(min(cap, minimum + margin), 4), ""


def spot_refused_message(said: str) -> str:
    return (f"RunPod refused the spot (interruptible) request: \"{said}\". Set `resources.spot: false` to run on "
            f"on-demand pods, or `retry.fallback_to_on_demand_after: 0` to fall back to on-demand whenever spot is refused")


def create_once(client: RunPodClient, plan: PodPlan, option: Option, bid: float | None,
                report: Report) -> tuple[Pod, bool]:
    """Create the pod; after a failure that may have created it anyway, look it up by name (with
    backoff, for :data:`AMBIGUOUS_LOOKUP_SECONDS`) before sending the create again, and never send it
    while a pod of that name exists. Returns (pod, found_by_name)."""
    last: RunPodError | None = None
    for tries in range(1, CREATE_TRIES + 1):
        found = client.pods_named(plan.name) if tries > 1 else []
        if found:
            return _found(found[0], plan, report), True
        try:
            if option.spot:
                return client.create_spot_pod(spot_input(plan, option, bid)), False
            return client.create_pod(rest_body(plan, option)), False
        except RunPodError as e:
            if not e.retryable:
                raise
            last = e
        if isinstance(last, RateLimited):  # refused before it was acted on: wait as told, send again
            wait = min(RETRY_AFTER_CAP_SECONDS, last.retry_after) if last.retry_after is not None \
                else backoff_seconds(tries)
            report("create_retry", f"creating {plan.name} ({option.describe()}): {last}; waiting {wait:.0f}s")
            time.sleep(wait)
            continue
        report("create_retry", f"creating {plan.name} ({option.describe()}): {last}; looking for it by name for "
                               f"{AMBIGUOUS_LOOKUP_SECONDS:.0f}s, as RunPod may have created it anyway")
        pod = look_up_by_name(client, plan.name, AMBIGUOUS_LOOKUP_SECONDS)
        if pod is not None:
            return _found(pod, plan, report), True
    assert last is not None
    raise last


def look_up_by_name(client: RunPodClient, name: str, seconds: float) -> Pod | None:
    """The pod of that name, looked for with backoff until ``seconds`` have passed; None if it never
    showed up (and so, as far as can be known, was never created)."""
    deadline = time.monotonic() + seconds
    tries = 0
    while True:
        tries += 1
        try:
            found = client.pods_named(name)
        except RunPodError as e:
            if not e.retryable:
                raise
            found = []
        if found:
            return found[0]
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(left, backoff_seconds(tries)))


def _found(pod: Pod, plan: PodPlan, report: Report) -> Pod:
    report("create_found", f"RunPod did create {plan.name} (pod {pod.id}) although the create failed; using it, "
                           f"no second pod")
    return pod


def adopt(client: RunPodClient, pod: Pod) -> Obtained:
    """A pod of this attempt that already exists (a runner died after creating it)."""
    details = client.pod_details(pod.id)
    spot = bool(details and details.pod_type.upper().startswith("INTERRUPT"))
    gpu = load_catalog().resolve(pod.gpu_id) if pod.gpu_id else None
    on_demand = (gpu.on_demand * pod.gpu_count) if gpu else pod.cost_per_hour
    rate = pod.cost_per_hour or (details.cost_per_hour if details else 0.0)
    return Obtained(pod, gpu.alias if gpu else pod.gpu_id, pod.cloud, spot, None, rate, on_demand, True)


def rest_body(plan: PodPlan, option: Option) -> dict[str, Any]:
    """``POST /v2/pods`` body for an on-demand pod."""
    body: dict[str, Any] = {
        "name": plan.name, "image": plan.image, "gpu": {"id": option.gpu.id, "count": plan.gpu_count},
        "cloud": option.cloud, "disk": plan.container_disk_gb, "env": dict(plan.env),
        # CreatePodRequest.args is one string, "arguments passed to the container entrypoint"
        # (tests/fixtures/runpod_openapi/create-a-pod.yaml); a list is refused with 422
        "args": shlex.join(plan.args),
    }
    if plan.volume_gb:
        body["mounts"] = {"persistent": {"size": plan.volume_gb, "path": VOLUME_PATH}}
    return body


def spot_input(plan: PodPlan, option: Option, bid: float | None) -> dict[str, Any]:
    """``podRentInterruptable`` input (sent as a GraphQL variable, never in the query text)."""
    return {
        "bidPerGpu": bid, "gpuTypeId": option.gpu.id, "gpuCount": plan.gpu_count, "cloudType": option.cloud,
        "imageName": plan.image, "name": plan.name, "containerDiskInGb": plan.container_disk_gb,
        "volumeInGb": plan.volume_gb, "volumeMountPath": VOLUME_PATH,
        "env": [{"key": k, "value": v} for k, v in plan.env.items()], "dockerArgs": shlex.join(plan.args),
    }
