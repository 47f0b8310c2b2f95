"""Will the job fit in the chosen GPU's memory? Estimated before launch, without torch, from the
job's own settings: the model's parameters (counted from its shape, as the trainer builds it),
their gradients, the optimizer's state (AdamW: two float32 moments; 8-bit Adam: two bytes), the EMA
copy, buffers (frozen parts, codebooks) and the activations a training step keeps for its backward
pass at the job's per-GPU batch and precision. A job that cannot fit is refused at submit with the
numbers and what to change, before a pod is paid for.

The activation figures are rough (the standard transformer count of Korthikanti et al., 2022, and
two saved tensors per convolution); the parameter counts are exact for the built-in recipes
(tests/unit/runner/test_memory.py builds each model and compares). A custom recipe's model is
unknown until it is built: ``submit --smoke`` measures it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 2**30
#: What the CUDA context and the caching allocator take beyond the tensors (a rough constant).
CUDA_OVERHEAD_BYTES = int(0.75 * GIB)
#: Allocator fragmentation and tensors this count leaves out, as a share of the tensors.
SLACK = 0.10
N_PITCHES = 88  # the piano roll's height (trainer.midi_prep.N_PITCHES; the runner does not import it)
#: GPT-2's released sizes, for a LoRA job that names one by hub id before it was ever downloaded here.
GPT2_SIZES = {"gpt2": (12, 768), "gpt2-medium": (24, 1024), "gpt2-large": (36, 1280), "gpt2-xl": (48, 1600),
              "distilgpt2": (6, 768)}


class MemoryFitError(ValueError):
    """The job cannot fit in a GPU it may run on: the message has the numbers and what to change."""


@dataclass
class MemoryEstimate:
    params: int  # every parameter the model holds
    trainable: int
    buffers: int  # elements kept on the GPU that are not parameters (frozen parts, codebooks)
    batch_size: int  # examples per micro-batch on each GPU
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    ema_bytes: int
    activations_bytes: int
    optimizer: str
    notes: list[str] = field(default_factory=list)

    @property
    def tensors_bytes(self) -> int:
        return (self.weights_bytes + self.grads_bytes + self.optimizer_bytes + self.ema_bytes
                + self.activations_bytes)

    @property
    def total_bytes(self) -> int:
        return int(self.tensors_bytes * (1 + SLACK)) + CUDA_OVERHEAD_BYTES

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "trainable_params": self.trainable, "batch_size": self.batch_size,
                "optimizer": self.optimizer, "weights_bytes": self.weights_bytes, "grads_bytes": self.grads_bytes,
                "optimizer_bytes": self.optimizer_bytes, "ema_bytes": self.ema_bytes,
                "activations_bytes": self.activations_bytes, "total_bytes": self.total_bytes, "notes": self.notes}

    def breakdown(self) -> str:
        parts = [("weights", self.weights_bytes), ("gradients", self.grads_bytes),
                 (f"optimizer ({self.optimizer})", self.optimizer_bytes), ("EMA", self.ema_bytes),
                 (f"activations at batch {self.batch_size}", self.activations_bytes)]
        shown = ", ".join(f"{name} {gib(n)}" for name, n in parts if n)
        return (f"{gib(self.total_bytes)} = {shown} (+{SLACK:.0%} and {gib(CUDA_OVERHEAD_BYTES)} for CUDA); "
                f"{self.params:,} parameters, {self.trainable:,} trainable")


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.3g} MiB"


# --- parameter counts, as the trainer's recipes build the models -----------------------------------
def gpt_block_params(c: int, bias: bool = True) -> int:
    """One transformer block of ``trainer.recipes.tiny_gpt.Block``: attention, MLP (4x), two LayerNorms."""
    return 12 * c * c + (9 * c if bias else 0) + 2 * (c + (c if bias else 0))


def tiny_gpt_params(model: Any, vocab: int, block: int) -> int:
    c = model.n_embd
    ln_f = c + (c if model.bias else 0)
    return vocab * c + block * c + model.n_layer * gpt_block_params(c, model.bias) + ln_f  # lm_head is tied to wte


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k + cout


def roll_encoder_params(m: Any) -> int:
    ch = m.channels
    return (_conv(N_PITCHES, ch, 3) + m.downsample * _conv(ch, ch, 4)
            + m.res_blocks * (_conv(ch, ch, 3) + _conv(ch, ch, 1)) + _conv(ch, m.code_dim, 1))


def roll_decoder_params(m: Any) -> int:
    ch = m.channels
    return (_conv(m.code_dim, ch, 3) + m.res_blocks * (_conv(ch, ch, 3) + _conv(ch, ch, 1))
            + m.downsample * _conv(ch, ch, 4) + _conv(ch, N_PITCHES, 3))


def quantizer_buffers(m: Any) -> int:
    return 2 * m.codebook_size * m.code_dim + m.codebook_size  # codebook, its EMA sum, usage


def style_net_params(m: Any) -> int:
    return roll_encoder_params(m) + _conv(2 * m.code_dim, m.channels, 1) + _conv(m.channels, m.embed_dim, 1)


def hybrid_new_params(m: Any, n_codes: int) -> int:
    """The hybrid's transformer over codes and its projections (everything but the two earlier stages)."""
    n = m.n_embd
    return (_conv(m.embed_dim, n, 1) + _conv(m.code_dim, n, 1) + n_codes * n + m.n_layer * gpt_block_params(n)
            + 2 * n + _conv(n, m.codebook_size, 1))


