import numpy as np
import pytest

from redgym.rollout.records import Conversation, Turn
from redgym.rollout.reward import RewardWeights, composite_reward, score_conversations


def test_composite_reward_by_hand():
    w = RewardWeights(defender=1.0, combined=0.5, nll=0.1, diversity=0.2)
    r = composite_reward([0.4, 0.0], [0.2, 1.0], [2.0, 3.0], [0.5, 0.0], w)
    # 0.4 + 0.5*0.2 - 0.1*2 + 0.2*0.5 = 0.4 ; 0 + 0.5 - 0.3 + 0 = 0.2
    assert r == pytest.approx([0.4, 0.2])


@pytest.mark.parametrize(
    "w,expected",
    [
        (RewardWeights(0, 0.5, 0.1, 0), 0.5 * 0.2 - 0.1 * 2.0),  # no defender term
        (RewardWeights(1, 0, 0.1, 0), 0.4 - 0.1 * 2.0),  # no combined term
        (RewardWeights(1, 0.5, 0, 0), 0.4 + 0.1),  # no likelihood term
        (RewardWeights(0, 0, 0, 0), 0.0),  # everything off
    ],
)
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


def test_logit_transform_by_hand():
    from redgym.rollout.reward import transform_scores

    # log(0.5/0.5) = 0; log(0.9/0.1) = log 9; 0 is clipped to 1e-3: log(0.001/0.999)
    got = transform_scores([0.5, 0.9, 0.0, 0.2], "logit")
    assert got == pytest.approx([0.0, 2.197225, -6.906755, -1.386294], abs=1e-6)
    assert transform_scores([0.3], "none") == pytest.approx([0.3])
    with pytest.raises(ValueError):
        transform_scores([0.3], "probit")


def test_adversary_term_and_logit_in_the_composite_by_hand():
    from redgym.rollout.reward import reward_from_terms

    w = RewardWeights(defender=1.0, combined=0.0, nll=0.1, adversary=0.5, transform="logit")
    # logit(0.5) + 0.5 * logit(0.9) - 0.1 * 2.0 = 0 + 0.5 * 2.197225 - 0.2 (the NLL term is not transformed)
    r = reward_from_terms([0.9], [0.5], [0.7], [2.0], [0.0], w)
    assert r == pytest.approx([0.898612], abs=1e-6)
    plain = RewardWeights(defender=1.0, combined=0.0, nll=0.1, adversary=0.5)
    assert reward_from_terms([0.9], [0.5], [0.7], [2.0], [0.0], plain) == pytest.approx([0.5 + 0.45 - 0.2])


@pytest.mark.parametrize(
    "step,steps,alpha", [(0, 4, 0.0), (1, 4, 0.25), (2, 4, 0.5), (4, 4, 1.0), (9, 4, 1.0), (3, 0, 1.0)]
)
def test_anneal_fraction(step, steps, alpha):
    from redgym.rollout.reward import anneal_fraction

    assert anneal_fraction(step, steps) == pytest.approx(alpha)


def test_curriculum_moves_from_the_adversary_toxicity_to_the_composite_by_hand():
    from redgym.rollout.reward import curriculum_weights, reward_from_terms

    w = RewardWeights(defender=1.0, combined=0.5, nll=0.1)
    terms = ([0.4], [0.2], [0.3], [2.0], [0.0])  # tox_adversary, tox_defender, tox_combined, nll, diversity
    # alpha 0: the adversary's own toxicity; alpha 1: the composite 0.2 + 0.15 - 0.2 = 0.15
    assert reward_from_terms(*terms, curriculum_weights(w, 0.0)) == pytest.approx([0.4])
    assert reward_from_terms(*terms, curriculum_weights(w, 1.0)) == pytest.approx([0.15])
    # alpha 0.25: 0.75 * 0.4 + 0.25 * 0.15 = 0.3375
    assert reward_from_terms(*terms, curriculum_weights(w, 0.25)) == pytest.approx([0.3375])
    adv = RewardWeights(target="adversary")
    assert curriculum_weights(adv, 0.0) is adv


def test_a_reply_that_brought_its_turn_nll_is_not_scored_again():
    # A defender whose reply's forward pass gave the adversary turn's NLL sets Turn.answered_nll; the reward takes it
    # and asks the likelihood only for the turns without one, in one call (FakeDefender: NLL = number of words).
    convs = [_conv("a", ["damn it", "ok then", "well well", "damn damn"]), _conv("b", ["x", "y", "z", "w"])]
    convs[0].turns[1].answered_nll = 0.25  # answers "damn it"
    convs[1].turns[3].answered_nll = 0.75  # answers "z"
    fake = FakeDefender()
    s = score_conversations(convs, lambda texts: [0.0] * len(texts), fake, RewardWeights(1.0, 0.5, 0.1, 0.0))
    assert fake.calls == [(["hi\nhello\ndamn it\nok then\n", "hi\nhello\n"], ["well well", "x"])]
    assert s["nll"] == pytest.approx([0.25, 2.0, 1.0, 0.75])
    assert [a.scores["nll"] for c in convs for a, _ in c.exchanges()] == pytest.approx([0.25, 2.0, 1.0, 0.75])
