import math

import pytest
import torch

from redgym.trainers.losses import dpo_loss, ipo_loss, preference_margin

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


def test_preference_losses_push_the_margin_the_right_way():
    pc = torch.tensor([-1.0], requires_grad=True)
    for fn in (ipo_loss, dpo_loss):
        pc.grad = None
        fn(pc, torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), 0.1).sum().backward()
        assert pc.grad.item() < 0  # gradient descent raises the chosen log-prob
