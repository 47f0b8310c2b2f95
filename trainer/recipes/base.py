"""What every recipe is made of, apart from which recipe it is: the :class:`Recipe` the loop runs,
what a forward pass returns, and the helpers the built-in recipes share. Builders import from here,
:mod:`trainer.recipes` picks the builder (so neither imports the other)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from trainer.config import Samples


class LossOutput(NamedTuple):
    """What a forward pass returns. ``logits``/``targets`` (aligned, -100 = ignore) feed the
    perplexity and token-accuracy metrics; leave them None when they make no sense."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    #: More numbers to log (scalars): ``train/<name>`` at each logging step, ``val/<name>`` averaged
    #: over the validation batches (a VQ-VAE's codebook perplexity, a style encoder's accuracy).
    metrics: dict[str, torch.Tensor | float] | None = None


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
    #: Learning-rate multipliers by parameter name (default 1): newly initialised layers can learn
    #: faster than the loaded weights around them. The schedule scales every group alike.
    lr_scale: dict[str, float] = field(default_factory=dict)
    #: After training (``trainer.finish``): writes samples of the finished model into a folder
    #: (``samples/`` under the run URI) and returns the files written; None: the recipe makes none.
    sample: Callable[[nn.Module, Path, Samples], list[Path]] | None = None
    #: Writes the model as one standalone folder (LoRA: the adapter merged into the base model), into
    #: ``final/merged``. It may change the model in place: it is the last thing done with it.
    merge: Callable[[nn.Module, Path], None] | None = None
    #: The model as it was before this run trained it, for the report to compare (LoRA: the adapter
    #: switched off): a context manager taking the model.
    base_model: Callable[[nn.Module], AbstractContextManager[Any]] | None = None


def save_weights(m: nn.Module, folder: Path, config: dict[str, Any], leave_out: str | None = None) -> None:
    """The finished weights as ``model.safetensors`` (on CPU, contiguous; without the tensor named
    ``leave_out``, a tied one) beside the ``config.json`` that rebuilds the model."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items() if k != leave_out}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))


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
