"""The names this runner gives RunPod pods: ``spot-runner-<owner>-<attempt id>``. The owner is a random
id of this runner's state, so pods of another machine's runner (same account, other state) are never
taken for ours; the attempt id lets a runner that died after sending a create find its pod again."""

from __future__ import annotations

import secrets as token

from runner import paths
from runner.runpod import POD_NAME_PREFIX

_OWNER_FILE = "runpod-owner"


def owner_id() -> str:
    """A random id of this runner's state, in every pod name: pods of another machine's runner
    (same account, other state) are never taken for ours."""
    path = paths.state_dir() / _OWNER_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = token.token_hex(4)
    try:
        with open(path, "x") as f:  # two runners at once: the first one's id wins
            f.write(fresh)
    except FileExistsError:
        return path.read_text().strip()
    return fresh


def pod_name(attempt_id: str) -> str:
    return f"{POD_NAME_PREFIX}{owner_id()}-{attempt_id}"
