"""Training batches, made ahead by PyTorch DataLoader workers when ``train.loader.workers`` asks for
them, for any recipe (the built-in ones and a user's own).

The order is the :class:`trainer.data.EpochSampler`'s, as without workers: the sampler runs in the
training process and hands each batch's indices to the workers, which call the recipe's ``collate``.
Because it runs ahead of training by the batches in flight, the sampler's own state is not what a
checkpoint must record: :attr:`Batches.state` is the state after the last batch *handed out*, so a
resumed run continues with exactly the batch that came next."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.config import Loader
from trainer.data import EpochSampler


class Batches:
    """``next()`` gives the next training batch; :attr:`state` is what a checkpoint records of the sampler."""

    def __init__(self, recipe: Any, sampler: EpochSampler, loader: Loader, device: torch.device):
        self.recipe, self.sampler = recipe, sampler
        self.state = sampler.state_dict()
        self._loader = None
        if loader.workers > 0 or (loader.pin_memory and device.type == "cuda"):
            states: collections.deque[dict[str, int]] = collections.deque()
            self._states = states
            self._loader = DataLoader(
                _Collating(recipe), batch_size=None, sampler=_Plan(sampler, states), num_workers=loader.workers,
                pin_memory=loader.pin_memory and device.type == "cuda", collate_fn=_as_is,
                prefetch_factor=loader.prefetch if loader.workers else None,
                worker_init_fn=_leave_signals_to_the_trainer if loader.workers else None,
                # Its own generator: a DataLoader draws its workers' seed from the global one otherwise,
                # which would shift every dropout mask after it (and a resume would draw again).
                generator=torch.Generator().manual_seed(0))
            self._it = iter(self._loader)

    def next(self) -> Any:
        if self._loader is None:
            batch = self.recipe.collate([self.recipe.train_set[i] for i in self.sampler.next_batch()])
            self.state = self.sampler.state_dict()
            return batch
        batch = next(self._it)
        self.state = self._states.popleft()  # the batches come back in the order their indices were drawn
        return batch

    def close(self) -> None:
        if self._loader is not None:
            del self._it  # its end stops the workers
            self._loader = None


class _Plan(Sampler):
    """The sampler's batches, endlessly, each as one "index" of :class:`_Collating`; the sampler's
    state after each is queued for :class:`Batches` to pick up when that batch is handed out."""

    def __init__(self, sampler: EpochSampler, states: collections.deque):
        self.sampler, self.states = sampler, states

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            indices = self.sampler.next_batch()
            self.states.append(self.sampler.state_dict())
            yield indices


class _Collating(Dataset):
    def __init__(self, recipe: Any):
        self.train_set, self.collate = recipe.train_set, recipe.collate

    def __getitem__(self, indices: list[int]) -> Any:
        return self.collate([self.train_set[i] for i in indices])


def _as_is(batch: Any) -> Any:
    return batch


def _leave_signals_to_the_trainer(_worker_id: int) -> None:
    """A SIGTERM or Ctrl-C sent to the trainer's process group is the trainer's to handle (an
    emergency checkpoint, which may still need batches); a worker ends when the trainer does."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
