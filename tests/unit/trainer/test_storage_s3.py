"""Which S3 failures are retried, how the retries are logged, and what a permanent one says.

The exceptions are the real botocore ones, built from the error responses S3 sends."""

from __future__ import annotations

import http.client
import logging

import pytest
import urllib3.exceptions
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)

from trainer.storage import StorageError, open_storage
from trainer.storage_s3 import S3Storage, StorageUnavailable, is_retryable

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


def client_error(code: str, status: int, op: str = "PutObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "from the server"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, op)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    # Nothing listens here; these tests never send a request.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


@pytest.fixture
def storage(s3_env: None, tmp_path) -> S3Storage:
    return S3Storage("s3://bucket/run", work_dir=tmp_path, backoff_initial=0.001, backoff_max=0.002, max_attempts=4)


@pytest.mark.parametrize("exc", [
    client_error("SlowDown", 503),
    client_error("ServiceUnavailable", 503),
    client_error("InternalError", 500),
    client_error("502", 502),  # a load balancer's bare 502 (HEAD responses have no code either)
    client_error("TooManyRequests", 429),
    client_error("Throttling", 400),
    client_error("RequestTimeout", 400),
    ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b/k"),
    ConnectTimeoutError(endpoint_url="http://127.0.0.1:9/b/k"),
    ConnectionClosedError(endpoint_url="http://127.0.0.1:9/b/k"),
    EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/k"),
    ResponseStreamingError(error="Connection broken: IncompleteRead"),
    IncompleteReadError(actual_bytes=10, expected_bytes=20),
    ConnectionResetError(104, "Connection reset by peer"),
    urllib3.exceptions.ProtocolError("Connection broken", ConnectionResetError(104, "reset")),
    http.client.IncompleteRead(b"", 10),
    TimeoutError("timed out"),
], ids=lambda e: type(e).__name__ + (f"-{e.response['Error']['Code']}" if isinstance(e, ClientError) else ""))
def test_transient_failures_are_retried(exc: BaseException) -> None:
    assert is_retryable(exc)


@pytest.mark.parametrize("exc", [
    client_error("NoSuchBucket", 404, "ListObjectsV2"),
    client_error("404", 404, "HeadObject"),
    client_error("NoSuchKey", 404, "GetObject"),
    client_error("AccessDenied", 403),
    client_error("403", 403, "HeadBucket"),
    client_error("InvalidAccessKeyId", 403),
    client_error("SignatureDoesNotMatch", 403),
    client_error("ExpiredToken", 400),
    client_error("NoSuchUpload", 404, "CompleteMultipartUpload"),
    client_error("PreconditionFailed", 412, "GetObject"),
    client_error("InvalidArgument", 400),
    SSLError(endpoint_url="https://127.0.0.1:9", error="certificate verify failed"),
    NoCredentialsError(),
    ValueError("a bug, not the network"),
], ids=lambda e: type(e).__name__ + (f"-{e.response['Error']['Code']}" if isinstance(e, ClientError) else ""))
def test_permanent_failures_are_not_retried(exc: BaseException) -> None:
    assert not is_retryable(exc)


def test_each_retry_is_logged_and_counted(storage: S3Storage, caplog: pytest.LogCaptureFixture) -> None:
    failures = [client_error("SlowDown", 503), ReadTimeoutError(endpoint_url="http://127.0.0.1:9/bucket/run/k")]
    calls = []

    def flaky() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "ok"

    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert storage._call("put status.json", flaky) == "ok"
    assert len(calls) == 3 and storage.retries == 2
    retries = [r.getMessage() for r in caplog.records if r.name == "trainer" and "S3 retry" in r.getMessage()]
    assert len(retries) == 2
    assert "put status.json" in retries[0] and "SlowDown (HTTP 503)" in retries[0]
    assert "ReadTimeoutError" in retries[1]


def test_a_403_is_not_retried_and_says_what_to_fix(storage: S3Storage, caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def denied() -> None:
        calls.append(1)
        raise client_error("SignatureDoesNotMatch", 403)

    with pytest.raises(StorageError) as info:
        storage._call("put checkpoints/latest.pt", denied, doing="write to")
    assert len(calls) == 1 and storage.retries == 0
    assert "AWS_SECRET_ACCESS_KEY does not match" in str(info.value)
    assert SECRET not in str(info.value) and KEY_ID not in str(info.value)
    assert not [r for r in caplog.records if "S3 retry" in r.getMessage()]


@pytest.mark.parametrize("code,status,expect", [
    ("NoSuchBucket", 404, "wrong or missing bucket: bucket 'bucket' does not exist"),
    ("InvalidAccessKeyId", 403, "does not know the access key in AWS_ACCESS_KEY_ID"),
    ("AccessDenied", 403, "access denied"),
    ("ExpiredToken", 400, "AWS_SESSION_TOKEN is expired"),
])
def test_permanent_errors_name_the_cause(storage: S3Storage, code: str, status: int, expect: str) -> None:
    def fail() -> None:
        raise client_error(code, status)

    with pytest.raises(StorageError) as info:
        storage._call("list", fail, doing="list")
    assert expect in str(info.value)
    assert SECRET not in str(info.value) and KEY_ID not in str(info.value)


def test_an_exhausted_budget_is_unavailable_not_misconfigured(storage: S3Storage) -> None:
    """Throttled for longer than the budget: not a StorageError (exit 3 would stop relaunches for good)."""
    calls = []

    def throttled() -> None:
        calls.append(1)
        raise client_error("SlowDown", 503)

    with pytest.raises(StorageUnavailable) as info:
        storage._call("put checkpoints/step-000000025.pt", throttled, doing="write to")
    assert not isinstance(info.value, StorageError)
    assert len(calls) == storage.max_attempts == 4
    assert "SlowDown" in str(info.value) and "relaunched" in str(info.value)


def test_missing_credentials_fail_before_any_request(s3_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        open_storage("s3://bucket/run", cache_dir=tmp_path)


def test_uri_and_cache_dir(s3_env: None, tmp_path) -> None:
    storage = open_storage("s3://my-bucket/some/prefix/", cache_dir=tmp_path)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.uri) == ("my-bucket", "some/prefix/", "s3://my-bucket/some/prefix")
    assert storage.work_dir.parent == tmp_path.resolve() and storage.work_dir.is_dir()
    assert not storage.is_local and storage.local_path("checkpoints/latest.pt") is None
    assert storage._part_ranges(10, 4) == [(0, 4), (4, 4), (8, 2)]
    # More than 10,000 parts are not allowed: the part size grows instead.
    ranges = storage._part_ranges(20_001 * 5, 5)
    assert len(ranges) <= 10_000 and sum(n for _, n in ranges) == 20_001 * 5


def test_tuning_from_the_environment(s3_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TRAINER_S3_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("TRAINER_S3_MAX_ATTEMPTS", "3")
    storage = S3Storage("s3://bucket/run", work_dir=tmp_path)
    assert storage.read_timeout == 2.5 and storage.max_attempts == 3
    # botocore's own retries are off: every attempt is one of ours, logged and counted.
    assert storage.client.meta.config.retries["total_max_attempts"] == 1
    monkeypatch.setenv("TRAINER_S3_READ_TIMEOUT", "soon")
    with pytest.raises(StorageError, match="TRAINER_S3_READ_TIMEOUT"):
        S3Storage("s3://bucket/run", work_dir=tmp_path)