def music_counts(train: Any) -> tuple[int, int, int]:
    """(parameters, trainable, buffers) of a music recipe's model."""
    m, recipe = train.model, train.model.recipe
    if recipe == "vqvae":
        params = roll_encoder_params(m) + roll_decoder_params(m)
        return params, params, quantizer_buffers(m)
    if recipe == "style_encoder":
        params = style_net_params(m)
        return params, params, 0
    n_codes = train.data.midi.window // 2 ** m.downsample
    trainable = style_net_params(m) + hybrid_new_params(m, n_codes)
    frozen = roll_encoder_params(m) + roll_decoder_params(m) + quantizer_buffers(m)  # kept as buffers
    return trainable, trainable, frozen


def hf_config(name_or_path: str, job_path: str | Path) -> dict[str, Any] | None:
    """A Hugging Face model's ``config.json``: a folder (beside the job file or absolute), the local
    hub cache, or GPT-2's released sizes by name. None when it is not known here."""
    for folder in (Path(job_path).resolve().parent / name_or_path, Path(name_or_path).expanduser()):
        if (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text())
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or "~/.cache/huggingface") / "hub")
    for found in sorted(hub.expanduser().glob(f"models--{name_or_path.replace('/', '--')}/snapshots/*/config.json")):
        return json.loads(found.read_text())
    if name_or_path in GPT2_SIZES:
        layers, width = GPT2_SIZES[name_or_path]
        return {"model_type": "gpt2", "n_layer": layers, "n_embd": width, "vocab_size": 50257, "n_positions": 1024}
    return None


def causal_lm_counts(config: dict[str, Any], lora: Any) -> tuple[int, int, int, int, int] | None:
    """(parameters with the adapter, trainable (the adapter), layers, width, vocabulary) of a GPT-2 or
    Llama-shaped model with LoRA on ``lora.target_modules``; None for a shape not known here."""
    targets = set(lora.target_modules)
    if config.get("model_type") == "gpt2" or "n_embd" in config:
        c, layers, vocab = config["n_embd"], config["n_layer"], config["vocab_size"]
        inner = config.get("n_inner") or 4 * c
        per_layer = 2 * 2 * c + _conv(c, 3 * c, 1) + _conv(c, c, 1) + _conv(c, inner, 1) + _conv(inner, c, 1)
        base = vocab * c + config.get("n_positions", 1024) * c + layers * per_layer + 2 * c
        shapes = {"c_attn": [(c, 3 * c)], "c_proj": [(c, c), (inner, c)], "c_fc": [(c, inner)]}
    elif "hidden_size" in config and "intermediate_size" in config:
        h, inner, layers, vocab = (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"],
                                   config["vocab_size"])
        heads = config.get("num_attention_heads", 1)
        kv = h * config.get("num_key_value_heads", heads) // heads
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * inner + 2 * h
        base = vocab * h * (1 if config.get("tie_word_embeddings", False) else 2) + layers * per_layer + h
        c = h
        shapes = {"q_proj": [(h, h)], "k_proj": [(h, kv)], "v_proj": [(h, kv)], "o_proj": [(h, h)],
                  "gate_proj": [(h, inner)], "up_proj": [(h, inner)], "down_proj": [(inner, h)]}
    else:
        return None
    adapter = layers * sum(lora.r * (i + o) for name in targets for i, o in shapes.get(name, []))
    return base + adapter, adapter, layers, c, vocab


