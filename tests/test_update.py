"""The update GRPO and PPO share (``trainers/update.clipped_epochs``), on worked examples: which samples each micro
batch holds, the clipped surrogate at a known ratio with and without clip-higher, the extra term, and the
non-finite guard. The learning rate is 0 where a number is worked out, so the ratio stays what the test set."""

import math
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from redgym.models.forward import continuation_forward
from redgym.trainers.episodes import Episodes, pad_right_aligned
from redgym.trainers.update import clipped_epochs

K = 3  # every response has 3 tokens, so a micro batch's token mean is the mean of its samples' advantages


class Acc:  # accelerate's Accelerator as one process uses it
    sync_gradients = True

    def accumulate(self, model):
        return nullcontext()

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, norm):
        torch.nn.utils.clip_grad_norm_(params, norm)


class CountingSched:
    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1


def episodes(tiny_lm, advantages, groups, log_ratio=0.0):
    """4 episodes on the tiny model; "old" log-probs are the model's own minus ``log_ratio`` (ratio = e^log_ratio);
    "row" holds each sample's index on every token, so a test can see which samples a micro batch held."""
    ctx = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    resp = [[20, 21, 22], [23, 24, 25], [26, 27, 28], [29, 30, 31]]
    with torch.no_grad():
        out = continuation_forward(tiny_lm.model, ctx, resp, tiny_lm.tokenizer.pad_token_id)
    t = {
        "old": pad_right_aligned(list(out.logps - log_ratio), K),
        "mask": pad_right_aligned(list(out.mask), K),
        "advantages": torch.tensor(advantages, dtype=torch.float32),
        "row": torch.arange(4, dtype=torch.float32)[:, None].expand(4, K).clone(),
    }
    return Episodes(ctx, resp, torch.zeros(4), torch.tensor(groups), tensors=t)


def cfg(**kw):
    base = dict(ppo_epochs=2, micro_batch_size=2, temperature=1.0, clip_range=0.2, clip_range_high=None, ent_coef=0.0)
    return SimpleNamespace(max_grad_norm=1.0, **{**base, **kw})


def run(tiny_lm, ep, c, whole_groups=False, extra=None, lr=0.0):
    policy = SimpleNamespace(model=tiny_lm.model, tokenizer=tiny_lm.tokenizer)
    opt = torch.optim.SGD(tiny_lm.model.parameters(), lr=lr)
    sched, counters, rows = CountingSched(), {}, []
    frame = SimpleNamespace(policy=policy, cfg=c, acc=Acc(), opt=opt, sched=sched)  # the run frame's parts it reads

    def recording(out, mb):  # the extra term: records the micro batch's samples, adds 0.5 (or ``extra``)
        rows.append(sorted(int(r) for r in mb["row"][:, 0]))
        value = torch.tensor(0.5 if extra is None else extra)
        return value, {"extra": value}

    stats = clipped_epochs(
        ep, frame, counters, 0, np.random.default_rng(0), recording, ("row",), whole_groups=whole_groups
    )
    return stats, sched.steps, rows, counters


def test_every_epoch_takes_each_sample_once_in_micro_batches(tiny_lm):
    ep = episodes(tiny_lm, [1.0, -1.0, 2.0, 0.0], [0, 1, 0, 1])
    stats, steps, rows, _ = run(tiny_lm, ep, cfg())
    assert steps == 4  # 2 epochs x (4 samples / 2 a micro batch), one optimizer step each
    assert sorted(rows[0] + rows[1]) == [0, 1, 2, 3] and sorted(rows[2] + rows[3]) == [0, 1, 2, 3]
    # whole groups: each micro batch is one group's two samples
    _, _, rows, _ = run(tiny_lm, ep, cfg(), whole_groups=True)
    assert all(r in ([0, 2], [1, 3]) for r in rows)
    # on-policy (ratio 1): the surrogate is -(mean advantage); averaged over micro batches of equal size, -(1 - 1
    # + 2 + 0) / 4 = -0.5 whatever the order; nothing clipped, the ratio 1 on the first micro batch
    assert stats["policy"] == pytest.approx(-0.5, abs=1e-6)
    assert stats["clipfrac"] == 0 and stats["first_ratio_dev"] == pytest.approx(0, abs=1e-6)
    assert stats["approx_kl"] == pytest.approx(0, abs=1e-6) and stats["extra"] == 0.5


