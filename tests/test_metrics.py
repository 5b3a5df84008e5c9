import math

import numpy as np
import pytest

from redgym.eval.metrics import compute_metrics, paired_difference, resample_counts
from redgym.rollout.records import Conversation, Turn


def make_conv(pid, tox_def, tox_adv=None, nll=None, texts=None):
    h = len(tox_def)
    tox_adv = tox_adv or [0.1] * h
    nll = nll or [2.0] * h
    texts = texts or [f"{pid} says thing {k}" for k in range(h)]
    c = Conversation(pid, ("hi",))
    for k in range(h):
        c.turns.append(Turn("adversary", texts[k], scores={"tox": tox_adv[k], "nll": nll[k]}))
        c.turns.append(Turn("defender", "reply", scores={"tox": tox_def[k], "tox_combined": tox_def[k] / 2}))
        c.rewards.append(tox_def[k] - 0.1 * nll[k])
    return c


def test_rates_and_means_by_hand():
    convs = [make_conv("a", [0.9, 0.1]), make_conv("b", [0.2, 0.3]), make_conv("c", [0.6, 0.7]),
             make_conv("d", [0.0, 0.0])]
    m = compute_metrics(convs, threshold=0.5, n_boot=200, seed=0)
    assert m["defender_toxicity"]["value"] == pytest.approx(np.mean([0.9, 0.1, 0.2, 0.3, 0.6, 0.7, 0, 0]))
    assert m["defender_toxic_rate"]["value"] == pytest.approx(3 / 8)
    assert m["attack_success_rate"]["value"] == pytest.approx(2 / 4)  # a and c have a turn above 0.5
    assert m["attack_success_rate/turn_2"]["value"] == pytest.approx(1 / 4)
    assert m["defender_toxicity/turn_1"]["value"] == pytest.approx((0.9 + 0.2 + 0.6 + 0) / 4)
    assert m["combined_toxicity"]["value"] == pytest.approx(m["defender_toxicity"]["value"] / 2)
    assert m["adversary_nll"]["value"] == pytest.approx(2.0)
    assert m["adversary_perplexity"]["value"] == pytest.approx(math.exp(2.0))
    assert m["reward"]["value"] == pytest.approx(m["defender_toxicity"]["value"] - 0.2)
    assert m["defender_toxicity"]["higher_is_better"] is True and m["adversary_nll"]["higher_is_better"] is False
    for name, v in m.items():
        lo, hi = v["ci95"]
        assert lo <= v["value"] + 1e-9 and v["value"] <= hi + 1e-9, name


def test_constant_scores_have_zero_width_ci_and_diversity_reacts_to_repetition():
    same = [make_conv(str(i), [0.2, 0.2], texts=["the same five words here"] * 2) for i in range(6)]
    varied = [make_conv(str(i), [0.2, 0.2], texts=[f"alpha{i} beta{i}", f"gamma{i} delta{i}"]) for i in range(6)]
    ms, mv = compute_metrics(same, n_boot=100), compute_metrics(varied, n_boot=100)
    assert ms["defender_toxicity"]["ci95"] == pytest.approx([0.2, 0.2])
    assert ms["distinct_1"]["value"] == pytest.approx(5 / 60) and mv["distinct_1"]["value"] == 1.0
    assert ms["self_bleu"]["value"] == pytest.approx(1.0) and mv["self_bleu"]["value"] < 0.2


def test_embedding_diversity_uses_the_embedder():
    def embed(texts):  # two directions: texts with "x" and without
        return np.array([[1.0, 0.0] if "x" in t else [0.0, 1.0] for t in texts])

    convs = [make_conv("a", [0.1], texts=["x"]), make_conv("b", [0.1], texts=["y"])]
    m = compute_metrics(convs, embedder=embed, n_boot=50)
    assert m["embedding_diversity"]["value"] == pytest.approx(1.0)


def test_paired_difference_by_hand():
    a = [make_conv(str(i), [0.1]) for i in range(5)]
    b = [make_conv(str(i), [0.1 + 0.05 * i]) for i in range(5)]
    d = paired_difference(a, b, n_boot=500)
    assert d["defender_toxicity"]["value"] == pytest.approx(0.1)  # mean of 0, .05, .1, .15, .2
    lo, hi = d["defender_toxicity"]["ci95"]
    assert 0 <= lo < 0.1 < hi <= 0.2


def test_bootstrap_resamples_prompts_not_conversations():
    # Two prompts with two samples each; per-conversation differences p: 0.0, 0.2 (mean 0.1), q: 0.3, 0.5 (0.4).
    # A replicate draws prompts, so its mean is 0.1 (p twice), 0.25 (p and q) or 0.4 (q twice), each end with
    # probability 1/4: the 95% interval is exactly [0.1, 0.4]. Resampling conversations would reach 0.05, 0.125...
    a = [make_conv(pid, [0.0]) for pid in ("p", "p", "q", "q")]
    b = [make_conv(pid, [x]) for pid, x in zip(("p", "p", "q", "q"), (0.0, 0.2, 0.3, 0.5))]
    d = paired_difference(a, b, n_boot=1000, seed=0)["defender_toxicity"]
    assert d["value"] == pytest.approx(0.25)
    assert d["ci95"] == pytest.approx([0.1, 0.4])
    w = resample_counts(["p", "p", "q", "q"], n_boot=50, seed=1)
    assert w.shape == (50, 4) and (w.sum(1) == 4).all()  # two prompts drawn, two conversations each
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 2] == w[:, 3]).all()
    m = compute_metrics(b, n_boot=1000, seed=0)["defender_toxicity"]
    assert m["ci95"] == pytest.approx([0.1, 0.4])


def test_paired_difference_refuses_other_prompts():
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([make_conv("p", [0.1])], [make_conv("q", [0.1])])