# --- the estimate ------------------------------------------------------------------------------------
def estimate(train: Any, job_path: str | Path, gpu_count: int = 1, on_gpu: bool = True) -> MemoryEstimate | None:
    """Memory one GPU needs to train ``train`` (a ``trainer.config.TrainConfig``); None where the model
    is not known before it is built (a custom recipe, a model folder not found here)."""
    batch = _per_gpu_batch(train, gpu_count)
    act = 2 if train.precision in ("bf16", "fp16") else 4  # bytes per activation element under autocast
    recipe = train.model.recipe
    notes: list[str] = []
    buffers, activations = 0, 0
    if recipe == "tiny_gpt":
        data = train.data
        vocab = train.model.vocab_size or data.vocab_size or (256 if data.tokenizer in (None, "bytes") else None)
        if vocab is None:
            vocab = 50257
            notes.append(f"vocabulary of tokenizer {data.tokenizer} taken as GPT-2's 50,257")
        params = trainable = tiny_gpt_params(train.model, vocab, data.block_size)
        activations = transformer_activations(batch, data.block_size, train.model.n_embd, train.model.n_layer, vocab,
                                              act)
    elif recipe == "causal_lm_lora":
        config = hf_config(train.model.name_or_path, job_path)
        counts = causal_lm_counts(config, train.model.lora) if config else None
        if counts is None:
            return None
        params, trainable, layers, width, vocab = counts
        activations = transformer_activations(batch, train.data.block_size, width, layers, vocab, act,
                                              checkpointing=train.model.gradient_checkpointing)
    elif recipe in ("vqvae", "style_encoder", "hybrid"):
        params, trainable, buffers = music_counts(train)
        activations = music_activations(train, batch, act)
    else:
        return None
    optimizer = train.optimizer.name if on_gpu else "adamw"
    state_bytes = 2 if optimizer == "adamw8bit" else 8  # two moments: 8-bit each, or float32 each
    return MemoryEstimate(
        params=params, trainable=trainable, buffers=buffers, batch_size=batch,
        weights_bytes=4 * (params + buffers), grads_bytes=4 * trainable, optimizer_bytes=state_bytes * trainable,
        ema_bytes=4 * trainable if train.ema else 0, activations_bytes=activations, optimizer=optimizer, notes=notes)


def transformer_activations(batch: int, seq: int, width: int, layers: int, vocab: int, act: int,
                            checkpointing: bool = False) -> int:
    """Per layer, 34 bytes per token and width unit in 16-bit (attention through SDPA, which keeps no
    score matrix), twice that in float32; with checkpointing only each layer's input is kept, plus one
    layer recomputed. The logits: kept, upcast to float32 and their gradient."""
    per_layer = 17 * act * batch * seq * width
    body = (layers * act * batch * seq * width + per_layer) if checkpointing else layers * per_layer
    return body + batch * seq * vocab * (act + 8)


