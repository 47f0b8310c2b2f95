"""Reconcile RunPod with the state database, on every runner command.

Pods named ``spot-runner-<owner>-<attempt id>`` with this state's owner id are ours. A pod of an
attempt that is launching or running is left to its supervisor (``watch`` adopts it); every other
pod of ours (its attempt ended, its job ended, or the state never heard of it) is terminated, since
nobody will ever look at it again and it bills. Each is said on stderr and recorded on its job.
Pods of other owners (another machine's runner on the same account) are never touched."""

from __future__ import annotations

from dataclasses import dataclass

from runner import state as st
from runner.runpod import POD_NAME_PREFIX
from runner.runpod.client import TERMINATED, RunPodClient


@dataclass(frozen=True)
class Decision:
    pod_id: str
    pod_name: str
    attempt_id: str
    action: str  # "keep" or "terminate"
    why: str


def decide(state: st.State, pods: list, owner: str) -> list[Decision]:
    mine = f"{POD_NAME_PREFIX}{owner}-"
    decisions = []
    for pod in pods:
        if not pod.name.startswith(mine) or pod.status == TERMINATED:
            continue
        attempt_id = pod.name[len(mine):]
        found = state.attempt_and_job_state(attempt_id)
        if found is None:
            decisions.append(Decision(pod.id, pod.name, attempt_id, "terminate", "no attempt of that name in this state"))
            continue
        attempt_state, outcome, job_state, _job_id = found
        if job_state not in st.ACTIVE_STATES:
            decisions.append(Decision(pod.id, pod.name, attempt_id, "terminate", f"its job is {job_state}"))
        elif attempt_state == st.ENDED:
            decisions.append(Decision(pod.id, pod.name, attempt_id, "terminate", f"its attempt ended ({outcome or 'ended'})"))
        else:
            decisions.append(Decision(pod.id, pod.name, attempt_id, "keep", f"attempt {attempt_state}"))
    return decisions


def reconcile(state: st.State, client: RunPodClient, owner: str, say) -> list[Decision]:
    """Terminate pods of ours that no active attempt owns; returns what was decided for each pod of ours."""
    decisions = decide(state, client.list_pods(), owner)
    for d in decisions:
        if d.action != "terminate":
            continue
        client.terminate(d.pod_id)
        message = f"terminated RunPod pod {d.pod_id} ({d.pod_name}): {d.why}, so nothing would ever stop its billing"
        say(message)
        found = state.attempt_and_job_state(d.attempt_id)
        if found is not None:
            state.add_event(found[3], "pod_terminated", message, d.attempt_id)
    return decisions
