"""The storage interface every run location implements (:class:`Storage`) and its error. Kept apart
from :mod:`trainer.storage`, which picks the implementation for a URI, so that the S3 one can build
on this without the two importing each other."""

from __future__ import annotations

import abc
from pathlib import Path


class StorageError(Exception):
    """Storage that cannot be used as configured (wrong bucket, credentials, endpoint, permissions).

    Raised before any training step, and never retried: the message says what to fix."""


class Storage(abc.ABC):
    """A run URI. ``work_dir`` is the local folder the trainer writes into before publishing:
    the run folder itself for local storage, a cache folder for remote storage."""

    uri: str
    work_dir: Path

    @property
    def is_local(self) -> bool:
        """True when ``work_dir`` *is* the run: files written there need no upload."""
        return False

    @abc.abstractmethod
    def check(self) -> None:
        """Fail fast with :class:`StorageError` if the run URI cannot be read and written."""

    @abc.abstractmethod
    def put_file(self, local: Path, key: str, *, sha256: str | None = None, move: bool = False) -> None:
        """Publish the file ``local`` as ``key`` atomically. With ``move``, ``local`` may be consumed."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` as ``key`` atomically."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """The bytes of ``key``, or None when it does not exist."""

    @abc.abstractmethod
    def get_file(self, key: str, local: Path) -> bool:
        """Download ``key`` to ``local`` (atomically); False when ``key`` does not exist."""

    @abc.abstractmethod
    def copy(self, src_key: str, dst_key: str) -> None:
        """Replace ``dst_key`` with the bytes of ``src_key`` atomically (server-side where possible)."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys that start with ``prefix``, sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def local_path(self, key: str) -> Path | None:
        """The file behind ``key`` when it can be read in place (local storage), else None."""
        return None

    def sync_dir(self, local_dir: Path, prefix: str) -> int:
        """Upload the files under ``local_dir`` that changed since the last call, under ``prefix``.

        Returns how many were uploaded. A no-op when the storage is the work dir itself."""
        return 0

    def close(self) -> None:  # noqa: B027 - an optional hook: most storages hold nothing to release
        """Release clients and threads."""
