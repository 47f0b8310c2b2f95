"""Datasets in S3 (real SeaweedFS): the trainer trains from an ``s3://`` prefix, a second start on the
same machine downloads nothing, a corrupted or missing cached file is downloaded again, a damaged
object is refused, and a missing prefix says where it looked and what to do."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.fixtures.jobs import make_job, run_trainer, trainer_env
from tests.fixtures.s3 import S3Server
from trainer.dataset_cache import MANIFEST, list_location, local_path
from trainer.storage_api import StorageError

ROOT = Path(__file__).resolve().parents[3]
TEXT = (ROOT / "jobs" / "data" / "python_reference.txt").read_text()


def upload(s3: S3Server, files: dict[str, bytes]) -> None:
    client = s3.client()
    for key, data in files.items():
        client.put_object(Bucket=s3.bucket, Key=key, Body=data)


def stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every data file: a download replaces the file, so both change."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}


def downloaded(log: str) -> tuple[int, int]:
    """(downloaded, reused) from the trainer's summary line for the dataset."""
    m = re.search(r"\((\d+) downloaded, (\d+) reused from the cache", log)
    assert m, log[-3000:]
    return int(m.group(1)), int(m.group(2))


def test_trainer_trains_from_an_s3_prefix_and_a_second_start_downloads_nothing(s3_bucket: S3Server, tmp_path: Path):
    # Three text files under a prefix, as a user would `aws s3 sync` them.
    third = len(TEXT) // 3
    parts = {f"corpus/part-{i}.txt": TEXT[i * third:(i + 1) * third].encode() for i in range(3)}
    upload(s3_bucket, parts)
    job = make_job(tmp_path, {"train": {"data": {"train": f"s3://{s3_bucket.bucket}/corpus/"}, "max_steps": 6,
                                        "batch_size": 4, "threads": 1, "eval": {"every_steps": 6, "batches": 1},
                                        "checkpoint": {"every_steps": 6}}})
    cache = tmp_path / "cache"
    env = trainer_env(**{k: v for k, v in s3_bucket.env().items() if k.startswith("AWS_")})

    first = run_trainer(job, str(tmp_path / "run-1"), "--cache-dir", str(cache), env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert downloaded(first.stderr) == (3, 0)
    folders = [p for p in (cache / "datasets").iterdir() if p.is_dir()]
    assert len(folders) == 1
    folder = folders[0]
    assert {k: (folder / k.split("/", 1)[1]).read_bytes() for k in parts} == parts
    before = stamps(folder)

    # Another run on the same machine (a relaunch would be the same): the cache is reused as is.
    second = run_trainer(job, str(tmp_path / "run-2"), "--cache-dir", str(cache), env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert downloaded(second.stderr) == (0, 3)
    assert stamps(folder) == before
    status = json.loads((tmp_path / "run-2" / "status.json").read_text())
    assert status["state"] == "done" and status["step"] == 6


def test_a_missing_prefix_fails_the_trainer_with_the_location_and_the_fix(s3_bucket: S3Server, tmp_path: Path):
    job = make_job(tmp_path, {"train": {"data": {"train": f"s3://{s3_bucket.bucket}/nothing-here/"}}})
    env = trainer_env(**{k: v for k, v in s3_bucket.env().items() if k.startswith("AWS_")})
    done = run_trainer(job, str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"s3://{s3_bucket.bucket}/nothing-here/" in done.stderr
    assert "upload the dataset there" in done.stderr


def test_the_cache_downloads_only_what_is_missing_changed_or_corrupted(env: S3Server, tmp_path: Path):  # env: the bucket's AWS_* set here (conftest)
    s3 = env
    files = {f"midi/pianist-{p}/{n}.mid": bytes([p, n]) * (1000 + 97 * n) for p in range(3) for n in range(4)}
    upload(s3, files)
    uri = f"s3://{s3.bucket}/midi/"
    folder = local_path(uri, tmp_path)
    assert folder.is_dir()
    assert {f"midi/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in folder.rglob("*.mid")} == files
    manifest = json.loads((folder / MANIFEST).read_text())
    assert set(manifest["files"]) == {k.removeprefix("midi/") for k in files}
    before = stamps(folder)

    assert local_path(uri, tmp_path) == folder
    assert stamps(folder) == before  # nothing downloaded again

    # A corrupted cached file (same size, other bytes), one a killed start never finished (gone,
    # with its temp file left behind), an object replaced in the bucket and one deleted from it.
    corrupted, lost, changed, deleted = (folder / "pianist-0/1.mid", folder / "pianist-1/2.mid",
                                         folder / "pianist-2/3.mid", folder / "pianist-2/0.mid")
    corrupted.write_bytes(b"\xff" * corrupted.stat().st_size)
    lost.unlink()
    (lost.parent / ".2.mid.123.456.tmp").write_bytes(b"partial")
    upload(s3, {"midi/pianist-2/3.mid": b"a new take"})
    s3.client().delete_object(Bucket=s3.bucket, Key="midi/pianist-2/0.mid")
    untouched = {k: v for k, v in stamps(folder).items()
                 if k not in ("pianist-0/1.mid", "pianist-2/3.mid", "pianist-2/0.mid")}

    local_path(uri, tmp_path)
    assert corrupted.read_bytes() == files["midi/pianist-0/1.mid"]
    assert lost.read_bytes() == files["midi/pianist-1/2.mid"]
    assert changed.read_bytes() == b"a new take"
    assert not deleted.exists() and not (lost.parent / ".2.mid.123.456.tmp").exists()
    after = stamps(folder)
    assert {k: after[k] for k in untouched} == untouched  # the intact files were not downloaded again


def test_single_objects_patterns_and_checksum_sidecars(env: S3Server, tmp_path: Path):  # env: the bucket's AWS_* set here (conftest)
    s3 = env
    good = b'{"text": "hello"}\n' * 50
    upload(s3, {"d/train.jsonl": good, "d/train.jsonl.sha256": f"{hashlib.sha256(good).hexdigest()}  train.jsonl\n".encode(),
                "d/val.jsonl": b'{"text": "bye"}\n', "d/notes.txt": b"x",
                "bad/w.bin": b"1234", "bad/w.bin.sha256": json.dumps({"sha256": "0" * 64}).encode()})
    one = local_path(f"s3://{s3.bucket}/d/train.jsonl", tmp_path)
    assert one.name == "train.jsonl" and one.read_bytes() == good
    matched = local_path(f"s3://{s3.bucket}/d/*.jsonl", tmp_path)
    assert sorted(p.name for p in matched.iterdir() if not p.name.startswith(".")) == ["train.jsonl", "val.jsonl"]
    # without the trailing slash, a key that is no object is the folder under it (sidecars are not data)
    assert list_location(f"s3://{s3.bucket}/d").files == 3
    assert list_location(f"s3://{s3.bucket}/d/train.jsonl").bytes == len(good)

    with pytest.raises(StorageError, match=r"does not match its checksum in bad/w.bin.sha256"):
        local_path(f"s3://{s3.bucket}/bad/w.bin", tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"no object at s3://{s3.bucket}/nope and none under .*upload the dataset"):
        list_location(f"s3://{s3.bucket}/nope")
