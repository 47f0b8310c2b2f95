"""The ``train:`` section of a job file: a torch-free schema, so the runner validates a job
without importing torch, and the trainer validates it again at start.

Defaults follow the training guides this project grew from (see SEEDS.md in the design notes):
AdamW with weight decay, warmup then cosine, clip 1.0, loss computed in float32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from trainer import contract
from trainer.jobfile import JobFileError, LocatedYaml, load_yaml, register_tags, validation_problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _heads_divide(model: Any) -> Any:
    """A transformer's width is split evenly between its attention heads (TinyGPT, Hybrid)."""
    if model.n_embd % model.n_head:
        raise ValueError(f"n_embd ({model.n_embd}) must be a multiple of n_head ({model.n_head})")
    return model


# --- model recipes --------------------------------------------------------------------------------
class TinyGPT(_Section):
    """A small GPT built from a config (nanoGPT's shape): the quickstart model."""

    recipe: Literal["tiny_gpt"]
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(256, ge=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    bias: bool = True
    #: Vocabulary size; default: taken from the tokenizer (256 for ``bytes``).
    vocab_size: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _heads(self) -> TinyGPT:
        return _heads_divide(self)


class LoRA(_Section):
    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["c_attn", "c_proj"], min_length=1)


class CausalLMLoRA(_Section):
    """A Hugging Face causal LM (hub id or local path) wrapped with peft LoRA."""

    recipe: Literal["causal_lm_lora"]
    name_or_path: str = Field(min_length=1)
    lora: LoRA = Field(default_factory=LoRA)
    gradient_checkpointing: bool = False
    #: Passed to ``from_pretrained``; pin it for reproducible runs.
    revision: str | None = None


class CustomRecipe(_Section):
    """``recipe: "package.module:function"``: the user's own model, data and loss.

    The function is called as ``function(train_config, options)`` and returns a
    ``trainer.recipes.Recipe``."""

    recipe: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    options: dict[str, Any] = Field(default_factory=dict)


# --- music recipes: VQ-VAE → style encoder → hybrid, over piano-roll windows ----------------------
#: ``size:`` presets. ``tiny`` trains each stage on 2 CPU cores in about a minute on the synthetic
#: test data; ``full`` makes stage 1 about 10 hours on an RTX 3090 over MAESTRO v3 (the arithmetic is
#: in docs/music_sizes.md). A field given in the job file overrides its preset.
MUSIC_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"channels": 64, "res_blocks": 1, "downsample": 2, "code_dim": 32, "codebook_size": 64,
             "embed_dim": 32, "n_layer": 2, "n_head": 2, "n_embd": 64},
    "full": {"channels": 1024, "res_blocks": 4, "downsample": 2, "code_dim": 64, "codebook_size": 512,
             "embed_dim": 256, "n_layer": 8, "n_head": 8, "n_embd": 512},
}


class MusicRecipe(_Section):
    """What the three music recipes share: the piano-roll encoder's shape, which must be the same in
    every stage for one stage's weights to initialise the next (same ``size`` and overrides)."""

    size: Literal["tiny", "full"] = "tiny"
    #: Width of the convolutional encoder/decoder over time (the 88 pitches are its input channels).
    channels: int = Field(ge=8)
    res_blocks: int = Field(ge=0)
    #: Stride-2 stages: one code per ``2**downsample`` frames.
    downsample: int = Field(ge=0, le=6)
    code_dim: int = Field(ge=2)

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        preset = MUSIC_SIZES.get(value.get("size", "tiny"), {})
        return {**{k: v for k, v in preset.items() if k in cls.model_fields}, **value}


class VQVAE(MusicRecipe):
    """Stage 1: piano-roll conv encoder/decoder with a vector-quantised codebook (EMA updates,
    commitment loss, dead-code restart). Loss = reconstruction + commitment."""

    recipe: Literal["vqvae"]
    codebook_size: int = Field(ge=2)
    commitment: float = Field(0.25, ge=0)
    ema_decay: float = Field(0.99, gt=0, lt=1)
    #: A code whose running usage (codes per batch, averaged) falls below this is dead: counted, and
    #: with ``restart_dead_codes`` moved onto a random encoder output of the batch.
    dead_code_threshold: float = Field(0.5, ge=0)
    restart_dead_codes: bool = True


class StyleEncoder(MusicRecipe):
    """Stage 2: a window → a style embedding (the VQ-VAE's encoder, pooled, projected), trained with
    a supervised contrastive loss so windows of one pianist are closer than of different ones."""

    recipe: Literal["style_encoder"]
    embed_dim: int = Field(ge=2)
    temperature: float = Field(0.1, gt=0)
    #: Learning rate of the layers that ``init_from`` does not provide (the projection head); default:
    #: the optimizer's. The schedule scales it like the rest.
    new_params_lr: float | None = Field(None, gt=0)


