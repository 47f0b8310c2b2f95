"""Small objects in the job's storage, read with their version and written only if that version is
still the one read: the one primitive that leases, snapshots and commands are built on.

- S3 (and S3-compatible stores): ``PutObject`` with ``If-None-Match: *`` (create only if absent) and
  ``If-Match: <ETag>`` (replace only that version); the store answers 412 otherwise. AWS S3 has both
  since 2024; SeaweedFS 4.48 has both (tests/integration/remote/test_store_s3.py). A store that
  ignores them would let two supervisors act at once, so :meth:`Store.check_conditional` writes a
  probe first and a store that accepts a second create is refused with that said: there is no safe
  scheme with plain overwrites.
- A local folder (a supervisor on this machine's Docker, tests): the same contract under an
  exclusive ``flock`` on a lock file, with atomic renames.

Versions are opaque strings (an S3 ETag, a content hash locally). Every object written here carries a
counter or a time, so two writes never have the same content and the same version."""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class StoreError(Exception):
    """The store cannot be used: the message says why and what to do."""


class VersionConflict(Exception):
    """A conditional write found another version than the one it was given (or an object where none was
    expected): someone else wrote first."""


class Store(abc.ABC):
    uri: str

    @abc.abstractmethod
    def get(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, version) of ``key``, or None when there is no such object."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, if_absent: bool = False, if_version: str | None = None) -> str:
        """Write ``key``; the new version. ``if_absent``: only if there is none; ``if_version``: only if
        the object is still at that version. :class:`VersionConflict` otherwise."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing one is fine."""

    def check_conditional(self) -> None:
        """Refuse a store that does not honour conditional writes (two supervisors could act at once)."""
        key = f"probe/{os.getpid()}-{time.time_ns()}"
        self.put(key, b"1", if_absent=True)
        try:
            self.put(key, b"2", if_absent=True)
        except VersionConflict:
            return
        finally:
            with contextlib.suppress(Exception):
                self.delete(key)
        raise StoreError(f"{self.uri} accepted a conditional write it should have refused (If-None-Match), so it "
                         f"cannot guarantee that one supervisor acts on a job at a time; use a store with "
                         f"conditional writes (AWS S3, SeaweedFS 4.48+, MinIO, R2) for jobs supervised elsewhere")


class LocalStore(Store):
    """A folder. Writes happen under an exclusive lock on ``.lock`` in it, by rename, so a reader sees
    a whole object or none and a conditional write compares and swaps as one step."""

    def __init__(self, root: Path):
        self.root = root
        self.uri = str(root)
        root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the lock file is closed, however the block ends
            yield

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StoreError(f"key {key!r} leaves {self.root}")
        return path

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put(self, key: str, data: bytes, *, if_absent: bool = False, if_version: str | None = None) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if if_absent or if_version is not None:
                current = self.get(key)
                if if_absent and current is not None:
                    raise VersionConflict(f"{key} exists")
                if if_version is not None and (current is None or current[1] != if_version):
                    raise VersionConflict(f"{key} changed")
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return hashlib.sha256(data).hexdigest()

    def list(self, prefix: str) -> list[str]:
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                if p.is_file() and not p.name.startswith("."))
        return sorted(key for key in keys if key.startswith(prefix))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


class S3Store(Store):
    """``s3://bucket/prefix`` with the standard AWS variables (``AWS_ENDPOINT_URL_S3`` for another S3)."""

    def __init__(self, uri: str, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        parsed = urlparse(uri)
        self.uri = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/") + "/" if parsed.path.strip("/") else ""
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise StoreError(f"no S3 credentials for {uri}: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        import boto3
        from botocore.config import Config

        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret,
                                        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
                                        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1")
        config = Config(connect_timeout=10, read_timeout=30, retries={"total_max_attempts": 4, "mode": "standard"},
                        s3={"addressing_style": "path" if endpoint else "auto"},
                        request_checksum_calculation="when_required", response_checksum_validation="when_required")
        self.client = session.client("s3", endpoint_url=endpoint, config=config)

    def _error(self, e: Exception, doing: str) -> Exception:
        code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
        status = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return VersionConflict(f"{doing}: {code or status}")
        return StoreError(f"{doing} in {self.uri}: {e}")

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as e:
            code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error(e, f"reading {key}") from None
        return answer["Body"].read(), answer["ETag"]

    def put(self, key: str, data: bytes, *, if_absent: bool = False, if_version: str | None = None) -> str:
        extra: dict[str, Any] = {}
        if if_absent:
            extra["IfNoneMatch"] = "*"
        if if_version is not None:
            extra["IfMatch"] = if_version
        try:
            answer = self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, **extra)
        except Exception as e:
            raise self._error(e, f"writing {key}") from None
        return answer["ETag"]

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                              Prefix=self.prefix + prefix):
                keys += [o["Key"][len(self.prefix):] for o in page.get("Contents", [])]
        except Exception as e:
            raise self._error(e, f"listing {prefix}") from None
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as e:
            raise self._error(e, f"deleting {key}") from None


def open_store(uri: str, environ: dict[str, str] | None = None) -> Store:
    """The store at ``uri``: ``s3://bucket/prefix``, or a folder (``file://`` or a path)."""
    if uri.startswith("s3://"):
        return S3Store(uri, environ)
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(f"{uri}: a supervisor elsewhere needs s3:// storage (or a folder of this machine)")
    return LocalStore(Path(uri.removeprefix("file://")).expanduser())
