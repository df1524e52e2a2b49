"""The family adversary reaches the whole family, keeps the members it let go, and restores them exactly."""

import torch

import tailguard as tg
from tailguard.harden.adversary import FamilyAdversary, PoolSettings
from tailguard.oracle import ScoreOracle

from ._toy_backdoor import TRIGGER_COL, TRIGGER_ROW, toy_task, trigger_model


def toy_adversary(**settings) -> FamilyAdversary:
    _, family = toy_task()
    oracle = ScoreOracle.for_model(trigger_model(), tg.ClassIs(1))
    return FamilyAdversary("adversary", family, oracle, PoolSettings(**settings), floor=-9.2)


def positions(adversary: FamilyAdversary) -> set[tuple[int, int]]:
    return {(int(m["row"]), int(m["col"])) for m in adversary.members}


def test_refreshed_candidates_come_from_the_whole_family_not_its_first_positions():
    # the toy family's 9 positions are listed row by row and the trigger's (2, 2) is the last; a pool
    # held at the first two positions and refreshed from a prefix of the candidates never reaches it
    adversary = toy_adversary(pool_size=2, candidates=9, samples=16, refresh_every=1)
    g = torch.Generator().manual_seed(0)
    adversary.start(g)
    _, family = toy_task()
    for i, member in enumerate(family.candidates(2, g)):
        adversary.admit(member, i)
    adversary.archive = []
    assert (TRIGGER_ROW, TRIGGER_COL) not in positions(adversary)
    for step in range(40):
        adversary.step(step, g)
        if (TRIGGER_ROW, TRIGGER_COL) in positions(adversary):
            break
    assert (TRIGGER_ROW, TRIGGER_COL) in positions(adversary)
    for step in range(40, 70):
        adversary.step(step, g)
    assert float(adversary.log_probs(g).max()) > -2.3  # ascent there finds the trigger


def test_members_that_leave_go_to_the_archive_and_state_round_trips():
    adversary = toy_adversary(pool_size=2, candidates=9, samples=16, refresh_every=1, archive_size=3)
    g = torch.Generator().manual_seed(1)
    adversary.start(g)
    _, family = toy_task()
    for member in family.candidates(5, g):
        leaving = {k: v.detach().clone() for k, v in adversary.members[0].items()}
        adversary.admit(member, 0)
        assert adversary.members[0] is member
        assert all(torch.equal(leaving[k], adversary.archive[-1][k].detach()) for k in leaving)
    assert len(adversary.archive) == 3  # only the latest archive_size are kept
    found = {k: v.detach() for k, v in family.candidates(1, g)[0].items()}  # as tailguard.attack returns it
    adversary.admit_in_place_of_weakest(found, g)
    assert any(all(torch.equal(found[k], m[k].detach()) for k in found) for m in adversary.members)
    assert all(m["logits"].requires_grad for m in adversary.members)
    tensors, meta = adversary.state()
    copy = toy_adversary(pool_size=2, candidates=9, samples=16, refresh_every=1, archive_size=3)
    copy.load_state(tensors, meta)
    for ours, theirs in ((adversary.members, copy.members), (adversary.archive, copy.archive)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert all(torch.equal(a[k].detach(), b[k].detach()) for k in a)
