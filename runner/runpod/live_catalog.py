"""RunPod's live GPU catalog (prices and stock), cached for a minute in the state folder so that
``runner gpus`` run twice in a row asks RunPod once."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from runner import paths
from runner.catalog import load_catalog
from runner.runpod.client import GpuOffer, RunPodClient

CACHE_SECONDS = float(os.environ.get("RUNNER_RUNPOD_CATALOG_SECONDS", "60"))
CACHE_FILE = "runpod-gpus.json"


def cache_path() -> Path:
    return paths.state_dir() / CACHE_FILE


def live_offers(client: RunPodClient | None = None, now: float | None = None) -> tuple[list[GpuOffer], float]:
    """(offers, when they were fetched): from the cache when it is fresh, else from RunPod."""
    now = now or time.time()
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
        if now - float(cached["fetched"]) < CACHE_SECONDS and cached.get("base_url") == _base_url(client):
            return [GpuOffer.from_dict(o) for o in cached["offers"]], float(cached["fetched"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        pass
    client = client or RunPodClient()
    offers = client.gpu_catalog()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"fetched": now, "base_url": _base_url(client), "offers": [o.to_dict() for o in offers]}))
    os.replace(tmp, path)
    return offers, now


def _base_url(client: RunPodClient | None) -> str:
    from runner.runpod import base_url

    return client.transport.base_url if client is not None else base_url()


def rows(offers: list[GpuOffer]) -> list[dict[str, Any]]:
    """One row per GPU type for ``runner gpus``: the alias a job can use, memory, prices per GPU-hour
    and the spot minimum bid (each the lower of the two clouds), and the pod stock."""
    catalog = load_catalog()
    out = []
    for o in offers:
        known = catalog.resolve(o.id)
        out.append({"alias": known.alias if known else None, "id": o.id, "vram_gb": o.memory_gb,
                    "on_demand_per_hour": o.lowest("on_demand"), "spot_per_hour": o.lowest("spot"),
                    "minimum_bid_per_hour": o.lowest("minimum_bid"), "stock": o.stock, "source": "runpod"})
    order = {g.id: i for i, g in enumerate(catalog.gpus)}
    return sorted(out, key=lambda r: (order.get(r["id"], len(order)), r["id"]))
