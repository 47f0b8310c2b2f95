"""A dataset in S3, copied to a local cache the trainer reads from: ``local_path(location)``.

``s3://bucket/prefix/`` (a folder: every object under it) or ``s3://bucket/key.ext`` (one object)
becomes a local folder or file under the data cache (``--cache-dir``/datasets, else
``$XDG_CACHE_HOME``/spot-runner/datasets, else the temp dir). A local path is returned as it is.

How it behaves, and why:

* The S3 client is the run storage's (:class:`trainer.storage_s3.S3Storage`): the same ``AWS_*``
  variables, endpoint, timeouts, retry policy and error messages, and its downloads, which land in
  a temporary name renamed into place (a killed download is never seen as a file).
* Files download in parallel (``TRAINER_S3_CONCURRENCY`` at a time), with a progress bar on a terminal.
* Each cached prefix has a manifest (``.manifest.json``): per file the object's size and ETag and the
  sha256 of the bytes written. A later start on the same machine lists the prefix (one request per
  1,000 objects), keeps every file whose object is unchanged and whose local bytes still hash to the
  manifest's sha256, and downloads only the rest: new or changed objects, files a killed start did
  not finish, and local files that were corrupted. The manifest is written as files complete, so a
  relaunch after SIGKILL downloads only what is missing.
* An object with a ``.sha256`` sidecar (the checkpoints' JSON ``{"sha256": ...}`` or a ``sha256sum``
  line) is checked against it after download; a mismatch is an error, not a silent bad dataset.
* Local files whose object is gone from the prefix are removed, so the folder is the prefix.
* One process at a time fills a cached prefix (a file lock): ranks of one machine share one copy.

Torch-free: the runner imports :func:`list_location` to check a job's data before it launches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from trainer.contract import CHECKSUM_SUFFIX
from trainer.storage_api import StorageError

__all__ = ["ENV_DATA_CACHE", "Listing", "data_cache_root", "is_remote", "list_location", "local_path", "open_bucket"]

log = logging.getLogger("trainer")

#: Where cached datasets go; the trainer sets it from ``--cache-dir``.
ENV_DATA_CACHE = "TRAINER_DATA_CACHE"
MANIFEST = ".manifest.json"
_MANIFEST_VERSION = 1
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Listing:
    """What a data location holds: a single file or a folder of ``files`` files, ``bytes`` in all."""

    location: str
    kind: Literal["file", "folder"]
    files: int
    bytes: int


@dataclass(frozen=True)
class RemoteObject:
    """One object of a dataset location in S3, as listed."""

    rel: str  # relative to the folder ("" for a single object: its base name is used)
    key: str
    size: int
    etag: str
    sidecar: str | None  # key of its .sha256 sidecar, when there is one


def is_remote(location: str) -> bool:
    return urlparse(location).scheme == "s3"


def data_cache_root(cache_dir: str | Path | None = None) -> Path:
    """The folder cached datasets live under: ``cache_dir``, else ``$TRAINER_DATA_CACHE``, else
    ``$XDG_CACHE_HOME/spot-runner/datasets``, else ``<temp dir>/spot-runner/datasets``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    if os.environ.get(ENV_DATA_CACHE):
        return Path(os.environ[ENV_DATA_CACHE]).expanduser().resolve()
    root = os.environ.get("XDG_CACHE_HOME") or tempfile.gettempdir()
    return (Path(root) / "spot-runner" / "datasets").resolve()


def local_path(location: str, cache_dir: str | Path | None = None, *, progress: bool | None = None) -> Path:
    """A local file or folder holding the data at ``location``, downloading it first if it is in S3.

    ``s3://bucket/prefix/`` (trailing slash) is a folder: every object under it, at the same relative
    paths. ``s3://bucket/key`` is the object ``key``, or the folder ``key/`` when no such object
    exists. Local paths (and ``file://``) come back unchanged. Raises FileNotFoundError when there is
    nothing at the location and :class:`StorageError` when the bucket cannot be read as configured.
    ``progress``: show a progress bar (default: when stderr is a terminal)."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme != "s3":
        return Path(location)
    bucket = open_bucket(location)
    try:
        kind, objects = _list(bucket, location)
        folder = _fetch(bucket, location, objects, data_cache_root(cache_dir), progress)
    finally:
        bucket.close()
    return folder if kind == "folder" else folder / objects[0].rel


def list_remote(location: str) -> list[RemoteObject]:
    """The objects an ``s3://`` data location holds (a single object: a list of one)."""
    bucket = open_bucket(location)
    try:
        return _list(bucket, location)[1]
    finally:
        bucket.close()


