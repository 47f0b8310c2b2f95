"""Supervision from elsewhere: a supervisor on a small always-on machine (a RunPod CPU pod, any
Docker host) runs the same state machine as ``runner watch``, and the submitting machine reaches it
through the job's own storage, with no inbound port on either side.

- :mod:`.store` – object-store access with conditional writes (S3 ``If-None-Match`` / ``If-Match``;
  a folder with a lock file locally);
- :mod:`.lease` – one supervisor acts on a job at a time: a lease with an expiry, taken and renewed
  by conditional writes;
- :mod:`.control` – the layout under ``<storage>/_supervisor/``: each job's snapshot (its whole
  record, which the submitting machine imports), commands (cancel, resume) and their acknowledgements;
- :mod:`.daemon` – the supervisor process: the watch loop plus leases, snapshots and commands;
- :mod:`.place` – starting and stopping that process on Docker or as a RunPod CPU pod;
- :mod:`.commands` – ``runner supervisor up | status | down | run``.

See docs/supervisor.md for the design and how it compares with SkyPilot's and dstack's."""

from __future__ import annotations

import os

#: Where a supervisor keeps what it shares with the submitting machine, under the job's storage root.
CONTROL_DIR = "_supervisor"
#: Where a job may be supervised.
PLACES = ("docker", "runpod")

#: Seconds a lease lasts unless renewed (read at use, so tests can shorten it).
ENV_LEASE_SECONDS = "RUNNER_SUPERVISOR_LEASE_SECONDS"
#: Seconds between two looks for commands and new jobs in the storage.
ENV_CONTROL_SECONDS = "RUNNER_SUPERVISOR_CONTROL_SECONDS"
#: At most one snapshot of a job per this many seconds, unless something is about to be launched or stopped.
ENV_SNAPSHOT_SECONDS = "RUNNER_SUPERVISOR_SNAPSHOT_SECONDS"
#: The image a supervisor runs (default: the job's own image).
ENV_IMAGE = "RUNNER_SUPERVISOR_IMAGE"
#: What an hour of the always-on machine costs, for a supervisor on Docker (a RunPod pod's own rate is used there).
ENV_USD_PER_HOUR = "RUNNER_SUPERVISOR_USD_PER_HOUR"
#: Where a supervisor runs, in words (set by whoever started it: "docker container …", "RunPod pod …").
ENV_PLACE = "RUNNER_SUPERVISOR_PLACE"
#: The RunPod account key, handed to a supervisor pod under this name: RunPod sets RUNPOD_API_KEY in every
#: pod to a key that may act on that pod only.
ENV_ACCOUNT_KEY = "RUNNER_RUNPOD_ACCOUNT_KEY"


def seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def lease_seconds() -> float:
    return seconds(ENV_LEASE_SECONDS, 60.0)


def control_seconds() -> float:
    return seconds(ENV_CONTROL_SECONDS, 10.0)


def snapshot_seconds() -> float:
    return seconds(ENV_SNAPSHOT_SECONDS, 30.0)


def control_root(storage_root: str) -> str:
    """``<storage root>/_supervisor``: where everything about supervision of the root's jobs lives."""
    return f"{storage_root.rstrip('/')}/{CONTROL_DIR}"
