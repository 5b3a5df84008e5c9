import numpy as np
import pytest

from redgym.rollout.records import Conversation, Turn
from redgym.rollout.reward import RewardWeights, composite_reward, score_conversations


def test_composite_reward_by_hand():
    w = RewardWeights(defender=1.0, combined=0.5, nll=0.1, diversity=0.2)
    r = composite_reward([0.4, 0.0], [0.2, 1.0], [2.0, 3.0], [0.5, 0.0], w)
    # 0.4 + 0.5*0.2 - 0.1*2 + 0.2*0.5 = 0.4 ; 0 + 0.5 - 0.3 + 0 = 0.2
    assert r == pytest.approx([0.4, 0.2])


@pytest.mark.parametrize("w,expected", [
    (RewardWeights(0, 0.5, 0.1, 0), 0.5 * 0.2 - 0.1 * 2.0),  # no defender term
    (RewardWeights(1, 0, 0.1, 0), 0.4 - 0.1 * 2.0),  # no combined term
    (RewardWeights(1, 0.5, 0, 0), 0.4 + 0.1),  # no likelihood term
    (RewardWeights(0, 0, 0, 0), 0.0),  # everything off
])
def test_zero_weight_switches_a_term_off(w, expected):
    assert composite_reward([0.4], [0.2], [2.0], [np.nan], w) == pytest.approx([expected])


class FakeDefender:
    """Records what the likelihood term asked for and answers a fixed NLL per continuation length."""

    def __init__(self):
        self.calls = []

    def continuation_nll(self, contexts, continuations, batch_size=16):
        self.calls.append((list(contexts), list(continuations)))
        return [float(len(c.split())) for c in continuations]


def _conv(pid, texts):
    c = Conversation(pid, ("hi", "hello"))
    for i, t in enumerate(texts):
        c.turns.append(Turn("adversary" if i % 2 == 0 else "defender", t))
    return c


def test_score_conversations_fills_every_term_in_one_batched_call():
    scorer_calls = []

    def scorer(texts):  # toxicity = share of the word "damn"
        scorer_calls.append(list(texts))
        return [t.split().count("damn") / max(1, len(t.split())) for t in texts]

    convs = [_conv("a", ["damn it", "ok then", "well well", "damn damn"]), _conv("b", ["x", "y", "z", "w"])]
    fake = FakeDefender()
    score_conversations(convs, scorer, fake, RewardWeights(1.0, 0.5, 0.1, 0.0))
    assert len(scorer_calls) == 1 and len(fake.calls) == 1  # batched over all exchanges
    ctx, cont = fake.calls[0]
    assert cont == ["damn it", "well well", "x", "z"]
    assert ctx[0] == "hi\nhello\n" and ctx[1] == "hi\nhello\ndamn it\nok then\n"  # plain transcript so far
    a0, d0 = convs[0].exchanges()[0]
    assert a0.scores == {"tox": 0.5, "nll": 2.0}
    assert d0.scores["tox"] == 0.0 and d0.scores["tox_combined"] == pytest.approx(1 / 4)
    # exchange 2 of conv a: tox_def 1.0, combined "well well damn damn" 0.5, nll 2 -> 1 + 0.25 - 0.2
    assert convs[0].rewards == pytest.approx([0 + 0.5 * 0.25 - 0.2, 1.0 + 0.25 - 0.2])
    assert convs[0].reward_terms[1] == {"tox_defender": 1.0, "tox_combined": 0.5, "nll": 2.0}


def test_adversary_target_rewards_the_adversary_text_only():
    def scorer(texts):
        return [0.9 if "rude" in t else 0.1 for t in texts]

    convs = [_conv("a", ["rude words", "calm reply"])]
    score_conversations(convs, scorer, FakeDefender(), RewardWeights(target="adversary"))
    assert convs[0].rewards == [0.9]
