"""RunPod: a small client for its REST v2 and GraphQL APIs, and what the runpod backend builds on it.

- :mod:`.http` – the transport: base URL, Bearer key, retries (tenacity), RunPod's error shapes;
- :mod:`.graphql` – the GraphQL documents this project sends, always with variables;
- :mod:`.client` – pods (REST v2), spot pods and interruption details (GraphQL), catalog, billing, logs;
- :mod:`.launch` – one attempt's pod: the capacity walk (GPUs × clouds), spot bids, create-at-most-once;
- :mod:`.observe` – what an attempt's pod is doing, in the backend interface's terms;
- :mod:`.live_catalog` – GPU types with live prices and stock, cached briefly;
- :mod:`.reconcile` – pods named as ours that no active attempt owns are terminated.

The ``runpod`` package from PyPI is not used: its mutations put values into the query text with
f-strings (a quote in an env value breaks or injects the query), its GraphQL helper sends no
variables and retries nothing, it has no REST v2, and importing it takes seconds (it loads its
serverless worker), which every runner command would pay."""

from __future__ import annotations

import os

from trainer import contract

#: The API key (Bearer). In a pod, RunPod sets a pod-scoped one under the same name.
ENV_API_KEY = contract.ENV_RUNPOD_API_KEY
#: Base URL under which /v2/ and /graphql live; runpod-python reads the same variable.
ENV_BASE_URL = contract.ENV_RUNPOD_BASE_URL
DEFAULT_BASE_URL = contract.RUNPOD_DEFAULT_BASE_URL
#: Every pod this project creates is named ``spot-runner-<owner>-<attempt id>``.
POD_NAME_PREFIX = "spot-runner-"
#: Clouds walked for capacity, in order.
CLOUDS = ("SECURE", "COMMUNITY")


def base_url(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return (env.get(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")


def configured(environ: dict[str, str] | None = None) -> bool:
    """True when a RunPod API key is set, so the runner may talk to RunPod at all."""
    env = os.environ if environ is None else environ
    return bool(env.get(ENV_API_KEY))
