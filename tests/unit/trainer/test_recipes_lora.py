"""The causal_lm_lora recipe's adapter: the trainable-parameter count of the seed setup, Conv1D
(fan_in_fan_out) handling, and that a checkpoint holds the adapter only. Models are built from
configs: no downloads."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from trainer.config import LoRA  # noqa: E402
from trainer.loop import trainable_state  # noqa: E402
from trainer.recipes.causal_lm_lora import wrap_with_lora  # noqa: E402

SEED_LORA = LoRA(r=8, alpha=16, dropout=0.05, target_modules=["c_attn", "c_proj"])


def tiny_gpt2(**kw) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 32, "vocab_size": 50, "bos_token_id": 0, "eos_token_id": 0, **kw}))


def wrap_quietly(base, lora: LoRA):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = wrap_with_lora(base, lora)
    return model, [str(w.message) for w in caught if "fan_in_fan_out" in str(w.message)]


def randomize_adapter(model) -> None:
    """lora_B starts at zero (the adapter is a no-op); give it values so the update shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_gpt2_small_seed_setup_has_811008_trainable_parameters():
    # GPT-2 small's shape, built on the meta device: no weights are allocated or downloaded.
    with torch.device("meta"):
        base = GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024))
    model, fan_warnings = wrap_quietly(base, SEED_LORA)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    # Per layer: c_attn 8*(768+2304), attn.c_proj 8*(768+768), mlp.c_proj 8*(3072+768).
    assert trainable == 811_008 == 12 * 8 * ((768 + 2304) + (768 + 768) + (3072 + 768))
    assert round(100 * trainable / total, 2) == 0.65
    assert fan_warnings == []


def test_gpt2_conv1d_update_is_not_transposed():
    """GPT-2's c_attn/c_proj are Conv1D (weight [in, out]). The adapter's forward and its merged
    weights must agree; with fan_in_fan_out wrong, the merged square c_proj would be transposed."""
    base = tiny_gpt2()
    untouched = copy.deepcopy(base).eval()
    model, fan_warnings = wrap_quietly(base, LoRA(r=4, alpha=8, dropout=0.0, target_modules=["c_attn", "c_proj"]))
    assert fan_warnings == []  # set from the layers, not corrected by peft behind our back
    assert model.peft_config["default"].fan_in_fan_out is True
    randomize_adapter(model)
    model.eval()
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base_out = untouched(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
        adapted = model(ids).logits
        layer = model.base_model.model.transformer.h[0].attn.c_proj
        a, b, scale = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
        before = layer.base_layer.weight.clone()
        merged = model.merge_and_unload()
        merged_out = merged(ids).logits
    assert not torch.allclose(plain, adapted)  # the adapter does something
    assert torch.allclose(adapted, merged_out, atol=1e-5)
    assert torch.allclose(merged.transformer.h[0].attn.c_proj.weight, before + scale * (b @ a).T, atol=1e-6)
    assert torch.allclose(plain, base_out, atol=1e-6)  # switched off, it is the base model


def test_linear_layers_get_fan_in_fan_out_off():
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, vocab_size=50, max_position_embeddings=32))
    model, fan_warnings = wrap_quietly(base, LoRA(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    assert fan_warnings == [] and model.peft_config["default"].fan_in_fan_out is False
    randomize_adapter(model)
    model.eval()
    ids = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        adapted = model(ids).logits
        assert torch.allclose(adapted, model.merge_and_unload()(ids).logits, atol=1e-5)


def test_target_modules_that_match_nothing_list_the_layer_names():
    with pytest.raises(ValueError, match=r"match no layer of this model; its linear layers are named: .*c_attn, c_fc, c_proj"):
        wrap_with_lora(tiny_gpt2(), LoRA(target_modules=["q_proj"]))


def test_checkpointed_model_state_is_the_adapter_only():
    # GPT-2 ties lm_head to the (frozen) embedding: it must not ride along in every checkpoint.
    model, _ = wrap_quietly(tiny_gpt2(), SEED_LORA)
    state = trainable_state(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable
    assert all(".lora_A." in k or ".lora_B." in k for k in state)
    assert sum(t.numel() for t in state.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
