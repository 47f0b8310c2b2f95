"""A RunPod pod stops itself when the trainer's work is over.

RunPod restarts a container whose main process ended and keeps billing the pod, so a finished job
would otherwise bill until someone stops it: the runner does, but a laptop that was closed cannot.
In a pod RunPod sets ``RUNPOD_POD_ID`` and a pod-scoped ``RUNPOD_API_KEY``; with them the restart
loop asks RunPod to stop this pod (``POST /v2/pods/{id}/action`` ``stop``). Outside a pod it does nothing.

Standard library only (it runs in the image's entrypoint, torch-free); the key is never logged."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from urllib.parse import quote

from trainer import contract

log = logging.getLogger("trainer.runpod")

TRIES = 4


def in_pod(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get(contract.ENV_RUNPOD_POD_ID) and env.get(contract.ENV_RUNPOD_API_KEY))


def stop_own_pod(reason: str, environ: dict[str, str] | None = None) -> bool:
    """Ask RunPod to stop the pod this process runs in. True when RunPod accepted."""
    env = os.environ if environ is None else environ
    if not in_pod(env):
        return False
    pod_id = env[contract.ENV_RUNPOD_POD_ID]
    base = env.get(contract.ENV_RUNPOD_BASE_URL) or contract.RUNPOD_DEFAULT_BASE_URL
    url = f"{base.rstrip('/')}/v2/pods/{quote(pod_id, safe='')}/action"
    request = urllib.request.Request(url, data=json.dumps({"action": "stop"}).encode(), method="POST", headers={
        "Authorization": f"Bearer {env[contract.ENV_RUNPOD_API_KEY]}", "Content-Type": "application/json",
        "User-Agent": "spot-runner-trainer"})
    log.info("%s: stopping this pod (%s) so that it bills no more", reason, pod_id)
    for tries in range(1, TRIES + 1):
        try:
            with urllib.request.urlopen(request, timeout=30):
                return True
        except urllib.error.HTTPError as e:
            if e.code in (404, 409):  # already gone, or already stopping
                return True
            if e.code != 429 and e.code < 500:
                log.warning("RunPod refused to stop pod %s (HTTP %d); the runner terminates it", pod_id, e.code)
                return False
            delay = float(e.headers.get("Retry-After") or 2 ** tries) if e.code == 429 else 2 ** tries
        except (urllib.error.URLError, OSError) as e:
            delay = 2 ** tries
            log.warning("could not reach RunPod to stop pod %s: %s", pod_id, getattr(e, "reason", e))
        if tries < TRIES:
            time.sleep(min(delay, 30))
    log.warning("gave up stopping pod %s; the runner terminates it", pod_id)
    return False
