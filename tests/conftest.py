"""Shared test set-up. Tests under tests/integration are marked ``integration`` automatically:
they start real processes, servers or containers. ``pytest -m "not integration"`` runs the fast ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.s3 import s3_bucket, s3_server  # noqa: F401  (a real SeaweedFS S3 server)

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