def music_activations(train: Any, batch: int, act: int) -> int:
    """Two saved tensors per convolution (its input and the GELU's before it) at each resolution,
    the quantiser's distances and one-hots, the reconstruction's logits; the hybrid's transformer."""
    m = train.model
    t, ch = train.data.midi.window, m.channels
    levels = [t // 2**i for i in range(m.downsample + 1)]
    conv = 2 * ch * (sum(levels) + 2 * m.res_blocks * levels[-1]) + N_PITCHES * t
    codes = levels[-1]
    encoder = conv
    if m.recipe == "vqvae":
        quantizer = 3 * codes * m.codebook_size * 4 // act + codes * m.code_dim * 4
        out = encoder + quantizer + conv + 3 * N_PITCHES * t * 4 // act
        return batch * act * out
    if m.recipe == "style_encoder":
        return batch * act * encoder + batch * batch * 4 * 3
    # hybrid: the frozen VQ-VAE encodes without keeping anything; the style encoder trains; the transformer.
    return batch * act * encoder + transformer_activations(batch, codes, m.n_embd, m.n_layer, m.codebook_size, act)


def _per_gpu_batch(train: Any, gpu_count: int) -> int:
    if train.global_batch_size is None:
        return train.batch_size
    return max(1, train.global_batch_size // (gpu_count * train.grad_accum))


# --- at submit --------------------------------------------------------------------------------------
def check_fit(job: Any) -> list[str]:
    """Refuse (:class:`MemoryFitError`) a job that cannot fit in the memory of a GPU it may run on,
    every stage of a pipeline; return what else the user should hear at submit (8-bit Adam where
    bitsandbytes cannot run). ``job`` is a validated :class:`runner.spec.Job`."""
    spec = job.spec
    sections = [(f"stages.{n}.train", s.train) for n, s in spec.stages.items()] if spec.stages else [("train", spec.train)]
    notes: list[str] = []
    problems: list[str] = []
    for where, train in sections:
        if train.optimizer.name == "adamw8bit" and (train.device == "cpu" or not _trainer_has_cuda(job)):
            full = estimate(train, job.path, spec.resources.gpu_count, on_gpu=False)
            size = f" (optimizer state {gib(full.optimizer_bytes)} instead of {gib(full.optimizer_bytes // 4)})" if full else ""
            notes.append(f"{job.path}: {where}.optimizer.name: adamw8bit needs bitsandbytes on CUDA, and this job's "
                         f"trainer runs without CUDA ({_where_it_runs(job)}): it will train with 32-bit AdamW{size}. "
                         f"Run it on a GPU (--backend runpod), or write `name: adamw` to say so in the file")
        if not job.gpus or train.device == "cpu":
            continue
        est = estimate(train, job.path, spec.resources.gpu_count, on_gpu=True)
        if est is None:
            continue
        for gpu in job.gpus:
            if est.total_bytes > gpu.vram_gb * GIB:
                problems.append(f"{where}: needs about {est.breakdown()}; {gpu.alias} has {gpu.vram_gb} GiB. "
                                f"{advice(train, est, gpu.vram_gb * GIB)}")
    if problems:
        raise MemoryFitError(f"{job.path}: the job does not fit in GPU memory:\n" + "\n".join(problems))
    return notes


def advice(train: Any, est: MemoryEstimate, vram: int) -> str:
    """What would bring the job under ``vram``, biggest saving first."""
    ways: list[tuple[int, str]] = []
    if est.batch_size > 1:
        fits = next((b for b in _halvings(est.batch_size) if _with_batch(est, b) <= vram), None)
        if fits:
            ways.append((est.total_bytes - _with_batch(est, fits),
                         f"batch_size {fits} with grad_accum {train.grad_accum * est.batch_size // fits} (the same "
                         f"examples per step)"))
    if est.optimizer != "adamw8bit" and est.optimizer_bytes:
        ways.append((est.optimizer_bytes * 3 // 4, f"optimizer.name: adamw8bit (saves {gib(est.optimizer_bytes * 3 // 4)})"))
    if train.model.recipe == "causal_lm_lora" and not train.model.gradient_checkpointing:
        ways.append((est.activations_bytes // 2, "model.gradient_checkpointing: true (recomputes activations)"))
    elif train.model.recipe in ("tiny_gpt", "hybrid") and est.activations_bytes:
        ways.append((est.activations_bytes // 2, "a shorter context (data.block_size / data.midi.window) or a smaller model"))
    if train.precision == "fp32" and est.activations_bytes:
        ways.append((est.activations_bytes // 2, "precision: bf16 (halves the activations)"))
    if train.ema:
        ways.append((est.ema_bytes, f"no ema (saves {gib(est.ema_bytes)})"))
    ways.sort(key=lambda w: -w[0])
    options = "; ".join(text for _saving, text in ways) or "a smaller model"
    return f"To fit: {options}; or a GPU with more memory (`python -m runner gpus`)."


def _halvings(batch: int) -> list[int]:
    out, b = [], batch // 2
    while b >= 1:
        out.append(b)
        b //= 2
    return out


def _with_batch(est: MemoryEstimate, batch: int) -> int:
    """The total at another per-GPU batch (activations scale with it)."""
    scaled = est.tensors_bytes - est.activations_bytes + est.activations_bytes * batch // est.batch_size
    return int(scaled * (1 + SLACK)) + CUDA_OVERHEAD_BYTES


def _trainer_has_cuda(job: Any) -> bool:
    if job.backend == "runpod":
        return True
    if job.backend == "docker":
        return bool(job.gpus)
    from runner.backends.local import nvidia_gpu_count

    return bool(nvidia_gpu_count())


def _where_it_runs(job: Any) -> str:
    if job.backend == "docker":
        return "a docker job that names no GPU"
    return "the local backend on this machine, which has no NVIDIA GPU"
