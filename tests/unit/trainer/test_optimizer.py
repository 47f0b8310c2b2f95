"""adamw8bit: bitsandbytes on CUDA; on a machine without CUDA one log line says so and AdamW is used."""

from __future__ import annotations

import io
import logging

import pytest
import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.loop import make_optimizer


def config(name: str) -> TrainConfig:
    return TrainConfig.model_validate({"model": {"recipe": "x.y:z"}, "max_steps": 1,
                                       "optimizer": {"name": name, "lr": 1e-3, "weight_decay": 0.1}})


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 4))


def test_adamw8bit_without_cuda_says_so_once_and_uses_adamw(caplog):
    with caplog.at_level(logging.INFO, logger="trainer"):
        opt = make_optimizer(config("adamw8bit"), model(), torch.device("cpu"))
    assert type(opt) is torch.optim.AdamW
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "adamw8bit needs CUDA" in lines[0] and "using AdamW" in lines[0]
    assert caplog.records[0].levelno == logging.WARNING


def test_weight_decay_applies_to_matrices_only():
    opt = make_optimizer(config("adamw"), model(), torch.device("cpu"))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() < 2 for p in plain["params"])


def test_bitsandbytes_8bit_state_survives_a_weights_only_checkpoint():
    """On CUDA the checkpoint holds AdamW8bit's quantised state; it must load with
    torch.load(weights_only=True) and continue exactly. bitsandbytes 0.50 also steps on CPU, which
    lets this run here; the trainer itself still uses AdamW on CPU (see the test above)."""
    bnb = pytest.importorskip("bitsandbytes")

    def make(params):
        return bnb.optim.AdamW8bit([{"params": [params[0]], "weight_decay": 0.1},
                                    {"params": [params[1]], "weight_decay": 0.0}], lr=1e-2)

    def step(params, opt, seed):
        g = torch.Generator().manual_seed(seed)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        opt.zero_grad()

    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(128, 128)), nn.Parameter(torch.randn(128))]  # 8-bit state needs >= 4096 elements
    opt = make(params)
    for i in range(3):
        step(params, opt, i)
    assert opt.state[params[0]]["state1"].dtype == torch.uint8  # really the 8-bit path
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "params": [p.detach().clone() for p in params]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    resumed_params = [nn.Parameter(t) for t in saved["params"]]
    resumed = make(resumed_params)
    resumed.load_state_dict(saved["optimizer"])
    for i in range(3, 6):
        step(params, opt, i)
        step(resumed_params, resumed, i)
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params, strict=True))
