"""Group advantages: GRPO, Dr.GRPO, RLOO values and the zero-std fraction."""

import pytest
import torch

import sspo


def test_grpo_drgrpo_rloo_values():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5], dtype=torch.float64)
    adv, metrics = sspo.group_advantages(r, 4, method="grpo", std_floor=0.0)
    g1 = r[:4]
    expected1 = (g1 - g1.mean()) / g1.std()
    g2 = r[4:]
    expected2 = (g2 - g2.mean()) / g2.std()
    torch.testing.assert_close(adv, torch.cat([expected1, expected2]))
    dr, _ = sspo.group_advantages(r, 4, method="drgrpo")
    torch.testing.assert_close(dr, torch.cat([g1 - g1.mean(), g2 - g2.mean()]))
    loo, _ = sspo.group_advantages(r, 4, method="rloo")
    manual = torch.stack([r[i] - torch.cat([r[(i // 4) * 4 : i], r[i + 1 : (i // 4 + 1) * 4]]).mean() for i in range(8)])
    torch.testing.assert_close(loo, manual)
    assert metrics["adv/zero_std_frac"].item() == 0.0


def test_zero_std_groups_and_floor():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    adv, metrics = sspo.group_advantages(r, 3)
    assert metrics["adv/zero_std_frac"].item() == pytest.approx(2 / 3)
    assert (adv[:6] == 0).all()
    torch.testing.assert_close(adv[6:], (r[6:] - r[6:].mean()) / (r[6:].std() + 1e-6))


def test_group_ids_match_consecutive_groups():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(12, generator=g)
    perm = torch.randperm(12, generator=g)
    ids = torch.arange(12) // 4
    a_cons, _ = sspo.group_advantages(r, 4, method="rloo")
    a_ids, _ = sspo.group_advantages(r[perm], groups=ids[perm] * 7, method="rloo")
    torch.testing.assert_close(a_ids, a_cons[perm])


def test_singleton_groups_get_zero_and_errors_are_named():
    adv, _ = sspo.group_advantages(torch.tensor([1.0, 0.0]), 1)
    assert (adv == 0).all()
    with pytest.raises(ValueError, match="group_size=3 must be a positive int dividing len"):
        sspo.group_advantages(torch.ones(4), 3)
    with pytest.raises(ValueError, match="advantage method 'ppo'"):
        sspo.group_advantages(torch.ones(4), 2, method="ppo")


def test_invalid_responses_leave_their_groups_statistics():
    rewards = torch.tensor([1.0, 0.0, 1.0, 5.0, 2.0, 2.0, 7.0, 0.0])
    valid = torch.tensor([True, True, True, False, True, True, False, False])
    group_advantages = sspo.group_advantages
    adv, metrics = group_advantages(rewards, 4, method="grpo", valid=valid)
    kept = rewards[:3]
    expected = (kept - kept.mean()) / (kept.std() + 1e-6)
    torch.testing.assert_close(adv[:3], expected)
    assert adv[3] == 0 and (adv[4:] == 0).all()  # the second group's two valid rewards are equal
    assert metrics["adv/zero_std_frac"] == 0.5
    same, _ = group_advantages(rewards[:3], 3, method="rloo")
    torch.testing.assert_close(group_advantages(rewards, 4, method="rloo", valid=valid)[0][:3], same)
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        group_advantages(rewards, 4, valid=valid.float())
