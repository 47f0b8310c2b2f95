"""trainer.step.Stepper: what a run and a smoke do with each step's gradients (clip, guards, step, EMA)."""

from __future__ import annotations

import math

import torch

from trainer.config import Guard
from trainer.loop import EMA
from trainer.step import Stepper


def _setup(limit: float | None = 100.0, in_a_row: int = 3, scaler=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = EMA(model, 0.5)
    params = list(model.parameters())
    stepper = Stepper(optimizer, scaler, ema, params, 1.0,
                      Guard(stop_grad_norm=limit, stop_grad_norm_in_a_row=in_a_row))
    return model, ema, stepper


def _backward(model: torch.nn.Module, scale: float) -> float:
    loss = model(torch.full((2, 4), scale)).pow(2).mean()
    loss.backward()
    return loss.item()


def test_a_finite_step_is_clipped_applied_averaged_and_its_gradients_cleared():
    model, ema, stepper = _setup()
    before = model.weight.detach().clone()
    applied = stepper.apply(_backward(model, 1.0))
    assert applied.finite and applied.stepped and not applied.refused and applied.grad_norm > 0
    assert not torch.equal(model.weight, before)
    assert torch.allclose(ema.shadow["weight"], (before + model.weight.detach()) / 2)  # decay 0.5
    assert all(p.grad is None for p in model.parameters())


def test_the_guard_refuses_the_last_of_too_many_norms_in_a_row_and_a_normal_step_resets_the_streak():
    model, _ema, stepper = _setup(limit=1.0, in_a_row=3)
    starts = []
    assert stepper.apply(_backward(model, 100.0), lambda: starts.append(1)).stepped  # over the limit: clipped
    assert stepper.over_limit == 1 and starts == [1]
    assert stepper.apply(_backward(model, 1e-4), lambda: starts.append(2)).stepped  # back under: the streak ends
    assert stepper.over_limit == 0
    stepper.apply(_backward(model, 100.0), lambda: starts.append(3))
    stepper.apply(_backward(model, 100.0), lambda: starts.append(4))
    weights = model.weight.detach().clone()
    refused = stepper.apply(_backward(model, 100.0), lambda: starts.append(5))
    assert refused.refused and not refused.stepped and refused.grad_norm > 1.0
    assert torch.equal(model.weight, weights), "a refused step leaves the weights as they were"
    assert starts == [1, 3], "the last good state is taken once, before each streak's first step"


def test_no_limit_means_no_refusal():
    model, _ema, stepper = _setup(limit=None, in_a_row=1)
    for _ in range(3):
        assert stepper.apply(_backward(model, 1e3)).stepped


def test_a_non_finite_loss_is_skipped_without_touching_the_weights():
    model, ema, stepper = _setup()
    _backward(model, 1.0)
    weights, shadow = model.weight.detach().clone(), ema.shadow["weight"].clone()
    applied = stepper.apply(math.nan)
    assert not applied.finite and not applied.stepped and not applied.overflow
    assert torch.equal(model.weight, weights) and torch.equal(ema.shadow["weight"], shadow)
    assert all(p.grad is None for p in model.parameters())


def test_an_fp16_overflow_is_skipped_and_lowers_the_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    model, _ema, stepper = _setup(scaler=scaler)
    loss = model(torch.ones(2, 4)).pow(2).mean()
    scaler.scale(loss).backward()
    model.weight.grad[0, 0] = math.inf  # what an fp16 overflow leaves in the scaled gradients
    weights = model.weight.detach().clone()
    applied = stepper.apply(loss.item())
    assert applied.overflow and not applied.stepped and not applied.finite
    assert torch.equal(model.weight, weights) and scaler.get_scale() == 2.0**15
