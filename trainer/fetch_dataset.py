"""``python -m trainer fetch-dataset NAME --to s3://bucket/prefix/``: a public MIDI dataset into the
user's bucket, once, so every job (on any backend) reads it from there.

The archive is downloaded (a progress bar on a terminal), its ``.mid``/``.midi`` files are extracted
(the archive's single top folder, if it has one, is dropped, so ``<prefix>/<first folder>/...`` is the
dataset's own layout: PiJAMA's pianist folders stay first) and uploaded in parallel through the run
storage's S3 client. A file already under the prefix with the same size is skipped, so running it
again after an interruption uploads only what is missing."""

from __future__ import annotations

import logging
import shutil
import tempfile
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from trainer.dataset_cache import open_bucket

log = logging.getLogger("trainer")

#: Where each dataset's MIDI archive is published. PiJAMA's MIDI is distributed on request from its
#: authors (Edwards et al., TISMIR 2023), with no stable public archive URL: give it with --url.
SOURCES: dict[str, str | None] = {
    # MAESTRO v3.0.0, MIDI only (~57 MB), as linked from https://magenta.tensorflow.org/datasets/maestro
    "maestro": "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip",
    "pijama": None,
}
MIDI_SUFFIXES = (".mid", ".midi")


class FetchError(Exception):
    """The command cannot do what was asked; the message says what to give instead."""


@dataclass(frozen=True)
class Fetched:
    uploaded: int
    skipped: int  # already under the prefix with the same size
    bytes: int  # uploaded


def fetch_dataset(name: str, to: str, url: str | None = None, *, progress: bool | None = None) -> Fetched:
    """Download dataset ``name`` (or the zip at ``url``), and upload its MIDI files under ``to``."""
    if name not in SOURCES and url is None:
        raise FetchError(f"unknown dataset {name!r}; expected one of: {', '.join(SOURCES)} (or any name with --url)")
    source = url or SOURCES.get(name)
    if not source:
        raise FetchError(f"{name}: there is no public archive URL to download it from; get the MIDI archive from its "
                         f"authors and give it with --url (a http(s):// URL or a local .zip path)")
    parsed = urlparse(to)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise FetchError(f"--to {to!r}: expected s3://BUCKET/PREFIX/")
    prefix = parsed.path.strip("/")
    prefix = prefix + "/" if prefix else ""
    with tempfile.TemporaryDirectory(prefix="fetch-dataset-") as tmp:
        archive = _download(source, Path(tmp) / "archive.zip", progress)
        files = _extract_midi(archive, Path(tmp) / "midi")
        if not files:
            raise FetchError(f"{source}: the archive holds no .mid or .midi file; check the URL")
        return _upload(files, Path(tmp) / "midi", to, prefix, progress)


def _download(source: str, dest: Path, progress: bool | None) -> Path:
    if urlparse(source).scheme not in ("http", "https"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FetchError(f"--url {source!r}: no such file; give a http(s):// URL or a local .zip path")
        return path
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(source, timeout=60) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {source}",
                      disable=None if progress is None else not progress) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except OSError as e:  # URLError, HTTPError and timeouts are all OSErrors
        raise FetchError(f"could not download {source}: {e}; check the URL and this machine's network") from None
    log.info("downloaded %s (%d bytes)", source, dest.stat().st_size)
    return dest


def _extract_midi(archive: Path, out: Path) -> list[str]:
    """Extract the MIDI files; their paths relative to ``out`` (the archive's one top folder dropped)."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise FetchError(f"{archive}: not a zip archive; give the URL of the dataset's .zip") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir() and m.filename.lower().endswith(MIDI_SUFFIXES)
                   and not m.filename.startswith("__MACOSX/") and not PurePosixPath(m.filename).name.startswith(".")]
        tops = {PurePosixPath(m.filename).parts[0] for m in members}
        strip = 1 if len(tops) == 1 and all(len(PurePosixPath(m.filename).parts) > 1 for m in members) else 0
        rels = []
        for m in members:
            parts = [p for p in PurePosixPath(m.filename).parts[strip:] if p not in ("", ".", "..")]
            rel = "/".join(parts)
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(dest, "wb") as f:  # never zf.extract: names are cleaned above
                shutil.copyfileobj(src, f)
            rels.append(rel)
    return sorted(rels)


def _upload(files: list[str], root: Path, to: str, prefix: str, progress: bool | None) -> Fetched:
    from tqdm import tqdm

    bucket = open_bucket(to)
    try:
        there = {o["Key"]: int(o["Size"]) for o in bucket.objects(prefix)}
        todo = [rel for rel in files if there.get(prefix + rel) != (root / rel).stat().st_size]
        total = sum((root / rel).stat().st_size for rel in todo)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"upload to {to}",
                  disable=None if progress is None else not progress) as bar, \
                ThreadPoolExecutor(max_workers=bucket.concurrency, thread_name_prefix="upload") as pool:
            futures = {pool.submit(bucket.put_file, root / rel, prefix + rel): rel for rel in todo}
            for f in as_completed(futures):
                f.result()
                bar.update((root / futures[f]).stat().st_size)
    finally:
        bucket.close()
    return Fetched(len(todo), len(files) - len(todo), total)
