"""The three music stages through the real trainer entry point, on synthetic MIDI: a VQ-VAE, a style
encoder started from the VQ-VAE's best.pt, and a hybrid started from both (one of them from S3)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.fixtures.jobs import ROOT, run_trainer, sha256_of
from tests.fixtures.midi_gen import write_dataset
from trainer import contract

COMMON = {"seed": 1, "batch_size": 32, "schedule": {"warmup_steps": 10}, "checkpoint": {"every_steps": 50},
          "logging": {"progress_bar": False, "every_steps": 10}, "threads": 2}


def val_metric(stderr: str, name: str) -> list[float]:
    return [float(v) for v in re.findall(rf"val loss [^\n]*?\b{name} ([-\d.e+]+)", stderr)]


def val_losses(stderr: str) -> list[float]:
    return [float(v) for v in re.findall(r": val loss ([\d.]+)", stderr)]


def write_job(folder: Path, name: str, data: Path, cache: Path, **train) -> Path:
    doc = {"train": {**COMMON, "data": {"format": "midi", "train": str(data), "val_fraction": 0.25,
                                        "midi": {"window": 64, "cache_dir": str(cache)}}, **train}}
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    root = tmp_path_factory.mktemp("music")
    write_dataset(root / "data", seed=0, pieces=8, beats=128)
    return root


@pytest.fixture(scope="module")
def vqvae_run(music):
    job = write_job(music, "vqvae", music / "data", music / "cache", model={"recipe": "vqvae", "size": "tiny"},
                    max_steps=150, optimizer={"lr": 3e-3, "weight_decay": 0.0}, eval={"every_steps": 5, "batches": 4})
    result = run_trainer(job, str(music / "vq-run"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return music / "vq-run", result.stderr


@pytest.fixture(scope="module")
def style_run(music, vqvae_run):
    job = write_job(music, "style", music / "data", music / "cache",
                    model={"recipe": "style_encoder", "size": "tiny", "new_params_lr": 3e-3},
                    init_from={"vqvae": f"{vqvae_run[0]}/best"}, max_steps=80,
                    optimizer={"lr": 1e-3, "weight_decay": 0.0}, eval={"every_steps": 20, "batches": 4})
    result = run_trainer(job, str(music / "style-run"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return music / "style-run", result.stderr


def test_vqvae_reconstructs_and_uses_its_codebook(vqvae_run):
    run, stderr = vqvae_run
    recon, perplexity = val_metric(stderr, "recon_loss"), val_metric(stderr, "codebook_perplexity")
    assert len(recon) == 30 and len(perplexity) == 30
    assert recon[-1] <= 0.7 * recon[0], recon
    assert perplexity[-1] > 4, perplexity
    assert "skipped 4 MIDI file(s)" in stderr and "low_slow/garbage.mid" in stderr  # reported, not fatal
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / contract.TENSORBOARD_DIR))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for metric in ("recon_loss", "commitment_loss", "codebook_perplexity", "dead_codes"):
        assert {f"train/{metric}", f"val/{metric}"} <= tags


def test_style_encoder_tells_pianists_apart_from_the_vqvae_encoder(vqvae_run, style_run):
    run, stderr = style_run
    accuracy = val_metric(stderr, "pianist_accuracy")
    assert accuracy and accuracy[-1] >= 0.6, accuracy  # 4 pianists: chance is 0.25
    init = json.loads((run / contract.INIT_RECORD).read_text())
    assert init["vqvae"]["sha256"] == sha256_of(vqvae_run[0] / contract.BEST)
    assert "encoder initialised from the VQ-VAE" in stderr


def test_hybrid_learns_from_both_stages_one_of_them_in_s3(music, vqvae_run, style_run, s3_server):
    s3 = s3_server.create_bucket()
    client = s3.client()
    for name in ("best.pt", "best.pt.sha256"):
        client.upload_file(str(vqvae_run[0] / "checkpoints" / name), s3.bucket, f"runs/vq/checkpoints/{name}")
    job = write_job(music, "hybrid", music / "data", music / "cache",
                    model={"recipe": "hybrid", "size": "tiny", "new_params_lr": 3e-3},
                    init_from={"vqvae": f"s3://{s3.bucket}/runs/vq/best", "style_encoder": f"{style_run[0]}/best"},
                    max_steps=80, optimizer={"lr": 5e-6, "weight_decay": 0.0}, eval={"every_steps": 10, "batches": 4})
    env = {**s3.env(), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = run_trainer(job, str(music / "hybrid-run"), timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = val_losses(result.stderr)
    assert len(losses) == 8 and losses[-1] < 0.9 * losses[0], losses
    init = json.loads((music / "hybrid-run" / contract.INIT_RECORD).read_text())
    assert init["vqvae"] == {"uri": f"s3://{s3.bucket}/runs/vq/best", "sha256": sha256_of(vqvae_run[0] / contract.BEST),
                             "size": (vqvae_run[0] / contract.BEST).stat().st_size, "step": init["vqvae"]["step"]}
    assert init["style_encoder"]["sha256"] == sha256_of(style_run[0] / contract.BEST)


def _style_job(folder: Path, music: Path, init_uri: str, max_steps: int = 10) -> Path:
    return write_job(folder, "job", music / "data", music / "cache", model={"recipe": "style_encoder", "size": "tiny"},
                     init_from={"vqvae": init_uri}, max_steps=max_steps, checkpoint={"every_steps": 5},
                     eval={"every_steps": 5, "batches": 1})


@pytest.mark.parametrize("damage", ["missing", "checksum", "not_a_checkpoint"])
def test_an_unusable_init_file_fails_at_start_naming_it(music, vqvae_run, tmp_path, damage):
    src = vqvae_run[0] / contract.BEST
    target = tmp_path / "weights" / "best.pt"
    target.parent.mkdir()
    if damage == "checksum":
        shutil.copy(src, target)
        shutil.copy(str(src) + ".sha256", str(target) + ".sha256")
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "not_a_checkpoint":
        target.write_bytes(b"not a checkpoint at all")
    result = run_trainer(_style_job(tmp_path, music, str(target)), str(tmp_path / "run"))
    assert result.returncode == contract.EXIT_BAD_CONFIG, result.stderr[-3000:]
    assert f"train.init_from.vqvae: {target}" in result.stderr
    expected = {"missing": "no such file", "checksum": "torn or corrupt", "not_a_checkpoint": "not a checkpoint torch can load"}
    assert expected[damage] in result.stderr
    assert not (tmp_path / "run" / contract.INIT_RECORD).exists()


def test_a_resume_does_not_load_the_init_weights_again(music, vqvae_run, tmp_path):
    copy = tmp_path / "vq-best.pt"
    shutil.copy(vqvae_run[0] / contract.BEST, copy)
    run = tmp_path / "run"
    first = run_trainer(_style_job(tmp_path, music, str(copy), max_steps=10), str(run))
    assert first.returncode == 0, first.stderr[-3000:]
    record = (run / contract.INIT_RECORD).read_bytes()
    # The init file is gone and the run goes on for longer: it must continue from its own latest.pt.
    copy.unlink()
    (run / contract.STATUS).unlink()
    again = run_trainer(_style_job(tmp_path, music, str(copy), max_steps=15), str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoints/" in again.stderr and "init_from vqvae" not in again.stderr
    assert (run / contract.INIT_RECORD).read_bytes() == record
