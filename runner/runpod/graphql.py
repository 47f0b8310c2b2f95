"""The GraphQL documents this project sends to RunPod, and how they are sent: always as a fixed
document plus ``variables``, never with values put into the text (a quote or a newline in an env
value would break or inject the query, as runpod-python's f-string mutations do).

GraphQL is used only for what REST v2 cannot do: spot ("interruptible") pods, their resume with a
bid, live spot prices and minimum bids (per cloud: secure and community differ), and why a pod
exited. RunPod answers errors in GraphQL with HTTP 200 and ``{"data": null, "errors": [{"message",
"extensions": {"code"}}]}``, client errors and its own faults alike (RUNPOD.md). A fault
(``INTERNAL_SERVER_ERROR``, "Something went wrong...") is a :class:`ServerError`: it may come after
the pod was in fact created, so a create that meets one is looked up by name, never taken as a
refusal."""

from __future__ import annotations

from typing import Any

from runner.runpod.errors import (
    AuthError,
    InvalidRequest,
    NoCapacity,
    RateLimited,
    RunPodError,
    ServerError,
    SpotRefused,
    is_capacity_message,
)
from runner.runpod.http import Transport

#: Prices per cloud: ``lowestPrice`` takes ``secureCloud``; the two clouds have their own minimum bid.
_PRICES = """
fragment Prices on GpuType {
  id displayName memoryInGb securePrice communityPrice secureSpotPrice communitySpotPrice
  secure: lowestPrice(input: {gpuCount: $gpuCount, secureCloud: true}) {
    minimumBidPrice uninterruptablePrice stockStatus
  }
  community: lowestPrice(input: {gpuCount: $gpuCount, secureCloud: false}) {
    minimumBidPrice uninterruptablePrice stockStatus
  }
}"""

GPU_PRICES = """
query GpuPrices($gpuTypeId: String, $gpuCount: Int!) {
  gpuTypes(input: {id: $gpuTypeId}) { ...Prices }
}""" + _PRICES

#: The same for every GPU type at once (``runner gpus``).
ALL_GPU_PRICES = """
query AllGpuPrices($gpuCount: Int!) {
  gpuTypes { ...Prices }
}""" + _PRICES

RENT_SPOT_POD = """
mutation RentSpotPod($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id name desiredStatus podType costPerHr imageName machineId }
}"""

RESUME_SPOT_POD = """
mutation ResumeSpotPod($input: PodBidResumeInput!) {
  podBidResume(input: $input) { id desiredStatus podType costPerHr }
}"""

POD_DETAILS = """
query PodDetails($podId: String!) {
  pod(input: {podId: $podId}) { id name desiredStatus lastStatusChange podType costPerHr runtime { uptimeInSeconds } }
}"""


class GraphQL:
    def __init__(self, transport: Transport):
        self.transport = transport

    def run(self, document: str, variables: dict[str, Any], *, operation: str, retry: bool = True) -> dict[str, Any]:
        """``data`` of the answer; raises on ``errors`` (RunPod's words in the message).

        With ``retry``, a GraphQL-level fault or rate limit (HTTP 200 with errors) is retried like an
        HTTP one; a create is sent with ``retry=False`` and its caller looks the pod up by name."""
        if not retry:
            return self._once(document, variables, operation)
        from runner.runpod.http import retrying

        # One loop retries both kinds: the HTTP request itself is sent once per turn, or the
        # transport's own retries would run inside these ones (up to 8 x 8 sends for one query).
        for attempt in retrying():
            with attempt:
                return self._once(document, variables, operation)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, document: str, variables: dict[str, Any], operation: str) -> dict[str, Any]:
        answer = self.transport.request("POST", "/graphql", json={"query": document, "variables": variables},
                                        retry=False)
        if not isinstance(answer, dict):
            raise ServerError(f"RunPod's GraphQL answered {operation} with no data")
        errors = answer.get("errors") or []
        if errors:
            raise classify_error(operation, errors)
        return answer.get("data") or {}


def _said(errors: list[Any]) -> str:
    return "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)[:600]


def _codes(errors: list[Any]) -> set[str]:
    return {str((e.get("extensions") or {}).get("code") or "").upper() for e in errors if isinstance(e, dict)}


def classify_error(operation: str, errors: list[Any] | str) -> RunPodError:
    """The exception for GraphQL ``errors``: by ``extensions.code`` first, then by RunPod's words."""
    if isinstance(errors, str):
        errors = [{"message": errors}]
    said, codes = _said(errors), _codes(errors)
    lowered = said.lower()
    if codes & {"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE"} or "something went wrong" in lowered:
        return ServerError(f"RunPod failed {operation} (GraphQL {'/'.join(sorted(codes - {''})) or 'error'}: {said}); "
                           f"it may have taken effect", said=said)
    if codes & {"RATE_LIMITED", "TOO_MANY_REQUESTS"} or "rate limit" in lowered:
        return RateLimited(f"RunPod rate-limited {operation}: {said}", said=said)
    if is_capacity_message(said):
        return NoCapacity(f"RunPod has no capacity for {operation}: {said}", said=said)
    if operation == "podRentInterruptable" and "bid" in lowered and "minimum" in lowered:
        # the minimum bid rose between the price query and the create: no machine at our bid
        return NoCapacity(f"RunPod has no spot machine at the bid offered: {said}", said=said)
    if codes & {"UNAUTHENTICATED", "FORBIDDEN"} or "unauthorized" in lowered or "api key" in lowered \
            or "not authorized" in lowered:
        return AuthError(f"RunPod refused the API key for {operation}: {said}", said=said)
    if codes & {"GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED"}:
        return InvalidRequest(f"RunPod's GraphQL rejected the {operation} query itself ({said}); this is a bug in "
                              f"the runner, please report it", said=said)
    if operation == "podRentInterruptable":
        return SpotRefused(f"RunPod refused the spot pod: {said}", said=said)
    return InvalidRequest(f"RunPod rejected {operation}: {said}", said=said)
