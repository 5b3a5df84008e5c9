import math

import pytest
import torch

from redgym.trainers.losses import chosen_nll_anchor, dpo_loss, ipo_loss, preference_margin

# pair 1: h = (-1 - -1.5) - (-2 - -1.5) = 1.0 ; pair 2: h = 0
PC, PR = torch.tensor([-1.0, 0.0]), torch.tensor([-2.0, 0.0])
RC, RR = torch.tensor([-1.5, 0.0]), torch.tensor([-1.5, 0.0])


def test_preference_margin_by_hand():
    assert preference_margin(PC, PR, RC, RR).tolist() == pytest.approx([1.0, 0.0])


def test_ipo_loss_by_hand():
    # beta 0.25 -> target 1/(2*0.25) = 2 ; (1-2)^2 = 1 ; (0-2)^2 = 4
    out = ipo_loss(PC, PR, RC, RR, beta=0.25)
    assert out.shape == (2,) and out.tolist() == pytest.approx([1.0, 4.0])


def test_dpo_loss_by_hand():
    # -log sigmoid(0.5 * 1) = log(1 + e^-0.5) ; -log sigmoid(0) = log 2
    out = dpo_loss(PC, PR, RC, RR, beta=0.5)
    assert out.shape == (2,) and out.tolist() == pytest.approx([math.log1p(math.exp(-0.5)), math.log(2)])


def test_chosen_nll_anchor_by_hand():
    # losses [1, 0], chosen log-probs [-2, -4], weight 0.5: [1 + 1, 0 + 2]
    out = chosen_nll_anchor(torch.tensor([1.0, 0.0]), torch.tensor([-2.0, -4.0]), 0.5)
    assert out.tolist() == pytest.approx([2.0, 2.0])
    pc = torch.tensor([-1.0], requires_grad=True)  # at IPO's target the pair loss pulls no more; the anchor does
    chosen_nll_anchor(
        ipo_loss(pc, torch.tensor([-3.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), 0.25), pc, 0.5
    ).sum().backward()
    assert pc.grad.item() == pytest.approx(-0.5)
    assert chosen_nll_anchor(torch.tensor([1.0]), torch.tensor([-2.0]), 0.0).tolist() == [1.0]


def test_preference_losses_push_the_margin_the_right_way():
    pc = torch.tensor([-1.0], requires_grad=True)
    for fn in (ipo_loss, dpo_loss):
        pc.grad = None
        fn(pc, torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), 0.1).sum().backward()
        assert pc.grad.item() < 0  # gradient descent raises the chosen log-prob


def test_gae_three_token_episode_by_hand():
    # rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 0.9, lambda 0.8
    # delta2 = 1 + 0 - 0.7 = 0.3 ; delta1 = 0 + 0.9*0.7 - 0.6 = 0.03 ; delta0 = 0 + 0.9*0.6 - 0.5 = 0.04
    # A2 = 0.3 ; A1 = 0.03 + 0.72*0.3 = 0.246 ; A0 = 0.04 + 0.72*0.246 = 0.21712
    from redgym.trainers.losses import gae

    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([0.21712, 0.246, 0.3])
    assert ret[0].tolist() == pytest.approx([0.71712, 0.846, 1.0])


def test_gae_ignores_left_padding():
    from redgym.trainers.losses import gae

    r = torch.tensor([[9.0, 0.0, 1.0]])  # position 0 is padding: its reward and value must not leak
    v = torch.tensor([[9.0, 0.6, 0.7]])
    adv, _ = gae(r, v, torch.tensor([[0.0, 1.0, 1.0]]), gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([0.0, 0.246, 0.3])


def test_whiten_by_hand():
    from redgym.trainers.losses import whiten

    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    out = whiten(x, torch.tensor([1.0, 1.0, 1.0, 0.0]))  # mean 2, unbiased std 1 over the masked entries
    assert out.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)


def test_leave_one_out_baseline_by_hand():
    from redgym.trainers.losses import leave_one_out_baseline

    # group 0: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5; group 1 (0.5, 1.5): -1, +1; group 2 alone
    r = torch.tensor([1.0, 2.0, 0.5, 6.0, 1.5, 7.0])
    out = leave_one_out_baseline(r, torch.tensor([0, 0, 1, 0, 1, 2]))
    assert out.tolist() == pytest.approx([-3.0, -1.5, -1.0, 4.5, 1.0, 7.0])


def test_kl_estimators_by_hand():
    from redgym.trainers.losses import kl_k1, kl_k3

    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    # r = ref/pi = 0.5 -> (r - 1) - log r = -0.5 + log 2
    assert kl_k3(logp, ref).item() == pytest.approx(-0.5 + math.log(2))
    assert kl_k3(ref, ref).item() == 0.0


