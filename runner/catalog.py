"""The GPU catalog (``runner/gpus.yaml``): aliases → RunPod GPU type ids, memory and prices.

One data file, used to validate ``resources.gpu`` and to price a job before it is launched."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class GpuType:
    alias: str
    id: str  # RunPod's GPU type id
    vram_gb: int
    on_demand: float  # USD per GPU-hour
    spot: float  # USD per GPU-hour, interruptible
    relative_speed: float = 1.0
    aliases: tuple[str, ...] = ()

    def price(self, spot: bool) -> float:
        return self.spot if spot else self.on_demand

    def to_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "id": self.id, "vram_gb": self.vram_gb, "on_demand_per_hour": self.on_demand,
                "spot_per_hour": self.spot, "relative_speed": self.relative_speed, "aliases": list(self.aliases)}


@dataclass(frozen=True)
class Catalog:
    gpus: tuple[GpuType, ...]
    reference_gpu: str = "rtx3090"
    tokens_per_second: dict[str, float] = field(default_factory=dict)
    local_cpu_tokens_per_second: dict[str, float] = field(default_factory=dict)
    #: Disk prices, USD per GB-month while an attempt runs: ``container_disk``, ``volume``.
    storage_usd_per_gb_month: dict[str, float] = field(default_factory=dict)
    #: The reference GPU's speed over a CPU, for recipes without a pair of throughput figures.
    reference_gpu_vs_cpu: float = 10.0
    #: A RunPod CPU pod that supervises jobs (``supervisor: runpod``), USD per hour.
    supervisor_pod_usd_per_hour: float = 0.06

    @functools.cached_property
    def _index(self) -> dict[str, GpuType]:
        index: dict[str, GpuType] = {}
        for gpu in self.gpus:
            for name in (gpu.alias, gpu.id, *gpu.aliases):
                index[_norm(name)] = gpu
        return index

    def resolve(self, name: str) -> GpuType | None:
        """The GPU type for an alias or a RunPod id (case and spacing do not matter)."""
        return self._index.get(_norm(name))

    def closest(self, name: str, n: int = 3) -> list[str]:
        """Known aliases nearest to an unknown name, for "did you mean" messages."""
        names = [g.alias for g in self.gpus] + [a for g in self.gpus for a in g.aliases]
        ids = {_norm(g.id): g.alias for g in self.gpus}
        close = difflib.get_close_matches(_norm(name), names, n=n, cutoff=0.5)
        close += [ids[i] for i in difflib.get_close_matches(_norm(name), list(ids), n=n, cutoff=0.6)]
        return list(dict.fromkeys(self.resolve(c).alias for c in close))[:n]  # each alias once, nearest first


def _norm(name: str) -> str:
    return " ".join(str(name).lower().split())


@functools.lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    import yaml

    raw = yaml.safe_load(resources.files("runner").joinpath("gpus.yaml").read_text(encoding="utf-8"))
    gpus = tuple(
        GpuType(alias=alias, id=g["id"], vram_gb=int(g["vram_gb"]), on_demand=float(g["on_demand"]),
                spot=float(g["spot"]), relative_speed=float(g.get("relative_speed", 1.0)),
                aliases=tuple(str(a) for a in g.get("aliases", ())))
        for alias, g in raw["gpus"].items()
    )
    return Catalog(gpus, raw.get("reference_gpu", "rtx3090"), dict(raw.get("tokens_per_second") or {}),
                   dict(raw.get("local_cpu_tokens_per_second") or {}),
                   {k: float(v) for k, v in (raw.get("storage_usd_per_gb_month") or {}).items()},
                   float(raw.get("reference_gpu_vs_cpu", 10.0)), float(raw.get("supervisor_pod_usd_per_hour", 0.06)))
