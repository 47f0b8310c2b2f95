"""One small interface over where a run lives: a local folder or an S3 bucket.

Everything a run writes lives under its run URI (see ``trainer.contract`` for the layout). Keys
are ``/``-separated paths relative to the run URI. Every write is atomic: a reader sees the old
object or the new one, never a part. Torch-free: the runner reads ``status.json`` through it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from trainer.storage_api import Storage, StorageError

__all__ = ["LocalStorage", "Storage", "StorageError", "default_cache_dir", "open_storage", "write_atomic"]


class LocalStorage(Storage):
    """A run in a local folder (a plain path or ``file://``). The folder is the work dir."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)
        self.work_dir = self.root

    @property
    def is_local(self) -> bool:
        return True

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"key {key!r} escapes the run folder {self.root}")
        return path

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-check-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise StorageError(f"run folder {self.root} is not writable: {e.strerror or e}") from None

    def put_file(self, local: Path, key: str, *, sha256: str | None = None, move: bool = False) -> None:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if move:
            try:
                os.replace(local, dst)
                fsync_dir(dst.parent)
                return
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
        with atomic_file(dst) as tmp, open(local, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 16 << 20)
            out.flush()
            os.fsync(out.fileno())
        if move:
            Path(local).unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        write_atomic(self._path(key), data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def get_file(self, key: str, local: Path) -> bool:
        src = self._path(key)
        if not src.is_file():
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(local) as tmp:
            shutil.copyfile(src, tmp)
        return True

    def copy(self, src_key: str, dst_key: str) -> None:
        src, dst = self._path(src_key), self._path(dst_key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        # A hard link then a rename: atomic, and no second copy of a large checkpoint on disk.
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not base.is_dir():
            return []
        files = (Path(folder) / name for folder, _dirs, names in os.walk(base) for name in names)
        keys = (path.relative_to(self.root).as_posix() for path in files if not path.name.startswith("."))
        return sorted(key for key in keys if key.startswith(prefix))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


def open_storage(uri: str, cache_dir: str | Path | None = None) -> Storage:
    """The storage for a run URI: a local path, ``file://…`` or ``s3://bucket/prefix``."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        from trainer.storage_s3 import S3Storage  # boto3 is imported only for S3 runs

        return S3Storage(uri, work_dir=default_cache_dir(uri, cache_dir))
    if parsed.scheme == "file":
        return LocalStorage(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" on Windows is a drive, not a scheme
        raise StorageError(f"unsupported run URI {uri!r}: use a local path, file://PATH or s3://BUCKET/PREFIX")
    return LocalStorage(uri)


def default_cache_dir(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Local working copy of a remote run: ``--cache-dir``, else ``$XDG_CACHE_HOME``, else the temp dir.

    Nothing in it has to survive a relaunch: everything needed to continue is in the bucket."""
    if cache_dir is None:
        root = os.environ.get("XDG_CACHE_HOME") or tempfile.gettempdir()
        cache_dir = Path(root) / "spot-runner"
    name = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser().resolve() / name


# --- atomic local writes --------------------------------------------------------------------------
class atomic_file:
    """``with atomic_file(path) as tmp:`` write ``tmp``; on success it is fsynced and renamed to ``path``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: Path) -> int:
    """Delete ``.*.tmp`` and ``.*.link`` files that a killed process left behind; they are never read."""
    count = 0
    if folder.is_dir():
        for path in [*folder.glob(".*.tmp"), *folder.glob(".*.link")]:
            path.unlink(missing_ok=True)
            count += 1
    return count
