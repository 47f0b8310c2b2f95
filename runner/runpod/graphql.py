"""The GraphQL documents this project sends to RunPod, and how they are sent: always as a fixed
document plus ``variables``, never with values put into the text (a quote or a newline in an env
value would break or inject the query, as runpod-python's f-string mutations do).

GraphQL is used only for what REST v2 cannot do: spot ("interruptible") pods, their resume with a
bid, live minimum bids, and why a pod exited. RunPod answers client errors in GraphQL with HTTP 200
and ``{"errors": [...]}``; those become exceptions here."""

from __future__ import annotations

from typing import Any

from runner.runpod.errors import (
    AuthError,
    InvalidRequest,
    NoCapacity,
    RunPodError,
    SpotRefused,
    is_capacity_message,
)
from runner.runpod.http import Transport

GPU_PRICES = """
query GpuPrices($gpuTypeId: String, $gpuCount: Int) {
  gpuTypes(input: {id: $gpuTypeId}) {
    id displayName memoryInGb securePrice communityPrice secureSpotPrice communitySpotPrice
    lowestPrice(input: {gpuCount: $gpuCount}) { minimumBidPrice uninterruptablePrice stockStatus }
  }
}"""

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
        """``data`` of the answer; raises on ``errors`` (RunPod's words in the message)."""
        answer = self.transport.request("POST", "/graphql", json={"query": document, "variables": variables},
                                        retry=retry)
        if not isinstance(answer, dict):
            raise RunPodError(f"RunPod's GraphQL answered {operation} with no data")
        errors = answer.get("errors") or []
        if errors:
            said = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)[:600]
            raise classify_error(operation, said)
        return answer.get("data") or {}


def classify_error(operation: str, said: str) -> RunPodError:
    if is_capacity_message(said):
        return NoCapacity(f"RunPod has no capacity for {operation}: {said}", said=said)
    lowered = said.lower()
    if "unauthorized" in lowered or "api key" in lowered or "not authorized" in lowered:
        return AuthError(f"RunPod refused the API key for {operation}: {said}", said=said)
    if operation == "podRentInterruptable":
        return SpotRefused(f"RunPod refused the spot pod: {said}", said=said)
    return InvalidRequest(f"RunPod rejected {operation}: {said}", said=said)
