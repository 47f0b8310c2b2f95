"""Model + data + loss builders. A recipe turns the ``train:`` section into a :class:`Recipe`;
the loop knows nothing else about the model.

Built in: ``tiny_gpt`` (the quickstart), ``causal_lm_lora`` (a Hugging Face causal LM with a
peft LoRA adapter) and the three music stages ``vqvae``, ``style_encoder`` and ``hybrid`` (which
take the ``init_from`` weights of the stages before them). ``"package.module:function"`` names a
user's own builder, called as ``function(train_config, options)`` and returning a :class:`Recipe`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

from trainer.config import VQVAE, CausalLMLoRA, CustomRecipe, Hybrid, StyleEncoder, TinyGPT, TrainConfig
from trainer.recipes.base import LossOutput, Recipe, check_vocab, token_loss

__all__ = ["LossOutput", "Recipe", "build_recipe", "check_vocab", "token_loss"]


def build_recipe(cfg: TrainConfig, job_path: str | Path,
                 init: dict[str, dict[str, torch.Tensor]] | None = None) -> Recipe:
    """The :class:`Recipe` that ``cfg.model`` names; data paths are relative to ``job_path``.
    ``init``: the ``init_from`` model states by name, at a run's first start (empty on a resume)."""
    model_cfg = cfg.model
    music = {VQVAE: "vqvae", StyleEncoder: "style_encoder", Hybrid: "hybrid"}.get(type(model_cfg))
    if music is not None:
        module = importlib.import_module(f"trainer.recipes.{music}")
        return module.build(cfg, job_path, init or {})
    if isinstance(model_cfg, TinyGPT):
        from trainer.recipes.tiny_gpt import build
    elif isinstance(model_cfg, CausalLMLoRA):
        from trainer.recipes.causal_lm_lora import build
    else:
        assert isinstance(model_cfg, CustomRecipe)
        return _starting_from(_custom(model_cfg, cfg, job_path), init)
    return _starting_from(build(cfg, job_path), init)


def _starting_from(recipe: Recipe, init: dict[str, dict[str, torch.Tensor]] | None) -> Recipe:
    """A recipe without named inputs starts from one earlier checkpoint of the same model, all of it."""
    for name, state in (init or {}).items():
        try:
            recipe.model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(f"train.init_from.{name}: its weights do not fit this model ({first}); start from a "
                             f"checkpoint of a run with the same model settings") from None
    return recipe


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
