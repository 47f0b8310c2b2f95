"""A run in an S3 bucket (AWS, or any S3-compatible store: SeaweedFS, MinIO, R2, RunPod's S3 API).

Where the bucket is and who may use it comes only from the standard environment:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``), ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` and ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; never from a job file.

How it behaves, and why:

* Every request goes through one retry policy (tenacity): exponential backoff with jitter on
  throttling (503 SlowDown, 429), other 5xx, timeouts and dropped connections; never on 403/404,
  which become a :class:`~trainer.storage.StorageError` that says what to fix. botocore's own
  retries are switched off so that each failed attempt is visible, counted and logged once on the
  ``trainer`` logger. Connect and read timeouts bound every request, so a stalled server costs a
  retry, not the run.
* Large objects are uploaded as multipart uploads with parallel parts. Each *part* is retried on
  its own, so one dropped connection costs one part, not the whole checkpoint (boto3's managed
  transfer would restart the whole file once botocore's retries are off; that is why the parts
  are driven here and not by ``upload_file``). Downloads (:mod:`trainer.s3_download`) start with
  one stream and add parallel ranged GETs only where the measured link rewards them; a dropped
  stream resumes from the byte where it stopped.
* A PUT (or a completed multipart upload) is atomic in S3: a reader sees the previous object or the
  new one, never a part. Downloads land in a temporary file renamed into place.
* The sha256 of a checkpoint is also stored as object metadata (``x-amz-meta-sha256``), so the
  bytes in the bucket can be checked without the sidecar.

Torch-free: the runner imports it to read ``status.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import boto3
import tenacity
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
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
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.utils import determine_content_length

from trainer.s3_download import Destination, Download, Fetched, FileDestination, Hash, MemoryBuffer, Replaced
from trainer.storage_api import Storage, StorageError

log = logging.getLogger("trainer")

T = TypeVar("T")

MiB = 1 << 20
#: S3's limits: a part is 5 MiB..5 GiB, at most 10,000 parts; one CopyObject copies at most 5 GiB.
MIN_PART = 5 * MiB
MAX_PARTS = 10_000
MAX_SINGLE_COPY = 5 << 30

#: Tuning knobs (not where or who: those are the AWS_* variables). Seconds / counts.
ENV_CONNECT_TIMEOUT = "TRAINER_S3_CONNECT_TIMEOUT"
ENV_READ_TIMEOUT = "TRAINER_S3_READ_TIMEOUT"
ENV_MAX_ATTEMPTS = "TRAINER_S3_MAX_ATTEMPTS"
ENV_CONCURRENCY = "TRAINER_S3_CONCURRENCY"

# --- which failures are worth another attempt -----------------------------------------------------
#: Error codes that say "later": throttling, a busy or failing server, a request the server timed out.
RETRYABLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequests",
    "TooManyRequestsException", "RequestLimitExceeded", "RequestThrottled", "RequestThrottledException",
    "BandwidthLimitExceeded", "ProvisionedThroughputExceededException", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "PriorRequestNotComplete",
})
#: Error codes that no amount of waiting fixes: the bucket, the keys or the permissions are wrong.
PERMANENT_CODES = frozenset({
    "NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidBucketName", "AccountProblem", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
    "PermanentRedirect", "AuthorizationHeaderMalformed", "RequestTimeTooSkewed", "InvalidRequest",
    "NoSuchKey", "NoSuchUpload", "PreconditionFailed", "InvalidRange", "EntityTooLarge", "EntityTooSmall",
})
#: Transport failures: the request may or may not have reached the server; every S3 call made
#: here is idempotent, so trying again is safe.
_TRANSIENT_TRANSPORT = (
    EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError,
    ResponseStreamingError, IncompleteReadError, ConnectionError, TimeoutError,
    # Reading a response body goes straight to urllib3, whose errors botocore does not always wrap.
    urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError, http.client.HTTPException,
)


def error_code(exc: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status of a ClientError (``("", 0)`` for anything else)."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        meta = exc.response.get("ResponseMetadata", {}) or {}
        status = int(meta.get("HTTPStatusCode") or 0)
        return str(err.get("Code") or status or ""), status
    return "", 0


def is_retryable(exc: BaseException) -> bool:
    """True for failures that another attempt can fix (throttling, 5xx, timeouts, dropped
    connections); False for those it cannot (403, 404, bad keys, missing bucket, TLS)."""
    if isinstance(exc, ClientError):
        code, status = error_code(exc)
        if code in PERMANENT_CODES or status in (401, 403, 404):
            return False
        return code in RETRYABLE_CODES or status == 429 or status >= 500
    if isinstance(exc, SSLError | NoCredentialsError):
        return False
    if isinstance(exc, _TRANSIENT_TRANSPORT):
        return True
    # Anything else botocore reports about the connection (a reset mid-body, a proxy hiccup).
    return isinstance(exc, BotoConnectionError)


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a failed request for the log."""
    if isinstance(exc, ClientError):
        code, status = error_code(exc)
        return f"{code} (HTTP {status})" if status else code
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def no_continue_on_empty_bodies(client: Any) -> Any:
    """``client`` (a boto3 S3 client), no longer sending ``Expect: 100-continue`` on a PUT with an empty body.

    botocore sends it on every S3 PUT. A Go server (SeaweedFS, MinIO) rightly answers an empty body with the
    final response and no interim ``100 Continue``; botocore takes that answer for the interim one, and the
    next request on the same pooled connection then waits for the read timeout (60 s) and is sent again
    (boto/botocore#3755; botocore's own switch, ``BOTO_EXPERIMENTAL__NO_EMPTY_CONTINUE``, is experimental).
    An empty object is a normal thing to store: an empty log, an empty file in a dataset."""
    client.meta.events.register_last("before-call.s3", _drop_continue_on_empty_body)
    return client


