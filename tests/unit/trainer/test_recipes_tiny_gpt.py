"""tiny_gpt on token shards: the vocabulary comes from the job, and data that does not fit it is
reported as a setting to fix, not as an index error deep in the embedding."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.config import TrainConfig
from trainer.recipes import build_recipe


def job(tmp_path, vocab: int) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": {"recipe": "tiny_gpt", "n_layer": 1, "n_head": 2, "n_embd": 16},
        "data": {"format": "tokens", "train": "train.bin", "vocab_size": vocab, "block_size": 8, "val_fraction": 0},
        "max_steps": 1,
    })


def test_token_shards_train_with_the_configured_vocabulary(tmp_path):
    np.arange(40, dtype=np.uint16).tofile(tmp_path / "train.bin")
    recipe = build_recipe(job(tmp_path, vocab=40), tmp_path / "job.yaml")
    assert recipe.model.wte.num_embeddings == 40
    batch = recipe.collate([recipe.train_set[0], recipe.train_set[1]])
    out = recipe.forward(recipe.model, batch)
    assert out.loss.isfinite() and out.logits.shape == (2, 8, 40)


def test_a_token_outside_the_vocabulary_names_the_setting(tmp_path):
    np.array([1, 2, 3, 50256, 4, 5, 6, 7, 8, 9], dtype=np.uint16).tofile(tmp_path / "train.bin")
    recipe = build_recipe(job(tmp_path, vocab=256), tmp_path / "job.yaml")
    with pytest.raises(ValueError, match=r"token id 50256, but the model's vocabulary has 256 entries: .*data\.vocab_size"):
        recipe.collate([recipe.train_set[0]])