def fetch_remote(location: str, objects: list[RemoteObject], under: str | Path) -> Path:
    """Some of ``location``'s objects (from :func:`list_remote`), downloaded into their own cache folder
    below ``under`` in the data cache (so a partial copy never passes for the whole dataset); reused
    when unchanged. Returns that folder, which holds them at their relative paths."""
    bucket = open_bucket(location)
    try:
        return _fetch(bucket, location, objects, data_cache_root() / under, None)
    finally:
        bucket.close()


def _fetch(bucket: Any, location: str, objects: list[RemoteObject], root: Path, progress: bool | None) -> Path:
    folder = root / _cache_name(location, bucket.endpoint)
    _Sync(bucket, location, folder, objects, progress).run()
    return folder


def list_location(location: str, base: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Listing:
    """How many files and bytes ``location`` holds, checking the credentials can read it.

    A local path (relative to ``base``; glob patterns allowed) must exist. For ``s3://`` the prefix
    is listed (a pattern is matched against the keys) and one object is HEADed, which needs the same
    permission as downloading it. ``environ`` replaces ``os.environ`` for the S3 settings (the job's
    own ``env:`` on top of the submitting shell's). Raises FileNotFoundError naming the location
    when there is nothing there, :class:`StorageError` when the bucket cannot be read."""
    if not is_remote(location):
        return _list_local(location, base)
    bucket = open_bucket(location, environ)
    try:
        kind, objects = _list(bucket, location)
        # Listing needs s3:ListBucket; reading needs s3:GetObject: a HEAD proves the second one.
        if bucket.head(objects[0].key) is None:
            raise FileNotFoundError(f"{location}: {objects[0].key} was listed but is gone; check the dataset")
        return Listing(location, kind, len(objects), sum(o.size for o in objects))
    finally:
        bucket.close()


# --- local ------------------------------------------------------------------------------------------
def _list_local(location: str, base: str | Path | None) -> Listing:
    parsed = urlparse(location)
    path = Path(parsed.path if parsed.scheme == "file" else location).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if _GLOB.search(str(path)):
        import glob

        files = sorted(Path(m) for m in glob.glob(str(path), recursive=True) if Path(m).is_file())
        if not files:
            raise FileNotFoundError(f"no file matches {location} (looked for {path})")
        return Listing(location, "folder", len(files), sum(f.stat().st_size for f in files))
    if path.is_file():
        return Listing(location, "file", 1, path.stat().st_size)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
        return Listing(location, "folder", len(files), sum(f.stat().st_size for f in files))
    raise FileNotFoundError(f"{location}: not found (looked for {path})")


# --- S3 ---------------------------------------------------------------------------------------------
def open_bucket(location: str, environ: Mapping[str, str] | None = None) -> Any:
    """The run storage's S3 client at the root of ``location``'s bucket (``objects(prefix)`` lists it)."""
    from trainer.storage_s3 import S3Storage

    parsed = urlparse(location)
    if not parsed.netloc:
        raise StorageError(f"{location!r} names no bucket; expected s3://BUCKET/PREFIX/ or s3://BUCKET/KEY")
    # S3Storage reads its endpoint, region and keys from os.environ when it is made (the trainer's
    # way); the runner checks with the job's settings, so they stand in for that moment only.
    with s3_environment(environ):
        # Nothing is written into the work dir of a listing client; an existing folder will do.
        return S3Storage(f"s3://{parsed.netloc}", work_dir=tempfile.gettempdir())


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def s3_environment(environ: Mapping[str, str] | None) -> Iterator[None]:
    """``os.environ`` replaced by ``environ`` for the block (None: left as it is): the trainer's S3 clients
    read their settings from it when they are made, and a job's own environment stands in for the trainer's.
    One block at a time in this process."""
    if environ is None:
        yield
        return
    with _ENV_LOCK:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _list(bucket: Any, location: str) -> tuple[Literal["file", "folder"], list[RemoteObject]]:
    """What ``location`` names: ("file", [one object]) or ("folder", [objects, sorted])."""
    key = urlparse(location).path.lstrip("/")
    pattern = None
    if _GLOB.search(key):  # s3://b/prefix/*.jsonl: list the prefix before the pattern, match the rest
        head = _GLOB.split(key, 1)[0]
        prefix = head[: head.rfind("/") + 1]
        pattern = key[len(prefix):]
    else:
        prefix = key
    raw = bucket.objects(prefix)
    where = bucket.endpoint or f"AWS S3 ({bucket.region})"
    if pattern is None and key and not key.endswith("/"):
        exact = [o for o in raw if o["Key"] == key]
        if exact:
            o = exact[0]
            sidecar = key + CHECKSUM_SUFFIX
            has_sidecar = any(x["Key"] == sidecar for x in raw)
            return "file", [RemoteObject(key.rsplit("/", 1)[-1], key, int(o["Size"]), o["ETag"].strip('"'),
                                    sidecar if has_sidecar else None)]
        prefix = key + "/"  # s3://b/folder without the slash: the folder
        raw = [o for o in raw if o["Key"].startswith(prefix)]
    keys = {o["Key"] for o in raw}
    objects = []
    for o in raw:
        rel = o["Key"][len(prefix):]
        name = rel.rsplit("/", 1)[-1]
        if not rel or rel.endswith("/") or name.startswith("."):
            continue  # folder markers, probes, temp names
        if rel.endswith(CHECKSUM_SUFFIX) and o["Key"][: -len(CHECKSUM_SUFFIX)] in keys:
            continue  # a sidecar: it checks its object, it is not data
        if pattern is not None and not fnmatchcase(rel, pattern):
            continue
        if any(part in ("..", ".") for part in rel.split("/")):
            raise StorageError(f"{location}: object {o['Key']!r} has a path that would leave the cache folder; "
                               "rename it in the bucket")
        sidecar = o["Key"] + CHECKSUM_SUFFIX
        objects.append(RemoteObject(rel, o["Key"], int(o["Size"]), o["ETag"].strip('"'),
                               sidecar if sidecar in keys else None))
    if not objects:
        if pattern:
            what = f"no object matches {pattern!r} under s3://{bucket.bucket}/{prefix}"
        elif prefix == key:
            what = f"no object under s3://{bucket.bucket}/{prefix}"
        else:
            what = f"no object at s3://{bucket.bucket}/{key} and none under s3://{bucket.bucket}/{prefix}"
        raise FileNotFoundError(
            f"{location}: {what} (listed at {where}); upload the dataset there (for example `aws s3 sync "
            f"DIR s3://{bucket.bucket}/{prefix}` or `python -m trainer fetch-dataset NAME --to "
            f"s3://{bucket.bucket}/{prefix}`) or fix the location")
    return "folder", sorted(objects, key=lambda o: o.rel)


def _cache_name(location: str, endpoint: str | None) -> str:
    """A folder name per (endpoint, location): readable, and distinct for distinct datasets."""
    parsed = urlparse(location)
    tail = re.sub(r"[^A-Za-z0-9_.-]", "_", (parsed.path.strip("/").rsplit("/", 1)[-1] or parsed.netloc))[:40]
    digest = hashlib.sha256(f"{endpoint or 'aws'}\n{location}".encode()).hexdigest()[:12]
    return f"{tail}-{digest}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)  # hashlib releases the GIL on large buffers: threads hash in parallel
    return h.hexdigest()


def sidecar_sha256(raw: bytes | None) -> str | None:
    """The sha256 in a sidecar: the checkpoints' JSON ``{"sha256": ...}`` or a ``sha256sum`` line."""
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace").strip()
    with contextlib.suppress(ValueError, AttributeError):
        value = json.loads(text).get("sha256")
        if isinstance(value, str):
            return value.lower()
    m = re.match(r"^([0-9a-fA-F]{64})\b", text)
    return m.group(1).lower() if m else None


class _Sync:
    """Make ``folder`` hold exactly ``objects``, downloading only what its manifest cannot vouch for."""

    def __init__(self, bucket: Any, location: str, folder: Path, objects: list[RemoteObject], progress: bool | None):
        self.bucket, self.location, self.folder, self.objects = bucket, location, folder, objects
        self.progress = progress
        self.manifest_path = folder / MANIFEST
        self.lock = threading.Lock()
        self.entries: dict[str, dict[str, Any]] = {}
        self.last_write = 0.0

    def run(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # another rank filling it: wait, then reuse its work
            self.entries = self._read_manifest()
            removed = self._remove_stale()
            reuse, fetch = self._classify()
            total = sum(o.size for o in self.objects)
            if fetch:
                log.info("dataset %s: %d of %d files cached, downloading %d (%s) to %s", self.location, len(reuse),
                         len(self.objects), len(fetch), _size(sum(o.size for o in fetch)), self.folder)
            try:
                self._download(fetch)
            finally:
                self._write_manifest(force=True)
            log.info("dataset %s: %d files, %s in %s (%d downloaded, %d reused from the cache, %d removed)",
                     self.location, len(self.objects), _size(total), self.folder, len(fetch), len(reuse), removed)

    def _read_manifest(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or torn: every file is checked against the bucket anew
        if doc.get("version") != _MANIFEST_VERSION or doc.get("location") != self.location:
            return {}
        return {k: v for k, v in doc.get("files", {}).items() if isinstance(v, dict)}

    def _write_manifest(self, force: bool = False) -> None:
        # Throttled: a dataset of thousands of small files would otherwise rewrite it thousands of times.
        with self.lock:
            now = time.monotonic()
            if not force and now - self.last_write < 2.0:
                return
            self.last_write = now
            doc = {"version": _MANIFEST_VERSION, "location": self.location, "files": dict(sorted(self.entries.items()))}
            tmp = self.manifest_path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, self.manifest_path)

    def _remove_stale(self) -> int:
        """Delete files whose object is gone and temp files a killed download left behind."""
        wanted = {o.rel for o in self.objects}
        removed = 0
        for path in sorted(self.folder.rglob("*")):
            if not path.is_file() or path.name in (MANIFEST, ".lock"):
                continue
            rel = path.relative_to(self.folder).as_posix()
            if rel not in wanted:
                path.unlink(missing_ok=True)
                self.entries.pop(rel, None)
                removed += 0 if path.name.startswith(".") else 1
        return removed

    def _classify(self) -> tuple[list[RemoteObject], list[RemoteObject]]:
        """(kept, to download): a file is kept when its object is unchanged since it was downloaded
        and its bytes still hash to what was written then."""
        def intact(o: RemoteObject) -> bool:
            entry = self.entries.get(o.rel)
            path = self.folder / o.rel
            if not entry or entry.get("etag") != o.etag or entry.get("size") != o.size:
                return False
            try:
                if path.stat().st_size != o.size:
                    return False
            except OSError:
                return False
            if file_sha256(path) == entry.get("sha256"):
                return True
            log.warning("dataset %s: cached %s is corrupted (its sha256 changed); downloading it again",
                        self.location, o.rel)
            return False

        from trainer.storage_s3 import parallel  # the bucket is an S3Storage: loaded already

        checks = parallel(self.bucket.concurrency, [lambda o=o: (o, intact(o)) for o in self.objects], "dataset")
        keep = [o for o, ok in checks if ok]
        fetch = [o for o, ok in checks if not ok]
        for o in fetch:
            self.entries.pop(o.rel, None)
        return keep, fetch

    def _download(self, objects: list[RemoteObject]) -> None:
        if not objects:
            return
        from tqdm import tqdm

        from trainer.storage_s3 import parallel

        bar = tqdm(total=sum(o.size for o in objects), unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"download {self.location}", disable=None if self.progress is None else not self.progress)

        def one(o: RemoteObject) -> None:
            dest = self.folder / o.rel
            got = self.bucket.get_file_sha256(o.key, dest)  # temp name, renamed into place when whole
            if got is None:
                raise FileNotFoundError(f"{self.location}: {o.key} was listed but is gone; it was deleted while "
                                        "the dataset was downloading: start again")
            sha, size = got
            if o.sidecar is not None:
                expected = sidecar_sha256(self.bucket.get_bytes(o.sidecar))
                if expected is not None and expected != sha:
                    dest.unlink(missing_ok=True)
                    raise StorageError(f"{self.location}: s3://{self.bucket.bucket}/{o.key} does not match its "
                                       f"checksum in {o.sidecar} (sha256 {sha[:12]}…, expected {expected[:12]}…); "
                                       "the object in the bucket is damaged: upload it again")
            with self.lock:
                self.entries[o.rel] = {"size": size, "etag": o.etag, "sha256": sha}
            bar.update(size)
            self._write_manifest()

        try:
            parallel(self.bucket.concurrency, [lambda o=o: one(o) for o in objects], "dataset")
        finally:
            bar.close()


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
