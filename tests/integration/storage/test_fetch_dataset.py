"""``python -m trainer fetch-dataset``: a MIDI archive served from 127.0.0.1 lands in the test S3
server, MIDI files only, in the dataset's own layout; running it again uploads nothing."""

from __future__ import annotations

import functools
import io
import subprocess
import sys
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mido
import pytest

from tests.fixtures.jobs import ROOT, trainer_env
from tests.fixtures.s3 import S3Server


def midi_bytes(pitch: int, notes: int) -> bytes:
    track = mido.MidiTrack()
    for i in range(notes):
        track.append(mido.Message("note_on", note=pitch + i % 12, velocity=64 + i % 32, time=0 if i == 0 else 120))
        track.append(mido.Message("note_off", note=pitch + i % 12, velocity=0, time=240))
    out = io.BytesIO()
    mido.MidiFile(tracks=[track]).save(file=out)
    return out.getvalue()


@pytest.fixture
def archive_server(tmp_path: Path):
    """A zip like MAESTRO's (one top folder, year folders, .midi files, a CSV beside them) on loopback."""
    files = {f"maestro-v3.0.0/{year}/take-{n}.midi": midi_bytes(48 + n, 20 + n) for year in (2004, 2006) for n in range(3)}
    files["maestro-v3.0.0/2004/extra.MID"] = midi_bytes(60, 5)
    with zipfile.ZipFile(tmp_path / "maestro.zip", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("maestro-v3.0.0/maestro-v3.0.0.csv", "canonical_composer,midi_filename\n")
        zf.writestr("__MACOSX/maestro-v3.0.0/._take-0.midi", b"junk")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/maestro.zip", files
    finally:
        server.shutdown()
        server.server_close()


def fetch(s3: S3Server, *args: str) -> subprocess.CompletedProcess:
    env = trainer_env(**{k: v for k, v in s3.env().items() if k.startswith("AWS_")})
    return subprocess.run([sys.executable, "-m", "trainer", "fetch-dataset", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_fetch_dataset_uploads_the_midi_files_and_skips_them_the_second_time(s3_bucket: S3Server, archive_server):
    url, files = archive_server
    to = f"s3://{s3_bucket.bucket}/datasets/maestro/"
    done = fetch(s3_bucket, "maestro", "--to", to, "--url", url)
    assert done.returncode == 0, done.stderr
    assert f"maestro: 7 MIDI files uploaded ({sum(map(len, files.values())):,} bytes), 0 already in {to}" in done.stdout
    client = s3_bucket.client()
    listed = client.list_objects_v2(Bucket=s3_bucket.bucket, Prefix="datasets/maestro/")["Contents"]
    got = {o["Key"]: client.get_object(Bucket=s3_bucket.bucket, Key=o["Key"])["Body"].read() for o in listed}
    assert got == {f"datasets/maestro/{k.split('/', 1)[1]}": v for k, v in files.items()}

    again = fetch(s3_bucket, "maestro", "--to", to, "--url", url)
    assert again.returncode == 0, again.stderr
    assert "0 MIDI files uploaded (0 bytes), 7 already in" in again.stdout


def test_pijama_needs_a_url_and_a_bad_destination_is_refused(s3_bucket: S3Server):
    done = fetch(s3_bucket, "pijama", "--to", f"s3://{s3_bucket.bucket}/pijama/")
    assert done.returncode == 2
    assert "no public archive URL" in done.stderr and "--url" in done.stderr
    done = fetch(s3_bucket, "maestro", "--to", "/tmp/somewhere")
    assert done.returncode == 2 and "expected s3://BUCKET/PREFIX/" in done.stderr
