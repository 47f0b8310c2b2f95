"""Model + data + loss builders. A recipe turns the ``train:`` section into a :class:`Recipe`;
the loop knows nothing else about the model.

Built in: ``tiny_gpt`` (the quickstart) and ``causal_lm_lora`` (a Hugging Face causal LM with a
peft LoRA adapter). ``"package.module:function"`` names a user's own builder, called as
``function(train_config, options)`` and returning a :class:`Recipe`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from trainer.config import CausalLMLoRA, CustomRecipe, TinyGPT, TrainConfig


class LossOutput(NamedTuple):
    """What a forward pass returns. ``logits``/``targets`` (aligned, -100 = ignore) feed the
    perplexity and token-accuracy metrics; leave them None when they make no sense."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None


@dataclass
class Recipe:
    model: nn.Module
    train_set: Sequence[Any]
    val_set: Sequence[Any] | None
    #: Turns a list of dataset items into a batch (anything ``forward`` accepts; tensors are moved to the device).
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]
    #: ``forward(model, batch) -> LossOutput``; the loss should be computed in float32.
    forward: Callable[[nn.Module, dict[str, torch.Tensor]], LossOutput]
    #: Writes the finished weights into a folder (``final/`` under the run URI).
    save_final: Callable[[nn.Module, Path], None]


def build_recipe(cfg: TrainConfig, job_path: str | Path) -> Recipe:
    """The :class:`Recipe` that ``cfg.model`` names; data paths are relative to ``job_path``."""
    model_cfg = cfg.model
    if isinstance(model_cfg, TinyGPT):
        from trainer.recipes.tiny_gpt import build
    elif isinstance(model_cfg, CausalLMLoRA):
        from trainer.recipes.causal_lm_lora import build
    else:
        assert isinstance(model_cfg, CustomRecipe)
        return _custom(model_cfg, cfg, job_path)
    return build(cfg, job_path)


def _custom(model_cfg: CustomRecipe, cfg: TrainConfig, job_path: str | Path) -> Recipe:
    module_name, func_name = model_cfg.recipe.split(":")
    # A module beside the job file is found too (it travels with the job into the container);
    # appended, so it never shadows an installed package of the same name.
    job_dir = str(Path(job_path).resolve().parent)
    if job_dir not in sys.path:
        sys.path.append(job_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise  # the user's module was found but imports something missing: show the real error
        raise ValueError(
            f"recipe {model_cfg.recipe!r}: no module named {e.name!r}; put it beside the job file "
            f"({job_dir}), install it, or add its folder to PYTHONPATH"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(
            f"recipe {model_cfg.recipe!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
            f"has no function {func_name!r}"
        )
    recipe = func(cfg, dict(model_cfg.options))
    if not isinstance(recipe, Recipe):
        raise TypeError(
            f"recipe {model_cfg.recipe!r} returned {type(recipe).__name__}; it must return trainer.recipes.Recipe"
        )
    return recipe


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> LossOutput:
    """Cross-entropy over aligned logits/targets, in float32 whatever the autocast dtype."""
    loss = nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
    )
    return LossOutput(loss, logits, targets)


def check_vocab(ids: torch.Tensor, vocab_size: int) -> None:
    """Fail with a clear message on a token id the model has no embedding for (the embedding's own
    error, "index out of range in self", does not say which setting is wrong). One max per batch."""
    top = int(ids.max()) if ids.numel() else -1
    if top >= vocab_size:
        raise ValueError(
            f"the data holds token id {top}, but the model's vocabulary has {vocab_size} entries: set the "
            f"vocabulary size to the tokenizer's that made the data (data.vocab_size or model.vocab_size; "
            f"50257 for GPT-2 tokens), or use the model's own tokenizer"
        )
