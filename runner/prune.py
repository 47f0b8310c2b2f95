"""``runner prune``: remove what ended jobs left behind: their ended containers, the images built for
them, and RunPod pods of this runner that no active attempt owns.

Only what this runner's state knows as its own is touched, and never anything of an active job:

- a container is removed when it carries the runner's job label, has exited, and its job is in
  this state and has ended (containers of another state's jobs, or of no job, are left alone);
- an image is removed when the runner built it (its inputs label), an ended job of this state ran
  in it, no active job did, and no container that stays uses it;
- a pod is terminated when its name carries this state's owner id and no launching or running
  attempt of an active job owns it (the rule every command applies before it runs; see
  :mod:`runner.runpod.reconcile`). Pods of other owners are never touched.

``--dry-run`` lists the same things and changes nothing. A removed container takes its output with
it: ``runner logs`` of that job then says the container is gone."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from runner import state as st


@dataclass
class Removal:
    kind: str  # container, image or pod
    name: str
    id: str
    why: str
    job_id: str | None = None
    done: bool | None = None  # None: not tried (dry run); True: removed; False: it failed (see error)
    error: str = ""


@dataclass
class Plan:
    removals: list[Removal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be looked at, and why


# --- containers and images ------------------------------------------------------------------------
def _images_of(state: st.State, jobs: list[st.JobRow]) -> set[str]:
    """The image references the attempts of ``jobs`` ran in (from their handles)."""
    return {h["image"] for job in jobs for a in state.attempts(job.id)
            if (h := a.handle) and isinstance(h.get("image"), str)}


def plan_docker(state: st.State, client: Any, plan: Plan) -> None:
    from runner.backends.docker import LABEL_JOB
    from runner.backends.docker_image import LABEL_INPUTS, find_image

    jobs = {j.id: j for j in state.jobs()}
    containers = client.containers.list(all=True, filters={"label": LABEL_JOB})
    leaving: set[str] = set()
    others = 0
    for c in containers:
        job = jobs.get(c.labels.get(LABEL_JOB, ""))
        if job is None:
            others += 1
            continue
        if job.active or c.status not in ("exited", "dead"):
            continue
        leaving.add(c.id)
        plan.removals.append(Removal("container", c.name, c.id[:12], f"{c.status}; its job {job.id} is {job.state}",
                                     job.id))
    if others:
        plan.notes.append(f"left {others} container(s) of jobs this state does not know (another RUNNER_HOME?)")

    ended = [j for j in jobs.values() if not j.active]
    active = [j for j in jobs.values() if j.active]
    protected = {image.id for ref in _images_of(state, active) if (image := find_image(client, ref)) is not None}
    in_use: dict[str, str] = {}  # image id -> a container that stays and uses it
    for c in client.containers.list(all=True):
        if c.id not in leaving:
            in_use.setdefault(c.attrs.get("Image", ""), c.name)
    for ref in sorted(_images_of(state, ended)):
        image = find_image(client, ref)
        if image is None or LABEL_INPUTS not in (image.labels or {}):
            continue  # gone already, or not built by the runner (a prebuilt image.name is the user's)
        if image.id in protected:
            continue
        if image.id in in_use:
            plan.notes.append(f"kept image {ref}: container {in_use[image.id]} uses it")
            continue
        users = sorted(j.id for j in ended if ref in _images_of(state, [j]))
        plan.removals.append(Removal("image", ref, image.short_id.removeprefix("sha256:"),
                                     f"built for ended job(s) {', '.join(users)}", users[0] if users else None))


# --- RunPod pods ----------------------------------------------------------------------------------
def plan_pods(state: st.State, client: Any, owner: str, plan: Plan) -> None:
    from runner.runpod.reconcile import decide

    for d in decide(state, client.list_pods(), owner):
        if d.action == "terminate":
            found = state.attempt_and_job_state(d.attempt_id)
            plan.removals.append(Removal("pod", d.pod_name, d.pod_id, d.why, found[3] if found else None))


# --- the command ----------------------------------------------------------------------------------
def make_plan(state: st.State, docker: Callable[[], Any] | None, runpod: Callable[[], tuple[Any, str]] | None) -> Plan:
    """What would be removed. ``docker``/``runpod`` connect to the engine / RunPod (None: not set up)."""
    plan = Plan()
    if docker is not None:
        try:
            plan_docker(state, docker(), plan)
        except Exception as e:  # no engine here: nothing of it to prune, and the rest still is
            plan.notes.append(f"containers and images not checked: {str(e).split('; ')[0]}")
    if runpod is not None:
        try:
            client, owner = runpod()
            plan_pods(state, client, owner, plan)
        except Exception as e:
            plan.notes.append(f"RunPod pods not checked: {e}")
    return plan


def execute(state: st.State, plan: Plan, docker: Any, runpod: Any) -> None:
    """Remove what the plan lists: containers first, so their images are free to go."""
    for r in sorted(plan.removals, key=lambda r: ("container", "image", "pod").index(r.kind)):
        try:
            if r.kind == "pod":
                runpod.terminate(r.id)
            elif r.kind == "container":
                docker.containers.get(r.id).remove()
            else:
                docker.images.remove(r.name)
            r.done = True
        except Exception as e:
            r.done, r.error = False, str(getattr(e, "explanation", None) or e)[:300]
            continue
        if r.kind == "pod" and r.job_id:
            state.add_event(r.job_id, "pod_terminated", f"runner prune terminated RunPod pod {r.id} ({r.name}): {r.why}")


def main(dry_run: bool, json: bool) -> None:
    from runner import paths

    if not paths.db_path().exists():
        return _report(Plan(notes=["no job was ever submitted here: nothing to prune"]), dry_run, json)
    state = st.State(paths.db_path())
    try:
        docker_client: list[Any] = []
        runpod_client: list[Any] = []

        def docker() -> Any:
            from runner.backends import docker_client as dc

            docker_client.append(dc.connect(timeout=30))
            return docker_client[0]

        def runpod() -> tuple[Any, str]:
            from runner.runpod.client import RunPodClient
            from runner.runpod.names import owner_id

            runpod_client.append(RunPodClient())
            return runpod_client[0], owner_id()

        from runner.runpod import configured

        # A state that never launched a pod has no owner id, so no pod of RunPod's can be its.
        has_pods = configured() and (paths.state_dir() / "runpod-owner").exists()
        plan = make_plan(state, docker, runpod if has_pods else None)
        if not dry_run:
            execute(state, plan, docker_client[0] if docker_client else None,
                    runpod_client[0] if runpod_client else None)
    finally:
        state.close()
    _report(plan, dry_run, json)
    if any(r.done is False for r in plan.removals):
        raise SystemExit(1)


def _report(plan: Plan, dry_run: bool, json: bool) -> None:
    if json:
        import json as jsonlib

        print(jsonlib.dumps({"dry_run": dry_run, "removals": [asdict(r) for r in plan.removals], "notes": plan.notes},
                            indent=2))
        return
    for r in plan.removals:
        verb = {"pod": "terminate"}.get(r.kind, "remove")
        if r.done is None:
            print(f"would {verb} {r.kind} {r.name} ({r.id}): {r.why}")
        elif r.done:
            print(f"{verb}d {r.kind} {r.name} ({r.id}): {r.why}")
        else:
            print(f"could not {verb} {r.kind} {r.name} ({r.id}): {r.error}", file=sys.stderr)
    for note in plan.notes:
        print(note)
    if not plan.removals:
        print("nothing to prune")
    elif dry_run:
        print("(dry run: nothing was removed; run `runner prune` to remove these)")
