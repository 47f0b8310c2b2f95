"""The second half of an optimizer step, after the backward passes: unscale (fp16), clip, the gradient
guards, the optimizer step and the EMA. Training (:mod:`trainer.loop`) and the smoke run
(:mod:`trainer.smoke`) both take their steps here, so a smoke judges exactly what a run would do."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import Guard


@dataclass(frozen=True)
class Applied:
    """What became of one step's gradients."""

    grad_norm: float  # before clipping
    finite: bool  # loss and gradient norm both finite
    stepped: bool  # the optimizer took the step
    #: fp16: gradients overflowed while the loss was finite; the step was skipped and the loss scale lowered
    #: (how the scaler finds its scale: not counted against the guard while the scale is at least 1).
    overflow: bool
    #: The gradient-norm guard refused this step: ``guard.stop_grad_norm_in_a_row`` norms in a row above
    #: ``guard.stop_grad_norm``. Its gradients are left unapplied for the caller to stop on.
    refused: bool


class Stepper:
    """Applies each step's gradients with the job's guards; holds the over-the-limit streak between steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: Any, ema: Any, params: list[torch.nn.Parameter],
                 grad_clip: float | None, guard: Guard):
        self.optimizer, self.scaler, self.ema, self.params = optimizer, scaler, ema, params
        self.grad_clip, self.guard = grad_clip, guard
        #: Steps in a row whose gradient norm was above ``guard.stop_grad_norm``.
        self.over_limit = 0

    def apply(self, train_loss: float, streak_starts: Callable[[], None] | None = None) -> Applied:
        """Clip and apply the gradients of a step whose mean loss was ``train_loss``. ``streak_starts`` is
        called before the first step of a streak above the limit touches the weights (the last good state)."""
        scaler, optimizer = self.scaler, self.optimizer
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip or math.inf).item()
        finite = math.isfinite(train_loss) and math.isfinite(grad_norm)
        overflow = not finite and scaler is not None and math.isfinite(train_loss) and scaler.get_scale() >= 1
        limit = self.guard.stop_grad_norm
        if finite and limit is not None and grad_norm > limit:
            if not self.over_limit and streak_starts is not None:
                streak_starts()
            self.over_limit += 1
            if self.over_limit >= self.guard.stop_grad_norm_in_a_row:
                return Applied(grad_norm, finite, stepped=False, overflow=False, refused=True)
        elif finite:
            self.over_limit = 0
        if finite:
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if self.ema:
                self.ema.update()
        elif scaler:
            scaler.update()  # unscale_ was called: tell the scaler the step is over (an overflow halves the scale)
        optimizer.zero_grad(set_to_none=True)
        return Applied(grad_norm, finite, stepped=finite, overflow=overflow, refused=False)