def _drop_continue_on_empty_body(params: dict[str, Any], **_: Any) -> None:
    headers = params.get("headers") or {}
    if "Expect" in headers and determine_content_length(params.get("body")) == 0:
        del headers["Expect"]


class StorageUnavailable(Exception):
    """S3 kept failing with errors that are normally transient (throttling, 5xx, timeouts) until the
    retry budget ran out. Not a misconfiguration: relaunching later can succeed."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


# --- the storage ----------------------------------------------------------------------------------
class S3Storage(Storage):
    """A run under ``s3://bucket/prefix``; ``work_dir`` is a local cache the run never depends on."""

    def __init__(
        self,
        uri: str,
        work_dir: str | Path,
        *,
        part_size: int = 32 * MiB,
        copy_part_size: int = 512 * MiB,
        multipart_threshold: int = 64 * MiB,
        concurrency: int | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_attempts: int | None = None,
        max_retry_seconds: float = 300.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 10.0,
    ) -> None:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"not an S3 run URI: {uri!r}; use s3://BUCKET/PREFIX")
        self.bucket = parsed.netloc
        prefix = parsed.path.strip("/")
        self.prefix = prefix + "/" if prefix else ""
        self.uri = f"s3://{self.bucket}/{prefix}".rstrip("/")
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.part_size = max(MIN_PART, part_size)
        self.multipart_threshold = max(self.part_size, multipart_threshold)
        self.copy_part_size = max(MIN_PART, copy_part_size)
        self.concurrency = concurrency or _env_number(ENV_CONCURRENCY, 8, int)
        self.connect_timeout = connect_timeout or _env_number(ENV_CONNECT_TIMEOUT, 5.0, float)
        self.read_timeout = read_timeout or _env_number(ENV_READ_TIMEOUT, 60.0, float)
        self.max_attempts = max_attempts or _env_number(ENV_MAX_ATTEMPTS, 8, int)
        self.max_retry_seconds = max_retry_seconds
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        self.region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self._where = self.endpoint or f"AWS S3 ({self.region})"
        self.retries = 0  # failed attempts that were retried, for tests and benchmarks
        self._retries_lock = threading.Lock()
        self._synced: dict[Path, tuple[int, int]] = {}
        self._sync_lock = threading.Lock()
        # Streams added to downloads, all of them together: with the downloads themselves at most
        # 2 x concurrency connections, which the client's pool holds.
        self._stream_slots = threading.Semaphore(max(0, self.concurrency - 1))
        self.client = self._make_client()

    def _make_client(self) -> Any:
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise StorageError(
                f"no S3 credentials for {self.uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the "
                "environment of the trainer (never in the job file or the image)"
            )
        # Explicit credentials: boto3's default chain would also try ~/.aws and the instance
        # metadata service, which on a rented pod is slow at best and someone else's role at worst.
        session = boto3.session.Session(
            aws_access_key_id=key, aws_secret_access_key=secret,
            aws_session_token=os.environ.get("AWS_SESSION_TOKEN") or None, region_name=self.region,
        )
        config = Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            # One attempt per call: retries happen in _call, where each one is logged and counted.
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max(10, self.concurrency * 2 + 2),
            tcp_keepalive=True,
            # S3-compatible stores (SeaweedFS, MinIO, R2) all take path-style; virtual hosts need DNS.
            s3={"addressing_style": "path" if self.endpoint else "auto"},
            # Integrity is checked end to end by the sha256 sidecar; skip per-request CRCs on parts.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return no_continue_on_empty_bodies(session.client("s3", endpoint_url=self.endpoint, config=config))

    # --- plumbing ---------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return self.prefix + key

    def _call(self, what: str, fn: Callable[[], T], *, doing: str | None = None,
              attempts: int | None = None, max_seconds: float | None = None) -> T:
        """Run ``fn`` (one S3 request, body read included) under the retry policy.

        A transient failure that outlasts the budget becomes :class:`StorageUnavailable`. With
        ``doing`` ("write", "read", ...) a permanent refusal becomes a :class:`StorageError` that says
        what to fix; without it the ClientError is raised as is, for callers that handle codes."""
        attempts = attempts or self.max_attempts

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            with self._retries_lock:
                self.retries += 1
            log.warning("S3 retry: %s failed with %s; attempt %d of %d in %.1fs", what,
                        describe(exc) if exc else "?", state.attempt_number + 1, attempts,
                        state.next_action.sleep if state.next_action else 0.0)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_retryable),
            # Exponential backoff plus jitter, so parts that failed together do not retry in lockstep.
            wait=tenacity.wait_exponential(multiplier=self.backoff_initial, max=self.backoff_max)
            + tenacity.wait_random(0, self.backoff_initial),
            stop=tenacity.stop_after_attempt(attempts)
            | tenacity.stop_after_delay(max_seconds or self.max_retry_seconds),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except (BotoCoreError, ClientError, *_TRANSIENT_TRANSPORT) as e:
            if is_retryable(e):
                raise StorageUnavailable(
                    f"S3 {what} at {self._where} still failed after retrying ({describe(e)}); the store is "
                    "overloaded or unreachable: the run continues from its last checkpoint when relaunched",
                    e,
                ) from None
            if doing is not None and isinstance(e, ClientError):
                raise self._misconfigured(e, doing) from None
            raise

    def _misconfigured(self, exc: BaseException, doing: str) -> StorageError:
        """Turn a permanent failure into an error that says which thing is wrong and what to do."""
        code, status = error_code(exc)
        where, run = self._where, f"s3://{self.bucket}/{self.prefix}"
        if isinstance(exc, StorageUnavailable) and exc.cause is not None:
            exc = exc.cause
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
            return StorageError(
                f"unreachable endpoint: cannot connect to the S3 endpoint {where} (trying to {doing} {run}); check "
                "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (scheme, host, port) and that this machine can reach it"
            )
        if isinstance(exc, SSLError):
            return StorageError(f"TLS to the S3 endpoint {where} failed ({describe(exc)}); "
                                "check the endpoint URL's scheme (http/https) and its certificate")
        if code == "NoSuchBucket" or (status == 404 and doing == "list"):
            return StorageError(
                f"wrong or missing bucket: bucket {self.bucket!r} does not exist at {where}; create it "
                f"(aws s3 mb s3://{self.bucket}) or fix the bucket name in the run URI"
            )
        if code == "InvalidAccessKeyId":
            return StorageError(
                f"wrong credentials: {where} does not know the access key in AWS_ACCESS_KEY_ID; check that "
                "variable and that the endpoint is the one the key was issued for"
            )
        if code == "SignatureDoesNotMatch":
            return StorageError(
                f"wrong credentials: AWS_SECRET_ACCESS_KEY does not match AWS_ACCESS_KEY_ID at {where}; "
                "check the secret key (and AWS_REGION for AWS)"
            )
        if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
            return StorageError(f"wrong credentials: AWS_SESSION_TOKEN is expired or invalid at {where}; "
                                "issue new temporary credentials")
        if code == "RequestTimeTooSkewed":
            return StorageError(f"this machine's clock is too far from {where}'s; sync the clock (NTP)")
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed") or status == 301:
            return StorageError(f"bucket {self.bucket!r} lives in another region: set AWS_REGION to its region")
        if code in ("AccessDenied", "AllAccessDisabled") or status in (401, 403):
            return StorageError(
                f"access denied: the credentials are valid but may not {doing} {run} at {where}; grant "
                "s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on it"
            )
        return StorageError(f"S3 at {where} refused a request to {doing} {run}: {describe(exc)}; check the run "
                            "URI and what the credentials are allowed to do")

    # --- Storage interface ------------------------------------------------------------------------
    def check(self) -> None:
        """List, write and delete a probe under the prefix, with a short retry budget.

        Listing comes first: some S3-compatible stores create a missing bucket on the first PUT."""
        probe = self._key(f".write-check-{socket.gethostname()}-{os.getpid()}")
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("list", lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)),
            ("write to", lambda: self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")),
            ("delete from", lambda: self.client.delete_object(Bucket=self.bucket, Key=probe)),
        ]
        for doing, fn in steps:
            try:
                # A blip at start is retried, but a wrong endpoint must not take minutes to say so.
                self._call(f"check ({doing} {self.uri})", fn, doing=doing, attempts=3, max_seconds=20)
            except (SSLError, NoCredentialsError) as e:
                raise self._misconfigured(e, doing) from None
            except StorageUnavailable as e:
                if isinstance(e.cause, EndpointConnectionError | ConnectTimeoutError):
                    raise self._misconfigured(e, doing) from None
                raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(f"put {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data),
                   doing="write to")

    def put_file(self, local: Path, key: str, *, sha256: str | None = None, move: bool = False) -> None:
        local = Path(local)
        # The size is fixed now: a file still being appended to (a log, an event file) is uploaded
        # as the prefix that existed at this instant, never with a body longer than its header says.
        size = local.stat().st_size
        meta = {"sha256": sha256} if sha256 else {}
        if size <= self.multipart_threshold:
            def put() -> Any:
                with open(local, "rb") as f:
                    data = f.read(size)
                return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata=meta)

            self._call(f"put {key}", put, doing="write to")
        else:
            self._multipart_upload(local, key, size, meta)
        if move:
            local.unlink(missing_ok=True)

    def _part_ranges(self, size: int, part_size: int) -> list[tuple[int, int]]:
        part = max(part_size, math.ceil(size / MAX_PARTS))
        return [(off, min(part, size - off)) for off in range(0, size, part)]

    def _multipart_upload(self, local: Path, key: str, size: int, meta: dict[str, str]) -> None:
        full = self._key(key)
        ranges = self._part_ranges(size, self.part_size)
        fd = os.open(local, os.O_RDONLY)
        try:
            def upload(upload_id: str, i: int, offset: int, length: int) -> dict[str, Any]:
                def attempt() -> Any:
                    # Read inside the attempt: a retried part is sent again from the file, and
                    # at most `concurrency` parts are in memory at once.
                    body = os.pread(fd, length, offset)
                    if len(body) != length:
                        raise OSError(f"{local} shrank while it was being uploaded")
                    return self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                   PartNumber=i, Body=body)

                etag = self._call(f"upload {key} part {i}/{len(ranges)}", attempt, doing="write to")["ETag"]
                return {"PartNumber": i, "ETag": etag}

            self._assemble(f"upload {key}", key, ranges, upload, meta, size)
        finally:
            os.close(fd)

    def _assemble(self, what: str, key: str, ranges: list[tuple[int, int]],
                  part: Callable[[str, int, int, int], dict[str, Any]], meta: dict[str, str], size: int) -> None:
        """A multipart upload of ``key`` from ``part(upload_id, number, offset, length)`` for each of
        ``ranges`` (in parallel), completed, or aborted when any part fails."""
        full = self._key(key)
        upload_id = self._call(f"start {what}", lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=full, Metadata=meta), doing="write to")["UploadId"]
        try:
            parts = parallel(self.concurrency, [(lambda i=i, o=o, n=n: part(upload_id, i, o, n))
                                                 for i, (o, n) in enumerate(ranges, 1)])
            self._complete(key, full, upload_id, parts, meta, size)
        except BaseException:
            self._abort(key, full, upload_id)
            raise

    def _abort(self, key: str, full: str, upload_id: str) -> None:
        try:  # the parts of an abandoned upload are stored (and billed) until it is aborted
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except Exception as e:
            log.warning("could not abort the multipart upload of %s (%s); a lifecycle rule on the bucket "
                        "should expire incomplete uploads", key, describe(e))

    def _complete(self, key: str, full: str, upload_id: str, parts: list[dict[str, Any]],
                  meta: dict[str, str], size: int) -> None:
        attempts = [0]

        def complete() -> Any:
            attempts[0] += 1
            try:
                return self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts})
            except ClientError as e:
                # A retry after a response lost on the way back: the upload is already complete.
                # It counts as done only if the object there is ours (same size and metadata).
                if error_code(e)[0] == "NoSuchUpload" and attempts[0] > 1:
                    head = self.client.head_object(Bucket=self.bucket, Key=full)
                    if head["ContentLength"] == size and head.get("Metadata", {}) == meta:
                        return head
                raise

        self._call(f"complete upload {key}", complete, doing="write to")

    def head(self, key: str) -> dict[str, Any] | None:
        """Size, ETag and metadata of ``key``; None when it does not exist."""
        def head() -> dict[str, Any] | None:
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as e:
                if error_code(e)[1] == 404:
                    return None
                raise

        return self._call(f"head {key}", head, doing="read")

    def get_bytes(self, key: str) -> bytes | None:
        def get() -> bytes | None:
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as e:
                if error_code(e)[0] in ("NoSuchKey", "404"):
                    return None
                raise
            # Read inside the attempt, so a body cut short is retried too. closing(), not `with`:
            # StreamingBody's own context manager hands out the raw stream, without its length check.
            with contextlib.closing(resp["Body"]) as body:
                return body.read()

        return self._call(f"get {key}", get, doing="read")

    def get_file(self, key: str, local: Path) -> bool:
        return self.get_file_hashed(key, local) is not None

    def get_file_sha256(self, key: str, local: Path) -> tuple[str, int] | None:
        """Download ``key`` to ``local`` like :meth:`get_file`; ``(sha256 hex, size)`` of what was
        written, or None when ``key`` does not exist."""
        got = self.get_file_hashed(key, local, hashlib.sha256)
        return None if got is None else (got.digest or "", got.size)

    def get_file_hashed(self, key: str, local: Path, new_hash: Callable[[], Hash] | None = None) -> Fetched | None:
        """Download ``key`` to ``local`` (renamed into place when whole), hashing the bytes on the way
        in with ``new_hash`` (saves reading the file a second time); None when ``key`` does not exist."""
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        # No fsync: this is a cache, verified after download, and fetched again if lost. The rename
        # still keeps a partial download from ever being seen under the final name.
        tmp = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            got = self._download(key, FileDestination(fd), new_hash)
            if got is not None:
                os.replace(tmp, local)
            return got
        finally:
            os.close(fd)
            tmp.unlink(missing_ok=True)

    def get_in_memory(self, key: str, new_hash: Callable[[], Hash] | None = None) -> tuple[MemoryBuffer, Fetched] | None:
        """Download ``key`` into memory (:class:`~trainer.s3_download.MemoryBuffer`), hashing the
        bytes as they arrive with ``new_hash``; None when ``key`` does not exist."""
        mem = MemoryBuffer()
        t0 = time.monotonic()
        try:
            got = self._download(key, mem, new_hash)
        except BaseException:
            mem.close()
            raise
        if got is None:
            mem.close()
            return None
        took = max(time.monotonic() - t0, 1e-6)
        log.info("downloaded %s in memory: %.0f MB in %.2f s (%.0f MB/s, %d stream%s, %d ranged GETs)", key,
                 got.size / 1e6, took, got.size / took / 1e6, got.streams, "" if got.streams == 1 else "s",
                 got.ranged_parts)
        return mem, got

    def _download(self, key: str, dest: Destination, new_hash: Callable[[], Hash] | None) -> Fetched | None:
        for _ in range(3):
            download = Download(self.client, self.bucket, self._key(key), dest, call=self._call,
                                max_streams=self.concurrency, new_hash=new_hash, name=key,
                                slots=self._stream_slots)
            try:
                return download.run()
            except Replaced:
                log.info("%s changed while it was being downloaded; downloading it again", key)
            except ClientError as e:
                raise self._misconfigured(e, "read") from None
        raise StorageUnavailable(f"{key} kept changing while it was being downloaded from {self.uri}")

    def copy(self, src_key: str, dst_key: str) -> None:
        info = self.head(src_key)
        if info is None:
            raise FileNotFoundError(f"cannot copy {src_key}: it is not in {self.uri}")
        size = int(info["ContentLength"])
        source = {"Bucket": self.bucket, "Key": self._key(src_key)}
        if size <= MAX_SINGLE_COPY:
            # Server-side: the bytes never come back to this machine. COPY keeps the sha256 metadata.
            self._call(f"copy {src_key} to {dst_key}", lambda: self.client.copy_object(
                Bucket=self.bucket, Key=self._key(dst_key), CopySource=source, MetadataDirective="COPY"),
                doing="write to")
        else:
            self._multipart_copy(source, src_key, dst_key, size, info.get("Metadata", {}))

    def _multipart_copy(self, source: dict[str, str], src_key: str, dst_key: str, size: int,
                        meta: dict[str, str]) -> None:
        """CopyObject stops at 5 GiB; above that the copy is assembled from server-side part copies."""
        full = self._key(dst_key)
        ranges = self._part_ranges(size, self.copy_part_size)

        def part(upload_id: str, i: int, offset: int, length: int) -> dict[str, Any]:
            resp = self._call(f"copy {src_key} part {i}/{len(ranges)}", lambda: self.client.upload_part_copy(
                Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=i, CopySource=source,
                CopySourceRange=f"bytes={offset}-{offset + length - 1}"), doing="write to")
            return {"PartNumber": i, "ETag": resp["CopyPartResult"]["ETag"]}

        self._assemble(f"copy to {dst_key}", dst_key, ranges, part, meta, size)

    def list(self, prefix: str) -> list[str]:
        keys = (obj["Key"][len(self.prefix):] for obj in self.objects(self._key(prefix), f"list {prefix or '/'}"))
        # Not the probes and temp names (a dot first), as locally.
        return sorted(k for k in keys if not k.rsplit("/", 1)[-1].startswith("."))

    def objects(self, full_prefix: str, what: str | None = None) -> list[dict[str, Any]]:
        """Every object under ``full_prefix`` (a key from the bucket's root, not the run's): key, size
        and ETag, as S3 lists them. One request per page, each retried on its own."""
        found: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(what or f"list s3://{self.bucket}/{full_prefix}",
                              lambda kw=kwargs: self.client.list_objects_v2(**kw), doing="list")
            found += page.get("Contents", [])
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return found

    def delete(self, key: str) -> None:
        def delete() -> None:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as e:
                if error_code(e)[1] != 404:  # S3 answers 204 for a missing key; some stores 404
                    raise

        self._call(f"delete {key}", delete, doing="delete from")

    def sync_dir(self, local_dir: Path, prefix: str) -> int:
        """Upload files under ``local_dir`` whose size or mtime changed since the last call.

        What was uploaded is remembered in memory only: after a relaunch everything is uploaded
        once more, which is cheap for logs and event files and needs nothing to survive on disk."""
        local_dir = Path(local_dir)
        count = 0
        with self._sync_lock:
            for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
                if path.name.startswith("."):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                stamp = (st.st_size, st.st_mtime_ns)
                if self._synced.get(path) == stamp:
                    continue
                rel = path.relative_to(local_dir).as_posix()
                self.put_file(path, f"{prefix.rstrip('/')}/{rel}")
                self._synced[path] = stamp
                count += 1
        return count

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


def parallel(workers: int, calls: list[Callable[[], T]], name: str = "s3-part") -> list[T]:
    """Run ``calls`` on up to ``workers`` threads and return their results in order.

    On the first failure the calls not yet started are cancelled; the error is raised once the
    running ones have finished, so no part is still writing into a file that is being removed."""
    if len(calls) <= 1 or workers <= 1:
        return [c() for c in calls]
    with ThreadPoolExecutor(max_workers=min(workers, len(calls)), thread_name_prefix=name) as pool:
        futures = [pool.submit(c) for c in calls]
        wait(futures, return_when=FIRST_EXCEPTION)
        for f in futures:
            f.cancel()
    for f in futures:
        if not f.cancelled() and f.exception() is not None:
            raise f.exception()  # type: ignore[misc]
    return [f.result() for f in futures]


def _env_number(name: str, default: T, kind: Callable[[str], T]) -> T:
    """The tuning knob ``name`` as ``kind`` (int or float), ``default`` when unset."""
    raw = os.environ.get(name)
    try:
        return kind(raw) if raw else default
    except ValueError:
        what = "a whole number" if kind is int else "a number of seconds"
        raise StorageError(f"{name}={raw!r} is not {what}") from None