class Hybrid(MusicRecipe):
    """Stage 3: an autoregressive transformer over the VQ-VAE's codes, conditioned on the style
    embedding; the VQ-VAE and the style encoder come from ``init_from``."""

    recipe: Literal["hybrid"]
    codebook_size: int = Field(ge=2)
    embed_dim: int = Field(ge=2)
    n_layer: int = Field(ge=1)
    n_head: int = Field(ge=1)
    n_embd: int = Field(ge=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    #: Learning rate of the newly initialised transformer; default: the optimizer's. Loaded weights
    #: fine-tune at the optimizer's (small) rate, new layers need a learning one.
    new_params_lr: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _heads(self) -> Hybrid:
        return _heads_divide(self)


MUSIC_RECIPES = ("vqvae", "style_encoder", "hybrid")
#: The ``train.init_from`` names each recipe takes: the earlier stages whose weights it starts from.
INIT_NAMES: dict[str, tuple[str, ...]] = {"vqvae": (), "style_encoder": ("vqvae",), "hybrid": ("vqvae", "style_encoder")}


def _recipe_tag(value: Any) -> str | None:
    recipe = value.get("recipe") if isinstance(value, dict) else getattr(value, "recipe", None)
    if recipe in ("tiny_gpt", "causal_lm_lora", *MUSIC_RECIPES):
        return recipe
    if isinstance(recipe, str) and ":" in recipe:
        return "custom"
    return None


ModelConfig = Annotated[
    Annotated[TinyGPT, Tag("tiny_gpt")] | Annotated[CausalLMLoRA, Tag("causal_lm_lora")]
    | Annotated[VQVAE, Tag("vqvae")] | Annotated[StyleEncoder, Tag("style_encoder")] | Annotated[Hybrid, Tag("hybrid")]
    | Annotated[CustomRecipe, Tag("custom")],
    Discriminator(
        _recipe_tag,
        custom_error_type="recipe",
        custom_error_message="model.recipe must be 'tiny_gpt', 'causal_lm_lora', 'vqvae', 'style_encoder', 'hybrid' "
                             "or 'package.module:function'",
    ),
]
register_tags({"tiny_gpt": TinyGPT, "causal_lm_lora": CausalLMLoRA, "vqvae": VQVAE, "style_encoder": StyleEncoder,
               "hybrid": Hybrid, "custom": CustomRecipe})


# --- data -----------------------------------------------------------------------------------------
class MidiWindows(_Section):
    """How ``format: midi`` cuts MIDI files into piano-roll windows (see trainer/midi_prep.py)."""

    #: Time resolution: frames per beat (quarter note); 4 is a sixteenth-note grid.
    frames_per_beat: int = Field(4, ge=1, le=96)
    #: Frames per window (a multiple of 2**downsample of the model).
    window: int = Field(64, ge=4)
    #: Frames between window starts; default: the window (no overlap).
    hop: int | None = Field(None, ge=1)
    #: Windows in which fewer notes start are dropped.
    min_notes: int = Field(1, ge=0)
    #: Where prepared windows are cached; default: $XDG_CACHE_HOME/spot-runner/midi or the temp dir.
    cache_dir: str | None = None
    #: Processes that parse files; default: every core.
    workers: int | None = Field(None, ge=1)


class Data(_Section):
    """Where the examples come from. Relative paths are relative to the job file."""

    #: ``tokens``: uint16 token shards (``.bin`` as nanoGPT writes them, or ``.npy``);
    #: ``text``: plain text, tokenized and cut into windows; ``jsonl``: one example per line;
    #: ``midi``: a folder of .mid/.midi files (searched recursively) cut into piano-roll windows,
    #: labelled by the first folder under it (``<train>/<pianist>/.../*.mid``).
    format: Literal["tokens", "text", "jsonl", "midi"]
    train: str | list[str] = Field(min_length=1)
    val: str | list[str] | None = None
    #: With no ``val``, hold out this fraction of the training data (the tail, so it never leaks).
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    #: Tokens per example: the window for ``tokens``/``text``, the cut-off for ``jsonl``.
    block_size: int = Field(256, ge=2)
    #: ``bytes`` (256 symbols, no files needed) or a Hugging Face tokenizer id or local path.
    #: Default: ``bytes`` for tiny_gpt, the model's own tokenizer for causal_lm_lora.
    tokenizer: str | None = None
    text_field: str = "text"
    vocab_size: int | None = Field(None, ge=2, description="for tokens: the tokenizer's vocabulary size")
    #: For ``format: midi``: how windows are cut.
    midi: MidiWindows | None = None

    @model_validator(mode="after")
    def _midi(self) -> Data:
        if self.format == "midi":
            if not isinstance(self.train, str) or (self.val is not None and not isinstance(self.val, str)):
                raise ValueError("format midi: train (and val) must each be one folder of MIDI files")
            if self.midi is None:
                object.__setattr__(self, "midi", MidiWindows())  # frozen model: the defaults, filled in once
        elif self.midi is not None:
            raise ValueError(f"data.midi applies to format: midi only (this data is format: {self.format})")
        return self


# --- optimisation ---------------------------------------------------------------------------------
class Optimizer(_Section):
    #: ``adamw8bit`` uses bitsandbytes on CUDA; without CUDA the trainer says so and uses AdamW.
    name: Literal["adamw", "adamw8bit"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)

    @model_validator(mode="after")
    def _betas(self) -> Optimizer:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must each be in [0, 1), got {list(self.betas)}")
        return self


class Schedule(_Section):
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr`` at the last step."""

    warmup_steps: int = Field(100, ge=0)
    decay: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)


class EMA(_Section):
    decay: float = Field(0.999, gt=0, lt=1)


class Eval(_Section):
    every_steps: int = Field(100, ge=1)
    #: Batches of the validation set per evaluation (the same batches every time).
    batches: int = Field(20, ge=1)
    #: Stop after this many evaluations without improving val loss by ``min_delta``. Off when unset.
    early_stop_patience: int | None = Field(None, ge=1)
    min_delta: float = Field(0.0, ge=0)


#: ``every_minutes: auto``: the runner computes the interval for each launch (from the measured cost of
#: a checkpoint and the preemption rate seen on the GPU) and passes it in this variable, in minutes.
ENV_AUTO_MINUTES = contract.ENV_CHECKPOINT_EVERY_MINUTES
#: ``auto`` when nothing passed an interval (the trainer started by hand).
AUTO_FALLBACK_MINUTES = 10.0


class Checkpoint(_Section):
    """A checkpoint is written every ``every_steps`` steps or every ``every_minutes``, whichever first.

    ``every_minutes: auto`` stays ``auto`` in the parsed file and is resolved where the trainer runs
    (:meth:`minutes`): the interval the runner passed in ``RUNNER_CHECKPOINT_EVERY_MINUTES``, else
    10 minutes."""

    every_steps: int | None = Field(1000, ge=1)
    every_minutes: float | Literal["auto"] | None = Field(10.0)
    #: History checkpoints kept besides latest.pt and best.pt. At least 2: with one, a torn write of
    #: that one leaves nothing to fall back to.
    keep_last: int = Field(3, ge=2)

    @field_validator("every_minutes", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any) -> Any:
        if value is None or value == "auto":
            return value
        try:
            minutes = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number of minutes or auto, got {value!r}") from None
        if not minutes > 0:
            raise ValueError(f"expected a number of minutes greater than 0, or auto; got {value!r}")
        return minutes

    def minutes(self, environ: dict[str, str] | None = None) -> float | None:
        """The time interval in force here: the file's number, or for ``auto`` the one the runner passed
        (else :data:`AUTO_FALLBACK_MINUTES`). Raises ValueError for a passed value that is no interval."""
        if self.every_minutes != "auto":
            return self.every_minutes
        passed = (os.environ if environ is None else environ).get(ENV_AUTO_MINUTES, "").strip()
        if not passed:
            return AUTO_FALLBACK_MINUTES
        try:
            minutes = float(passed)
        except ValueError:
            minutes = -1.0
        if not minutes > 0:
            raise ValueError(f"every_minutes is auto and {ENV_AUTO_MINUTES}={passed!r} is not a number of minutes > 0")
        return minutes


class Guard(_Section):
    #: Skip a step whose loss or gradients are not finite; stop the run after this many in a row.
    #: With fp16, gradient overflows while the grad scaler lowers its scale are skipped without
    #: counting, until the scale falls below 1.
    max_nonfinite_in_a_row: int = Field(5, ge=1)
    #: Log a warning when the gradient norm (before clipping) exceeds this.
    warn_grad_norm: float = Field(100.0, gt=0)
    #: Stop the run when the gradient norm (before clipping) is above this for ``stop_grad_norm_in_a_row``
    #: steps in a row: the last of them is not applied, the state from before the first of them (the
    #: last good state) is written as an emergency checkpoint and the trainer exits ``EXIT_GRAD_NORM``.
    #: The seeds' rule ("stop on norms over ~100"); ``null`` turns it off.
    stop_grad_norm: float | None = Field(100.0, gt=0)
    #: One step above ``stop_grad_norm`` alone is clipped (``grad_clip``) and warned about: a lone spike
    #: a run recovers from (the quickstart has one of 115 at its peak learning rate) is not divergence.
    stop_grad_norm_in_a_row: int = Field(3, ge=1)


class Loader(_Section):
    """How training batches are made, for every recipe (a custom one too). With ``workers`` above 0,
    PyTorch DataLoader processes collate the next batches while the GPU trains on this one, in the
    same order (a resumed run sees the same batches)."""

    #: Processes that collate batches ahead; 0 collates each batch in the training process when needed.
    workers: int = Field(0, ge=0, le=64)
    #: Page-locked batches, copied to the GPU without blocking the step (CUDA only; ignored on CPU).
    pin_memory: bool = False
    #: Batches each worker keeps ready.
    prefetch: int = Field(2, ge=1, le=64)


class Logging(_Section):
    every_steps: int = Field(10, ge=1)
    #: status.json is rewritten this often while training (the runner's liveness signal).
    heartbeat_seconds: float = Field(10.0, gt=0)
    #: TensorBoard events and the trainer log are copied to the run URI this often.
    sync_seconds: float = Field(30.0, gt=0)
    progress_bar: bool = True


class Samples(_Section):
    """What the finished model writes under ``samples/``: text for the language models (``tiny_gpt``,
    ``causal_lm_lora``), ``.mid`` files for the music recipes (the VQ-VAE's reconstructions of held-out
    windows beside the originals; the hybrid's new windows in the style of held-out ones). Seeded: a
    relaunch writes the same samples. ``samples: 0`` (or ``false``) writes none."""

    count: int = Field(3, ge=0, le=100)
    #: Text: tokens generated after each prompt.
    max_new_tokens: int = Field(200, ge=1, le=100_000)
    #: Text: the prompts; default: the first ``prompt_tokens`` of ``count`` validation examples.
    prompts: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    prompt_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.8, gt=0)
    #: Sample among the ``top_k`` likeliest tokens (or codes) only; null: among all.
    top_k: int | None = Field(50, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _count_only(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {"count": 3 if value else 0}
        if isinstance(value, int):
            return {"count": value}
        return value


class Finish(_Section):
    """What the trainer does after the last step, before the run is ``done`` (``trainer/finish.py``).
    A relaunch during it finishes without training again."""

    #: What ``final/`` holds: the weights with the best validation loss (``checkpoints/best.pt``; the
    #: last step's when the job has no validation data), or the last step's.
    final: Literal["best", "last"] = "best"
    #: LoRA: the adapter merged into the base model, a standalone folder ``final/merged`` that loads
    #: with ``transformers`` alone (``AutoModelForCausalLM.from_pretrained``).
    merge: bool = True
    samples: Samples = Field(default_factory=Samples)
    #: ``report.json`` and ``report.md``: validation loss, perplexity and token accuracy of the best and
    #: the last weights (and of the base model, for LoRA), steps, hours, dollars, preemptions survived.
    report: bool = True


class TrainConfig(_Section):
    """Everything under ``train:``."""

    seed: int = 1337
    model: ModelConfig
    data: Data | None = None
    #: Examples per micro-batch on each process.
    batch_size: int = Field(8, ge=1)
    #: Or fix the examples per optimizer step over all processes: the per-process batch then follows
    #: from the number of GPUs (global = batch_size x processes x grad_accum).
    global_batch_size: int | None = Field(None, ge=1)
    grad_accum: int = Field(1, ge=1)
    #: Length of the run in optimizer steps; or give ``epochs`` and it follows from the data.
    max_steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    optimizer: Optimizer = Field(default_factory=Optimizer)
    schedule: Schedule = Field(default_factory=Schedule)
    grad_clip: float | None = Field(1.0, gt=0)
    #: ``bf16``/``fp16``: autocast, weights and loss stay float32. ``fp16`` adds a grad scaler (its state is
    #: checkpointed); it runs on CPU too, but CPU fp16 matmuls are slow: prefer bf16 there.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    ema: EMA | None = None
    eval: Eval = Field(default_factory=Eval)
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    guard: Guard = Field(default_factory=Guard)
    loader: Loader = Field(default_factory=Loader)
    logging: Logging = Field(default_factory=Logging)
    finish: Finish = Field(default_factory=Finish)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: CPU threads for torch; fixed by default so a run is reproducible on the same machine.
    threads: int | None = Field(None, ge=1)
    #: Weights to start from, loaded at a run's first start only (a resume continues from its own
    #: checkpoints): ``name: URI`` where URI is a checkpoint file (local path, relative to the job file,
    #: or ``s3://bucket/key.pt``) or a run URI ending in ``/best`` or ``/latest``. The names a recipe
    #: takes: ``style_encoder``: vqvae; ``hybrid``: vqvae, style_encoder.
    init_from: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _length_and_data(self) -> TrainConfig:
        if self.global_batch_size is not None and "batch_size" in self.model_fields_set:
            raise ValueError("give batch_size or global_batch_size, not both")
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_steps or epochs")
        if not isinstance(self.model, CustomRecipe) and self.data is None:
            raise ValueError(f"recipe {self.model.recipe!r} needs a `data:` section")
        tokens_for_gpt = self.data and self.data.format == "tokens" and isinstance(self.model, TinyGPT)
        if tokens_for_gpt and self.model.vocab_size is None and self.data.vocab_size is None:
            raise ValueError("token shards need the vocabulary size: set data.vocab_size or model.vocab_size")
        if self.checkpoint.every_steps is None and self.checkpoint.every_minutes is None:
            raise ValueError("checkpoint needs every_steps, every_minutes or both")
        recipe = self.model.recipe
        music = recipe in MUSIC_RECIPES
        if self.data is not None and music != (self.data.format == "midi"):
            raise ValueError(f"recipe {recipe!r} needs data format midi" if music
                             else f"data format midi is for the music recipes ({', '.join(MUSIC_RECIPES)}), not {recipe!r}")
        takes = INIT_NAMES.get(recipe)
        if takes is None and len(self.init_from) > 1:  # the other recipes start from one earlier run of themselves
            raise ValueError(f"init_from: recipe {recipe!r} starts from one checkpoint of the same model; "
                             f"got {len(self.init_from)} ({', '.join(self.init_from)})")
        for name, uri in self.init_from.items():
            if takes is not None and name not in takes:
                raise ValueError(f"init_from.{name}: recipe {recipe!r} takes "
                                 + (f"init_from names {', '.join(takes)}" if takes else "no init_from"))
            if not uri.strip():
                raise ValueError(f"init_from.{name}: empty URI; give a checkpoint file or a run URI ending in /best or /latest")
        return self


def parse_train(raw: Any, doc: LocatedYaml, prefix: tuple[str, ...] = ("train",)) -> TrainConfig:
    """Validate a ``train:`` mapping, raising :class:`JobFileError` with file and line on failure."""
    if not isinstance(raw, dict):
        raise JobFileError(doc.path, [f"{doc.where(prefix)}: {'.'.join(prefix)}: expected a mapping of training settings"])
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise JobFileError(doc.path, validation_problems(e, doc, prefix, TrainConfig)) from None


def load_train_config(path: str | Path, environ: Mapping[str, str] | None = None) -> tuple[TrainConfig, LocatedYaml]:
    """Read a job file and validate the ``train:`` section this process runs: the file's own, or with
    ``RUNNER_STAGE`` set, that pipeline stage's. ``${NAME}`` job variables take their values from the
    environment the runner passed (the file's ``envs:`` defaults otherwise). The rest of the file
    belongs to the runner."""
    from trainer import jobvars

    environ = os.environ if environ is None else environ
    doc = load_yaml(path)
    doc = jobvars.resolve(doc, {n: environ.get(n, d) for n, d in jobvars.declared(doc).items()})
    stage = environ.get(contract.ENV_STAGE)
    prefix = ("stages", stage, "train") if stage else ("train",)
    section: Any = doc.data
    for key in prefix:
        section = section.get(key) if isinstance(section, dict) else None
    if section is None:
        what = f"no stage {stage!r} with a `train:` section under stages:" if stage else "no `train:` section"
        raise JobFileError(path, [f"{path}: the job file has {what}"])
    train = parse_train(section, doc, prefix)
    given = environ.get(contract.ENV_INIT_FROM)
    if given:  # a pipeline stage: the runner resolved its init_from to the earlier stages' best.pt
        try:
            inputs = {**train.init_from, **json.loads(given)}
            train = TrainConfig.model_validate({**train.model_dump(exclude_unset=True), "init_from": inputs})
        except (ValueError, ValidationError) as e:
            raise JobFileError(path, [f"{path}: {'.'.join(prefix)}.init_from: {e}"]) from None
    return train, doc


def resolve_path(job_path: str | Path, value: str) -> str:
    """A data path from the job file: absolute, ``s3://``, or relative to the job file's folder."""
    if "://" in value or Path(value).is_absolute():
        return value
    return str(Path(job_path).resolve().parent / value)
