"""EpochSampler: the seeded batch order whose position is checkpointed, so a resumed run sees
exactly the batches the uninterrupted run would have seen."""

from __future__ import annotations

import logging

import pytest

from trainer.data import EpochSampler


def take(sampler: EpochSampler, n: int) -> list[list[int]]:
    return [sampler.next_batch() for _ in range(n)]


def test_each_epoch_is_a_permutation_without_repeats_and_the_ragged_tail_is_dropped():
    s = EpochSampler(n=50, batch_size=8, seed=3)
    assert s.batches_per_epoch == 6  # 50 // 8; the last 2 examples of each epoch's order are dropped
    epoch0, epoch1 = take(s, 6), take(s, 6)
    for epoch in (epoch0, epoch1):
        flat = [i for batch in epoch for i in batch]
        assert len(flat) == len(set(flat)) == 48
        assert set(flat) <= set(range(50))
    assert epoch0 != epoch1  # a fresh permutation each epoch
    assert s.state_dict()["epoch"] == 1


def test_same_seed_same_order_and_another_seed_another_order():
    assert take(EpochSampler(40, 4, seed=1), 25) == take(EpochSampler(40, 4, seed=1), 25)
    assert take(EpochSampler(40, 4, seed=1), 10) != take(EpochSampler(40, 4, seed=2), 10)


@pytest.mark.parametrize("done", [0, 1, 5, 6, 7, 13])  # start, inside an epoch, on and past epoch boundaries
def test_state_round_trip_continues_with_the_same_batches(done):
    straight = EpochSampler(50, 8, seed=11)
    expected = take(straight, done + 8)[done:]

    first = EpochSampler(50, 8, seed=11)
    take(first, done)
    state = first.state_dict()
    assert all(isinstance(v, int) for v in state.values())  # plain ints: safe for torch.load(weights_only=True)
    resumed = EpochSampler(50, 8, seed=11)
    resumed.load_state_dict(dict(state))
    assert take(resumed, 8) == expected


@pytest.mark.parametrize("n,world", [(100, 3), (64, 4), (17, 2)])
def test_ranks_get_disjoint_shares_that_cover_the_epoch(n, world):
    per_rank = n // world
    samplers = [EpochSampler(n, batch_size=1, seed=5, rank=r, world_size=world) for r in range(world)]
    for _epoch in range(2):
        shares = [{i for batch in take(s, per_rank) for i in batch} for s in samplers]
        assert all(len(share) == per_rank for share in shares)
        union = set().union(*shares)
        assert len(union) == per_rank * world  # disjoint: no example seen twice in an epoch
        assert union <= set(range(n))
    assert all(s.state_dict()["epoch"] == 1 for s in samplers)


def test_ranks_see_the_same_number_of_batches():
    # DDP needs every rank to step the same number of times per epoch.
    samplers = [EpochSampler(103, batch_size=4, seed=0, rank=r, world_size=4) for r in range(4)]
    assert {s.batches_per_epoch for s in samplers} == {6}


def test_changed_data_restarts_the_saved_epoch_from_its_start(caplog):
    old = EpochSampler(50, 8, seed=2)
    take(old, 8)  # epoch 1, position 16
    new = EpochSampler(60, 8, seed=2)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        new.load_state_dict(old.state_dict())
    assert "data changed" in caplog.text
    assert (new.state_dict()["epoch"], new.state_dict()["position"]) == (1, 0)
    fresh = EpochSampler(60, 8, seed=2)
    take(fresh, fresh.batches_per_epoch)
    assert new.next_batch() == fresh.next_batch()  # the first batch of epoch 1


def test_too_little_data_for_one_batch_is_refused():
    with pytest.raises(ValueError, match="cannot fill a batch of 8"):
        EpochSampler(7, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="on each of 2 process"):
        EpochSampler(15, batch_size=8, seed=0, world_size=2)


def test_any_integer_seed_works():
    for seed in (0, -1, 2**40, 2**63 + 5):
        assert len(EpochSampler(10, 2, seed=seed).next_batch()) == 2
