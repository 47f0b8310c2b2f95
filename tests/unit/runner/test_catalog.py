from __future__ import annotations

import pytest

from runner.catalog import load_catalog


def test_seed_prices():
    catalog = load_catalog()
    assert (catalog.resolve("rtx3090").spot, catalog.resolve("rtx3090").on_demand) == (0.34, 0.44)
    assert (catalog.resolve("rtx4090").spot, catalog.resolve("rtx4090").on_demand) == (0.69, 0.79)


@pytest.mark.parametrize("alias", ["rtx3090", "rtx4090", "rtx5090", "a4000", "a5000", "a6000", "l4", "l40s",
                                   "a100-80g", "h100", "h200"])
def test_every_alias_the_docs_promise_resolves(alias):
    assert load_catalog().resolve(alias) is not None


def test_runpod_ids_and_spelling_variants_resolve():
    catalog = load_catalog()
    assert catalog.resolve("NVIDIA GeForce RTX 3090").alias == "rtx3090"
    assert catalog.resolve("  RTX3090 ").alias == "rtx3090"
    assert catalog.resolve("nvidia h100 80gb hbm3").alias == "h100-sxm"


def test_every_entry_is_consistent():
    catalog = load_catalog()
    ids = [g.id for g in catalog.gpus]
    assert len(ids) == len(set(ids))
    for gpu in catalog.gpus:
        assert 0 < gpu.spot <= gpu.on_demand, gpu
        assert gpu.vram_gb > 0 and gpu.relative_speed > 0


def test_closest_names_for_typos():
    catalog = load_catalog()
    assert catalog.closest("rtx3909")[0] == "rtx3090"
    assert catalog.closest("NVIDIA RTX 3090")[0] == "rtx3090"
    assert catalog.closest("zzzz") == []