def test_sequence_kl_k3_and_the_pair_penalty_by_hand():
    from redgym.trainers.losses import pair_kl_penalty, sequence_kl_k3

    # row 0: one token, pi 0.5 vs ref 0.25 -> log 2 - 0.5 (the padding slot ignored); row 1: two tokens, the first
    # equal (0), the second pi 0.25 vs ref 0.5 -> r = 2: (2 - 1) - log 2; mean of the two; row 2 empty -> 0
    logp = torch.tensor([[0.0, math.log(0.5)], [math.log(0.3), math.log(0.25)], [0.0, 0.0]])
    ref = torch.tensor([[0.0, math.log(0.25)], [math.log(0.3), math.log(0.5)], [0.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    got = sequence_kl_k3(logp, ref, mask)
    assert got.tolist() == pytest.approx([math.log(2) - 0.5, (1 - math.log(2)) / 2, 0.0])
    # a token the policy now gives e^-12 of the reference's probability: k3 = e^12 - 12 - 1 ~ 162742, or the cap
    far, near = torch.tensor([[-14.0]]), torch.tensor([[-2.0]])
    assert sequence_kl_k3(far, near, torch.ones(1, 1)).item() == pytest.approx(math.exp(12) - 13)
    capped = sequence_kl_k3(far.requires_grad_(), near, torch.ones(1, 1), cap=10.0)
    assert capped.item() == 10.0
    capped.sum().backward()
    assert far.grad.item() == 0.0  # a capped token steers nothing
    # a taught pair's chosen side (from a dataset) is left out of its pair's mean
    pen = pair_kl_penalty(torch.tensor([0.2, 0.9]), torch.tensor([0.4, 0.1]), torch.tensor([True, False]))
    assert pen.tolist() == pytest.approx([0.3, 0.1])


def test_ppo_policy_loss_by_hand():
    from redgym.trainers.losses import ppo_policy_loss

    old = torch.zeros(1, 2)
    new = torch.tensor([[math.log(1.5), math.log(0.9)]])  # ratios 1.5 (clipped to 1.2) and 0.9
    adv = torch.tensor([[1.0, -1.0]])
    loss, clipfrac, approx_kl = ppo_policy_loss(new, old, adv, torch.ones(1, 2), clip=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 ; token 2: max(0.9, 0.9) = 0.9 ; mean -0.15
    assert loss.item() == pytest.approx(-0.15)
    assert clipfrac.item() == pytest.approx(0.5)
    # k3 of old vs new: (r-1) - log r with r = exp(new - old)
    want = ((0.5 - math.log(1.5)) + (-0.1 - math.log(0.9))) / 2
    assert approx_kl.item() == pytest.approx(want)


def test_ppo_value_loss_by_hand():
    from redgym.trainers.losses import ppo_value_loss

    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0]])
    ret = torch.tensor([[0.0, 1.0]])
    # token 1: V clipped to 0.7 -> max(1.0, 0.49) = 1.0 ; token 2: max(1, 1) = 1 ; 0.5 * mean = 0.5
    assert ppo_value_loss(values, old, ret, torch.ones(1, 2), clip=0.2).item() == pytest.approx(0.5)
    values = torch.tensor([[0.9, 0.0]])
    old = torch.tensor([[0.0, 0.0]])
    ret = torch.tensor([[1.0, 0.0]])
    # token 1: unclipped (0.1)^2 = 0.01, clipped V=0.2 -> 0.64 -> max 0.64 ; token 2: 0 ; 0.5 * 0.32 = 0.16
    assert ppo_value_loss(values, old, ret, torch.ones(1, 2), clip=0.2).item() == pytest.approx(0.16)


def test_clip_higher_raises_only_the_upper_bound():
    from redgym.trainers.losses import ppo_policy_loss

    # token 1: ratio 1.5, advantage +1; token 2: ratio 0.5, advantage -1
    old = torch.log(torch.tensor([[0.2, 0.4]]))
    new = torch.log(torch.tensor([[0.3, 0.2]]))
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    # PPO (eps 0.2): token 1 max(-1.5, -1.2) = -1.2; token 2 max(0.5, 0.8) = 0.8; mean -0.2
    assert ppo_policy_loss(new, old, adv, mask, clip=0.2)[0].item() == pytest.approx(-0.2)
    # eps_high 0.28: token 1 -1.28, token 2 unchanged (the lower bound is still 0.8): mean -0.24
    assert ppo_policy_loss(new, old, adv, mask, clip=0.2, clip_high=0.28)[0].item() == pytest.approx(-0.24)
    # eps_high 1.0: token 1 is unclipped (-1.5): mean -0.35, and only token 2 counts as clipped
    loss, clipfrac, _ = ppo_policy_loss(new, old, adv, mask, clip=0.2, clip_high=1.0)
    assert loss.item() == pytest.approx(-0.35) and clipfrac.item() == pytest.approx(0.5)
