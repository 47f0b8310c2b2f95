"""Fixtures shared by the storage tests against a real S3 server."""

from __future__ import annotations

import pytest

from tests.fixtures.s3 import S3Server


@pytest.fixture
def env(s3_bucket: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The test bucket's AWS_* variables in this process's environment, as a trainer would have them."""
    for name, value in s3_bucket.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return s3_bucket