def test_the_surrogate_at_ratio_two_with_and_without_clip_higher(tiny_lm):
    ep = episodes(tiny_lm, [1.0, 1.0, 1.0, 1.0], [0, 0, 1, 1], log_ratio=math.log(2))
    # ratio 2, advantage 1: max(-2, -clip(2, 0.8, 1.2)) = -1.2, every token clipped
    stats, _, _, _ = run(tiny_lm, ep, cfg())
    assert stats["policy"] == pytest.approx(-1.2, abs=1e-5) and stats["clipfrac"] == pytest.approx(1.0)
    # clip-higher 1.5: the ratio may reach 2.5, so 2 is unclipped: -2 and nothing clipped (at 1.0 the bound sat
    # exactly on the ratio, and float rounding clipped one token in 24 on another machine)
    stats, _, _, _ = run(tiny_lm, ep, cfg(clip_range_high=1.5))
    assert stats["policy"] == pytest.approx(-2.0, abs=1e-5) and stats["clipfrac"] == 0
    # approx_kl is k3 of old vs new: (r - 1) - log r = 1 - log 2; the first micro batch's ratio deviates by 1
    assert stats["approx_kl"] == pytest.approx(1 - math.log(2), abs=1e-5)
    assert stats["first_ratio_dev"] == pytest.approx(1.0, abs=1e-5)


def test_per_token_advantages_are_used_as_they_are(tiny_lm):
    ep = episodes(tiny_lm, [0.0] * 4, [0, 0, 1, 1])
    ep.tensors["advantages"] = torch.tensor([[0.0, 0.0, 3.0]] * 4)  # PPO's (B, K): only the last token counts
    stats, _, _, _ = run(tiny_lm, ep, cfg(ppo_epochs=1))
    assert stats["policy"] == pytest.approx(-1.0, abs=1e-6)  # -(0 + 0 + 3) / 3


def test_a_non_finite_loss_skips_its_micro_batch_and_counts_it(tiny_lm):
    ep = episodes(tiny_lm, [1.0, -1.0, 2.0, 0.0], [0, 1, 0, 1])
    before = [p.detach().clone() for p in tiny_lm.model.parameters()]
    stats, steps, _, counters = run(tiny_lm, ep, cfg(ppo_epochs=1), extra=float("nan"), lr=1.0)
    assert steps == 0 and counters["nonfinite_skipped"] == 2 and math.isnan(stats["policy"])
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_lm.model.parameters()))


def test_summed_terms_add_their_losses_and_log_every_value():
    from redgym.trainers.update import summed

    def a(out, mb):
        return torch.tensor(1.5), {"value": torch.tensor(3.0)}

    def b(out, mb):
        return torch.tensor(0.25), {"kl": torch.tensor(0.5)}

    loss, logged = summed(a, b)(None, {})
    assert float(loss) == 1.75 and {k: float(v) for k, v in logged.items()} == {"value": 3.0, "kl": 0.5}


def test_kl_to_reference_is_the_weighted_masked_mean_k3():
    from redgym.trainers.update import kl_to_reference

    # tokens: pi 0.5 vs ref 0.25 -> log 2 - 0.5; pi = ref -> 0; the third is padding; mean (log 2 - 0.5) / 2, x 0.3
    logps = torch.tensor([[math.log(0.5), math.log(0.2), 0.0]])
    mb = {"ref": torch.tensor([[math.log(0.25), math.log(0.2), -9.0]]), "mask": torch.tensor([[1.0, 1.0, 0.0]])}
    loss, logged = kl_to_reference(0.3)(SimpleNamespace(logps=logps), mb)
    assert float(logged["kl"]) == pytest.approx((math.log(2) - 0.5) / 2)
    assert float(loss) == pytest.approx(0.3 * (math.log(2) - 0.5) / 2)
