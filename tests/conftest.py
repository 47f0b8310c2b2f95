"""Shared test set-up. Tests under tests/integration are marked ``integration`` automatically:
they start real processes, servers or containers. ``pytest -m "not integration"`` runs the fast ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.s3 import s3_bucket, s3_server  # noqa: F401  (a real SeaweedFS S3 server)

# No test may reach RunPod: a key or base URL in the shell that runs the tests must not leak into
# the runners and trainers they start (RunPod tests point these at the local emulator themselves).
for _name in [n for n in os.environ if n.startswith("RUNPOD_")]:
    del os.environ[_name]

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
