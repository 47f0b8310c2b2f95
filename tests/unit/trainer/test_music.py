"""MIDI preparation on real generated files parsed by symusic, and the music models' shapes and losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures.midi_gen import PIANISTS, write_dataset
from trainer import midi_prep
from trainer.config import VQVAE, Hybrid, StyleEncoder
from trainer.init_weights import locate
from trainer.midi_prep import PrepSettings, prepare
from trainer.recipes.hybrid import HybridModel
from trainer.recipes.style_encoder import StyleNet, supcon_loss
from trainer.recipes.vqvae import VQVAEModel, recon_loss

SETTINGS = PrepSettings(window=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("midi")
    write_dataset(root, seed=3, pieces=3, beats=64)
    return root


def test_prep_is_deterministic_across_worker_counts(dataset, tmp_path, monkeypatch):
    serial = prepare(dataset, SETTINGS, tmp_path / "a", workers=1, progress=False)
    monkeypatch.setattr(midi_prep, "POOL_MIN_BYTES", 1)
    monkeypatch.setattr(midi_prep, "POOL_MIN_FILES", 1)  # the process pool, even for a handful of files
    pooled = prepare(dataset, SETTINGS, tmp_path / "b", workers=2, progress=False)
    assert serial.windows.shape == (len(PIANISTS) * 3 * 8, 88, 32)
    assert np.array_equal(serial.windows, pooled.windows) and np.array_equal(serial.file_index, pooled.file_index)


def test_a_relaunch_reads_the_cache_and_a_changed_file_does_not(dataset, tmp_path):
    first = prepare(dataset, SETTINGS, tmp_path, progress=False)
    again = prepare(dataset, SETTINGS, tmp_path, progress=False)
    assert not first.from_cache and again.from_cache and np.array_equal(first.windows, again.windows)
    other = prepare(dataset, PrepSettings(window=16), tmp_path, progress=False)
    assert not other.from_cache  # settings are part of the key
    changed = tmp_path / "copy"
    import shutil

    shutil.copytree(dataset, changed)
    (changed / PIANISTS[1].name / "0.mid").write_bytes((changed / PIANISTS[2].name / "0.mid").read_bytes())
    assert not prepare(changed, SETTINGS, tmp_path, progress=False).from_cache


def test_corrupt_and_empty_files_are_skipped_and_named(dataset, tmp_path):
    prep = prepare(dataset, SETTINGS, tmp_path, progress=False)
    skipped = dict(prep.skipped)
    first = PIANISTS[0].name
    assert set(skipped) == {f"{first}/garbage.mid", f"{first}/truncated.midi", f"{first}/empty.mid", f"{first}/silent.mid"}
    assert skipped[f"{first}/empty.mid"] == "empty file" and "no notes" in skipped[f"{first}/silent.mid"]


def test_the_pianist_is_the_first_folder_under_the_root(dataset, tmp_path):
    prep = prepare(dataset, SETTINGS, tmp_path, progress=False)
    assert prep.pianists == sorted(p.name for p in PIANISTS)
    labels = prep.window_labels()
    for i, name in enumerate(prep.pianists):
        files = {prep.files[f] for f in prep.file_index[labels == i].tolist()}
        assert files and all(f.startswith(name + "/") for f in files)
    # The pianists differ where the generator made them differ: register.
    low = prep.pianists.index("low_slow")
    high = prep.pianists.index("high_fast")
    mean_pitch = [np.nonzero(np.asarray(prep.windows[labels == c]).any(axis=(0, 2)))[0].mean() for c in (low, high)]
    assert mean_pitch[0] < mean_pitch[1]


def test_vqvae_shapes_and_losses():
    torch.manual_seed(0)
    model = VQVAEModel(VQVAE(recipe="vqvae"))
    roll = (torch.rand(4, 88, 64) > 0.97).float() * 0.6
    recon, vq_loss, perplexity = model(roll)
    assert recon.shape == roll.shape and vq_loss.ndim == 0 and 1.0 <= float(perplexity) <= 64
    assert model.encode(roll).shape == (4, 16)
    assert recon_loss(recon, roll).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recon, vq_loss, _ = model(roll)
    assert recon_loss(recon, roll).dtype == torch.float32 and vq_loss.dtype == torch.float32


def test_supcon_is_lower_for_embeddings_that_cluster_by_pianist():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    clustered = torch.nn.functional.normalize(torch.eye(3)[labels] + 0.01 * torch.randn(6, 3), dim=-1)
    mixed = torch.nn.functional.normalize(torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])], dim=-1)
    assert supcon_loss(clustered, labels, 0.1) < supcon_loss(mixed, labels, 0.1)
    net = StyleNet(StyleEncoder(recipe="style_encoder"), 3)
    z = net(torch.rand(6, 88, 64))
    assert z.shape == (6, 32) and torch.allclose(z.norm(dim=-1), torch.ones(6))


def test_hybrid_predicts_every_code_and_keeps_the_frozen_vqvae_in_its_state():
    model = HybridModel(Hybrid(recipe="hybrid"), 16)
    model.freeze_vqvae()
    logits, codes = model(torch.rand(2, 88, 64))
    assert logits.shape == (2, 16, 64) and codes.shape == (2, 16)
    trainable = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith(("encoder.", "quantizer.", "decoder.")) for n in trainable)
    assert "encoder.net.0.weight" in model.state_dict() and "style.encoder.net.0.weight" in trainable


def test_init_uris_resolve_to_a_run_file(tmp_path):
    job = tmp_path / "job.yaml"
    assert locate("s3://b/runs/x/best", job) == ("s3://b/runs/x", "checkpoints/best.pt")
    assert locate("s3://b/runs/x/latest", job) == ("s3://b/runs/x", "checkpoints/latest.pt")
    assert locate("s3://b/w/vq.pt", job) == ("s3://b/w", "vq.pt")
    assert locate("runs/x/checkpoints/best.pt", job) == (str(tmp_path / "runs/x/checkpoints"), "best.pt")
