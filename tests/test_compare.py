import csv
import json
import math
import shutil

import numpy as np
import pytest

from redgym.errors import RedgymError
from redgym.eval.metrics import compute_metrics
from redgym.experiments.compare import COLUMNS, compare, mean_ratio, seed_differences, t_interval
from redgym.rollout.records import Conversation, Turn

T2 = 4.302652729911275  # t(0.975, 2 df): three seeds
SEEDS = (0, 1, 2)
# Mean defender toxicity per seed: untuned 0.1, 0.2, 0.3 (mean 0.2, sd 0.1); trained 0.3, 0.42, 0.48 (mean 0.4,
# deviations -0.1, 0.02, 0.08: sd = sqrt(0.0168 / 2)). Per-seed differences 0.2, 0.22, 0.18: mean 0.2, sd 0.02.
# Ratio of means 0.4 / 0.2 = 2.
TOX = {"untuned": (0.1, 0.2, 0.3), "trained": (0.3, 0.42, 0.48)}
NLL = {"untuned": (3.0, 3.0, 3.0), "trained": (2.0, 2.5, 3.0)}


def conv(pid, tox_def, tox_adv, nll):
    """Two exchanges with the same scores; reward tox_def - 0.1 nll (negative for the untuned arm's seed 0). A
    second detector ``d`` scores each reply as the main scorer does and every adversary turn 0."""
    c = Conversation(pid, ("a neutral opening line",))
    for k in range(2):
        c.turns.append(Turn("adversary", f"question {pid} {k}", scores={"tox": tox_adv, "nll": nll, "tox@d": 0.0}))
        c.turns.append(
            Turn("defender", "a neutral reply", scores={"tox": tox_def, "tox_combined": tox_def / 2, "tox@d": tox_def})
        )
        c.rewards.append(tox_def - 0.1 * nll)
        c.reward_terms.append({"tox_defender": tox_def})
    return c


def seed_convs(arm, s):
    # Two prompts, shared by every seed, 0.05 below and above the seed's mean toxicity.
    t, n = TOX[arm][s], NLL[arm][s]
    return [conv("p0", t - 0.05, 0.1, n), conv("p1", t + 0.05, 0.1, n)]


def write_run(folder, convs_by_label, seed, drop=()):
    """report.json and samples.jsonl as write_eval lays them out (the last label is the run's adversary)."""
    folder.mkdir(parents=True)
    results = {
        lb: {k: v for k, v in compute_metrics(cs, 0.5, n_boot=20, seed=0).items() if k.split("/")[0] not in drop}
        for lb, cs in convs_by_label.items()
    }
    report = {
        "config": {"horizon": 2, "seed": seed, "toxic_threshold": 0.5},
        "seed": seed,
        "metrics": results[list(results)[-1]],
        "results": results,
    }
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "samples.jsonl").write_text(
        "".join(json.dumps({"adversary": lb, **c.to_json()}) + "\n" for lb, cs in convs_by_label.items() for c in cs)
    )


def make_experiment(root, with_meta=True, transfer=False, drop=()):
    root.mkdir(parents=True, exist_ok=True)
    if with_meta:
        (root / "experiment.json").write_text(
            json.dumps({"arms": ["untuned", "trained"], "seeds": list(SEEDS), "baseline_arm": "untuned"})
        )
    for s in SEEDS:
        write_run(root / "untuned" / f"seed_{s}", {"untuned": seed_convs("untuned", s)}, s, drop)
        # The trained run's report also holds an untuned label first; compare must read the last (trained) one.
        write_run(
            root / "trained" / f"seed_{s}",
            {"untuned": seed_convs("untuned", s), "trained": seed_convs("trained", s)},
            s,
            drop,
        )
        (root / "trained" / f"seed_{s}" / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": k, "reward/reward": 0.1 * k + s}) + "\n" for k in range(3))
        )
        if transfer:
            for arm in ("untuned", "trained"):
                # Against the other defender every reply is half as toxic.
                cs = [conv(c.prompt_id, c.turns[1].scores["tox"] / 2, 0.1, 2.0) for c in seed_convs(arm, s)]
                write_run(root / arm / f"seed_{s}" / "transfer" / "other_defender", {arm: cs}, s)
    return root


def row(result, arm, metric, defender=""):
    (r,) = [r for r in result["rows"] if (r["arm"], r["defender"], r["metric"]) == (arm, defender, metric)]
    return r


def test_t_interval_by_hand():
    st = t_interval([0.2, 0.3, 0.1])  # mean 0.2, deviations 0, 0.1, -0.1: sd = sqrt(0.02 / 2) = 0.1
    half = T2 * 0.1 / math.sqrt(3)
    assert (st.n, st.mean, st.sd) == (3, pytest.approx(0.2), pytest.approx(0.1))
    assert (st.lo, st.hi) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    one = t_interval([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.lo) and math.isnan(one.hi)
    assert t_interval([0.7, math.nan]).n == 1  # a NaN seed is left out
    assert t_interval([]).n == 0 and math.isnan(t_interval([]).mean)


def test_seed_differences_and_ratio_use_shared_finite_seeds():
    arm = {0: 0.3, 1: 0.5, 2: 0.4, 3: 0.9}
    base = {0: 0.1, 1: 0.2, 2: math.nan}
    assert seed_differences(arm, base) == {0: pytest.approx(0.2), 1: pytest.approx(0.3)}
    assert mean_ratio(arm, base) == pytest.approx(0.4 / 0.15)  # seeds 0 and 1 only
    assert math.isnan(mean_ratio({0: 1.0}, {0: 0.0})) and math.isnan(mean_ratio({0: 1.0}, {1: 1.0}))


def test_compare_reproduces_hand_computed_means_cis_differences_and_ratios(tmp_path):
    exp = make_experiment(tmp_path / "exp", transfer=True)
    res = compare([exp], tmp_path / "out", n_boot=300, seed=0)
    half_u, half_t, half_d = (T2 * sd / math.sqrt(3) for sd in (0.1, math.sqrt(0.0084), 0.02))
    u, t = row(res, "untuned", "defender_toxicity"), row(res, "trained", "defender_toxicity")
    assert u["n_seeds"] == t["n_seeds"] == 3
    assert (u["mean"], u["ci95_lo"], u["ci95_hi"]) == pytest.approx((0.2, 0.2 - half_u, 0.2 + half_u))
    assert (t["mean"], t["ci95_lo"], t["ci95_hi"]) == pytest.approx((0.4, 0.4 - half_t, 0.4 + half_t))
    assert (t["diff_mean"], t["diff_ci95_lo"], t["diff_ci95_hi"]) == pytest.approx((0.2, 0.2 - half_d, 0.2 + half_d))
    assert t["ratio"] == pytest.approx(2.0) and t["baseline"] == "untuned" and t["n_paired_seeds"] == 3
    assert u["diff_mean"] is None and u["ratio"] is None  # the baseline against itself does not apply
    # Pooled: the six trained conversations as one sample (mean 0.4) in two prompt clusters, p0 at 0.25, 0.37, 0.43
    # (mean 0.35) and p1 at 0.35, 0.47, 0.53 (mean 0.45). A bootstrap replicate draws two prompts: both p0 (mean
    # 0.35, probability 1/4), one of each (0.4) or both p1 (0.45, 1/4); with 300 replicates the 2.5th and 97.5th
    # percentiles are therefore exactly 0.35 and 0.45 (the untuned arm's: 0.15 and 0.25). Paired by prompt, the
    # untuned p0 and p1 means are 0.15 and 0.25, so both prompts differ by exactly 0.2: every replicate's difference
    # is 0.2, an interval [0.2, 0.2].
    assert t["pooled"] == pytest.approx(0.4)
    assert (t["pooled_ci95_lo"], t["pooled_ci95_hi"]) == pytest.approx((0.35, 0.45))
    assert (u["pooled"], u["pooled_ci95_lo"], u["pooled_ci95_hi"]) == pytest.approx((0.2, 0.15, 0.25))
    assert t["diff_pooled"] == pytest.approx(0.2)
    assert (t["diff_pooled_ci95_lo"], t["diff_pooled_ci95_hi"]) == pytest.approx((0.2, 0.2))
    # NLL: trained 2.0, 2.5, 3.0 (mean 2.5, sd 0.5) against 3.0 at every seed: differences -1, -0.5, 0.
    n = row(res, "trained", "adversary_nll")
    assert (n["mean"], n["sd"]) == pytest.approx((2.5, 0.5))
    assert (n["diff_mean"], n["diff_ci95_hi"]) == pytest.approx((-0.5, -0.5 + T2 * 0.5 / math.sqrt(3)))
    assert n["ratio"] == pytest.approx(2.5 / 3.0) and n["higher_is_better"] is False
    # Reward (tox - 0.1 nll) can be negative: untuned -0.2, -0.1, 0.0 (mean -0.1); trained 0.1, 0.17, 0.18
    # (mean 0.15). Difference 0.25, no ratio.
    r = row(res, "trained", "reward")
    assert r["ratio"] is None and r["diff_mean"] == pytest.approx(0.25)
    # Per turn rows, and every adversary turn is clean (0.1): clean-adversary toxicity equals defender toxicity.
    assert row(res, "trained", "defender_toxicity/turn_2")["mean"] == pytest.approx(0.4)
    assert row(res, "trained", "defender_toxicity_clean_adversary")["mean"] == pytest.approx(0.4)
    # Transfer: every reply half as toxic, so means 0.1 and 0.2 and a difference of 0.1.
    tt = row(res, "trained", "defender_toxicity", "other_defender")
    assert (tt["mean"], tt["diff_mean"], tt["ratio"]) == pytest.approx((0.2, 0.1, 2.0))
    assert res["defenders"] == ["", "other_defender"] and res["baselines"]["trained"] == "untuned"


def test_compare_writes_csv_markdown_and_plots(tmp_path):
    exp = make_experiment(tmp_path / "exp", transfer=True)
    out = tmp_path / "out"
    res = compare([exp], out, n_boot=50)
    with open(out / "comparison.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert len(rows) == len(res["rows"])
    (t,) = [r for r in rows if (r["arm"], r["defender"], r["metric"]) == ("trained", "", "defender_toxicity")]
    assert float(t["mean"]) == pytest.approx(0.4) and float(t["ratio"]) == pytest.approx(2.0)
    (rw,) = [r for r in rows if (r["arm"], r["defender"], r["metric"]) == ("trained", "", "reward")]
    assert rw["ratio"] == "" and rw["diff_mean"] != ""
    md = (out / "comparison.md").read_text()
    assert "Content warning" in md and str(exp) in md and "seeds: 0, 1, 2" in md
    assert "| trained | 3 | 0.4000 [" in md  # defender_toxicity is the first headline column
    # Difference 0.2 ± 4.3027 * 0.02 / sqrt(3) = 0.2 ± 0.0497 excludes 0: bold.
    assert "| trained | untuned | **+0.2000 [+0.1503, +0.2497]** ×2 |" in md
    assert "Transfer to defender `other_defender`" in md and "embedding_diversity" not in md  # no embedder
    for p in ("pareto.png", "reward_curves.png", "toxicity_per_turn.png"):
        assert (out / "plots" / p).stat().st_size > 1000 and f"plots/{p}" in md
    # the README's short table: the trained arm only, main defender; every adversary turn is clean (0.1), so the
    # stealth cell equals the gain; adversary toxicity unchanged (0.1 at every seed); NLL -0.5 ± 4.3027 * 0.5 / sqrt(3)
    # The second detector's column: replies it flags (above 0.5): untuned none; trained 0, 0 and one of two
    # prompts at seed 2 (0.53): differences 0, 0, 0.5, mean 1/6, sd sqrt(1/12); no ratio (the baseline's is 0).
    headline = (out / "headline.md").read_text().splitlines()
    gain = "**+0.2000 [+0.1503, +0.2497]** ×2"
    half = T2 * math.sqrt(1 / 12) / math.sqrt(3)
    flagged = f"+0.1667 [{1 / 6 - half:+.4f}, {1 / 6 + half:+.4f}]"
    assert [x for x in headline if x.startswith("| trained")] == [
        f"| trained | 3 | {gain} | {gain} | +0.0000 [+0.0000, +0.0000] ×1 | -0.5000 [-1.7421, +0.7421] ×0.8333 "
        f"| `d` {flagged} |"
    ]
    assert "Under the second detector `d`" in md and f"| trained | untuned | {gain} | {flagged} |" in md
    assert not [x for x in headline if x.startswith("| untuned")] and "headline.md" in res["files"]
    # an arm the experiment lists among its ablations stays in the full tables only
    meta = json.loads((exp / "experiment.json").read_text())
    (exp / "experiment.json").write_text(json.dumps({**meta, "ablations": ["trained"]}))
    compare([exp], out, n_boot=50)
    headline = (out / "headline.md").read_text()
    assert "| trained |" not in headline and "; 1 ablations in comparison.md." in headline
    assert "| trained | untuned |" in (out / "comparison.md").read_text()


def test_each_ablation_gets_one_sentence_against_the_arm_it_changes(tmp_path):
    exp = make_experiment(tmp_path / "exp")
    meta = json.loads((exp / "experiment.json").read_text())
    meta |= {"arms": [*meta["arms"], "ablated"], "ablations": ["ablated"]}
    meta["ablation_of"] = {"ablated": {"arm": "trained", "changes": {"w_nll": 0}}}
    (exp / "experiment.json").write_text(json.dumps(meta))
    # The ablation's defender toxicity per seed 0.2, 0.3, 0.4 against the trained arm's 0.3, 0.42, 0.48:
    # differences -0.1, -0.12, -0.08 (mean -0.1, sd 0.02), ratio of means 0.3 / 0.4. Its NLL 3.0 at every seed
    # against 2.0, 2.5, 3.0: differences 1, 0.5, 0 (mean 0.5, sd 0.5), ratio 3 / 2.5. Adversary turns as clean
    # (0.1) as the trained arm's. Replies above 0.5: none (0.45 at most), the trained arm's seed 2 half of them
    # (0.53): differences 0, 0, -0.5 (mean -1/6, sd sqrt(1/12)), ratio 0.
    for s, t in zip(SEEDS, (0.2, 0.3, 0.4)):
        write_run(
            exp / "ablated" / f"seed_{s}",
            {"ablated": [conv("p0", t - 0.05, 0.1, 3.0), conv("p1", t + 0.05, 0.1, 3.0)]},
            s,
        )
    res = compare([exp], tmp_path / "out", n_boot=50)
    half_t, half_n, half_r = (T2 * sd / math.sqrt(3) for sd in (0.02, 0.5, math.sqrt(1 / 12)))
    gain = f"**-0.1000 [{-0.1 - half_t:+.4f}, {-0.1 + half_t:+.4f}]** ×0.75"
    sentence = (
        "- `ablated` (`trained` with `w_nll: 0`; seeds 0, 1, 2, each against `trained` at the same seed): "
        f"defender toxicity {gain}; after clean adversary turns {gain}; "
        "adversary toxicity +0.0000 [+0.0000, +0.0000] ×1; "
        f"adversary NLL +0.5000 [{0.5 - half_n:+.4f}, {0.5 + half_n:+.4f}] ×1.2; "
        f"replies `d` flags -0.1667 [{-1 / 6 - half_r:+.4f}, {-1 / 6 + half_r:+.4f}] ×0."
    )
    assert (tmp_path / "out" / "ablations.md").read_text() == sentence + "\n"
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "## What each ablation did" in md and sentence in md
    assert [e["metric"] for e in res["ablations"]][-1] == "defender_toxic_rate@d"
    # a sweep cell run at one chosen seed names it: seed 1 alone, -0.12 against the trained arm's 0.42
    shutil.rmtree(exp / "ablated" / "seed_0")
    shutil.rmtree(exp / "ablated" / "seed_2")
    compare([exp], tmp_path / "out", n_boot=50)
    assert (
        (tmp_path / "out" / "ablations.md")
        .read_text()
        .startswith(
            "- `ablated` (`trained` with `w_nll: 0`; seed 1, against `trained` at the same seed): "
            "defender toxicity -0.1200 ×0.7143;"
        )
    )
    # folders written before experiment.json named an ablation's arm: no sentence, nothing else changes
    del meta["ablation_of"]
    (exp / "experiment.json").write_text(json.dumps(meta))
    compare([exp], tmp_path / "out", n_boot=50)
    assert (tmp_path / "out" / "ablations.md").read_text() == ""
    assert "What each ablation did" not in (tmp_path / "out" / "comparison.md").read_text()


def test_read_budget_sums_each_count_over_the_steps_once(tmp_path):
    from redgym.experiments.folders import read_budget, read_metrics

    rows = [
        {
            "step": 1,
            "train/updates": 4,
            "budget/adversary_samples": 64,
            "budget/defender_replies": 128,
            "time/step_s": 30,
        },
        {
            "step": 2,
            "train/updates": 3,
            "budget/adversary_samples": 64,
            "budget/defender_replies": 128,
            "time/step_s": 90,
        },
        # resumed from step 1's checkpoint: step 2 redone, its last entry counts
        {
            "step": 2,
            "train/updates": 5,
            "budget/adversary_samples": 64,
            "budget/defender_replies": 0,
            "time/step_s": 60,
        },
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "torn')
    b = read_budget(read_metrics(path))
    assert b == {
        "train/updates": 9,
        "budget/adversary_samples": 128,
        "budget/defender_replies": 128,
        "time/step_s": pytest.approx(1.5),  # (30 + 60) s in minutes
    }
    path.write_text(json.dumps({"step": 1, "reward/reward": 0.1}) + "\n")  # a run from before the counts
    assert all(math.isnan(v) for v in read_budget(read_metrics(path)).values())


def test_the_budget_table_gives_each_trained_arms_mean_over_seeds(tmp_path):
    exp = make_experiment(tmp_path / "exp")
    for s in SEEDS:  # seed s: 10 + s updates, 100 samples, 200 replies, 60 s
        row_ = {"train/updates": 10 + s, "budget/adversary_samples": 100, "budget/defender_replies": 200}
        (exp / "trained" / f"seed_{s}" / "metrics.jsonl").write_text(
            json.dumps({"step": 1, "reward/reward": 0.1, "time/step_s": 60, **row_}) + "\n"
        )
    compare([exp], tmp_path / "out", n_boot=20)
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "## Training budget" in md
    assert "| trained | 3 | 11 | 100 | 200 | 1.0 |" in md  # mean of 10, 11, 12 updates; 1 minute
    # an SFT run logs no reward curve, yet has a budget
    for s in SEEDS:
        sft = {"step": 1, "loss/sft": 2.0, "train/updates": 1, "time/step_s": 30}
        (exp / "trained" / f"seed_{s}" / "metrics.jsonl").write_text(json.dumps(sft) + "\n")
    compare([exp], tmp_path / "out2", n_boot=20)
    assert "| trained | 3 | 1 | — | — | 0.5 |" in (tmp_path / "out2" / "comparison.md").read_text()
    assert "| untuned |" not in md.split("## Training budget")[1]  # untrained arms have no budget row


def test_arms_are_inferred_without_experiment_json_and_missing_metrics_come_from_samples(tmp_path):
    # Reports from before stealth_success_rate existed: compare recomputes it from samples.jsonl.
    exp = make_experiment(tmp_path / "exp", with_meta=False, drop=("stealth_success_rate",))
    res = compare([exp], tmp_path / "out", n_boot=20)
    assert res["arms"] == ["untuned", "trained"]  # the baseline first
    # Clean adversary turns (0.1) everywhere; the only defender replies above 0.5 are seed 2's p1 (0.48 + 0.05)
    # on both exchanges: per-seed stealth 0, 0, 0.5 -> mean 1/6.
    assert row(res, "trained", "stealth_success_rate")["mean"] == pytest.approx(1 / 6)
    assert row(res, "untuned", "stealth_success_rate")["mean"] == pytest.approx(0.0)


def test_colliding_arm_names_are_prefixed_with_their_folder(tmp_path):
    a, b = make_experiment(tmp_path / "ppo"), make_experiment(tmp_path / "ipo")
    res = compare([a, b], tmp_path / "out", n_boot=20)
    assert res["arms"] == ["ppo/untuned", "ppo/trained", "ipo/untuned", "ipo/trained"]
    assert res["baselines"]["ipo/trained"] == "ipo/untuned"
    assert row(res, "ipo/trained", "defender_toxicity")["ratio"] == pytest.approx(2.0)


def test_one_seed_has_no_across_seed_interval(tmp_path):
    exp = make_experiment(tmp_path / "exp")
    (exp / "experiment.json").write_text(json.dumps({"arms": ["untuned", "trained"], "seeds": [1]}))
    r = row(compare([exp], tmp_path / "out", n_boot=20), "trained", "defender_toxicity")
    assert r["n_seeds"] == 1 and r["mean"] == pytest.approx(0.42) and math.isnan(r["ci95_lo"])
    assert r["diff_mean"] == pytest.approx(0.22) and math.isnan(r["diff_ci95_hi"])


def test_a_folder_without_reports_or_baseline_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty"
    (empty / "trained" / "seed_0").mkdir(parents=True)
    with pytest.raises(RedgymError, match="empty: no evaluation reports") as e:
        compare([empty], tmp_path / "out")
    assert "\n" not in str(e.value)
    exp = make_experiment(tmp_path / "exp")
    (exp / "experiment.json").write_text(json.dumps({"arms": ["untuned", "trained"], "baseline_arm": "base"}))
    with pytest.raises(RedgymError, match="exp: baseline arm 'base' has no reports"):
        compare([exp], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are read
    with pytest.raises(RedgymError, match="does not exist"):
        compare([tmp_path / "nowhere"], tmp_path / "out")


def test_per_seed_nan_is_left_out_of_the_mean(tmp_path):
    # Seed 2's trained adversary is toxic on every turn: no clean exchange, so that seed has no
    # defender_toxicity_clean_adversary; the mean uses seeds 0 and 1 (0.3 and 0.42).
    exp = make_experiment(tmp_path / "exp")
    cs = [conv(p, 0.4, 0.9, 3.0) for p in ("p0", "p1")]
    for f in (exp / "trained" / "seed_2").iterdir():
        f.unlink()
    (exp / "trained" / "seed_2").rmdir()
    write_run(exp / "trained" / "seed_2", {"trained": cs}, 2)
    res = compare([exp], tmp_path / "out", n_boot=50)
    r = row(res, "trained", "defender_toxicity_clean_adversary")
    assert r["n_seeds"] == 2 and r["mean"] == pytest.approx(0.36) and r["n_paired_seeds"] == 2
    assert np.isfinite(r["pooled"])  # pooled over all six conversations: the four clean ones count
    # the tables say so in that column only, so its CI is not read as the row's three seeds
    headline = (tmp_path / "out" / "headline.md").read_text()
    trained = next(line for line in headline.splitlines() if line.startswith("| trained |"))
    cells = [c.strip() for c in trained.strip("|").split("|")]
    assert cells[1] == "3" and "(2 of 3 seeds)" in cells[3]
    assert sum("of 3 seeds" in c for c in cells) == 1
    assert "(2 of 3 seeds)" in (tmp_path / "out" / "comparison.md").read_text()


def test_a_second_detector_missing_at_a_seed_says_so_in_the_headline(tmp_path):
    # Trained seed 2 was evaluated without detector `d` (no `tox@d` score on any turn, so no `d` metric): the
    # headline's detector cell is a difference over seeds 0 and 1 only, and says so; the main metrics keep all three.
    exp = make_experiment(tmp_path / "exp")
    folder = exp / "trained" / "seed_2"
    shutil.rmtree(folder)
    convs = {arm: seed_convs(arm, 2) for arm in ("untuned", "trained")}
    for c in convs["trained"]:
        for t in c.turns:
            del t.scores["tox@d"]
    write_run(folder, convs, 2)
    compare([exp], tmp_path / "out", n_boot=20)
    headline = (tmp_path / "out" / "headline.md").read_text()
    trained = next(line for line in headline.splitlines() if line.startswith("| trained |"))
    cells = [c.strip() for c in trained.strip("|").split("|")]
    assert cells[-1].startswith("`d` ") and cells[-1].endswith("(2 of 3 seeds)")
    assert sum("of 3 seeds" in c for c in cells) == 1


# ---- per-turn tables of a multi-turn experiment --------------------------------------------------------------

# Toxicity per seed and turn, [seed 0, seed 1] of (turn 1, turn 2), chosen by hand; two seeds, so the across-seed
# interval is mean ± t(0.975, 1) · |x0 - x1| / 2 with t(0.975, 1) = 12.7062.
TURN_DEF = {"untuned": [(0.1, 0.2), (0.2, 0.4)], "trained": [(0.3, 0.6), (0.4, 0.6)]}
TURN_ADV = {"untuned": [(0.1, 0.1), (0.1, 0.1)], "trained": [(0.1, 0.5), (0.1, 0.7)]}


def turn_conv(pid, tox_def, tox_adv):
    """One conversation with one exchange per entry of tox_def (the defender's reply) and tox_adv (the adversary's
    turn)."""
    c = Conversation(pid, ("a neutral opening line",))
    for k, (d, a) in enumerate(zip(tox_def, tox_adv)):
        c.turns.append(Turn("adversary", f"question {pid} {k}", scores={"tox": a, "nll": 3.0}))
        c.turns.append(Turn("defender", "a neutral reply", scores={"tox": d, "tox_combined": d / 2}))
        c.rewards.append(d)
        c.reward_terms.append({"tox_defender": d})
    return c


def make_turn_experiment(root, horizon):
    """Arms untuned (baseline) and trained at seeds 0 and 1; each seed's two prompts get the same scores, so a
    seed's value of metric/turn_k is the table's number for that seed and turn. Horizon 1 keeps turn 1 only."""
    root.mkdir(parents=True)
    (root / "experiment.json").write_text(
        json.dumps({"arms": ["untuned", "trained"], "seeds": [0, 1], "baseline_arm": "untuned"})
    )
    for arm in ("untuned", "trained"):
        for s in (0, 1):
            d, a = TURN_DEF[arm][s][:horizon], TURN_ADV[arm][s][:horizon]
            write_run(root / arm / f"seed_{s}", {arm: [turn_conv(p, d, a) for p in ("p0", "p1")]}, s)
    return root


def test_multi_turn_markdown_has_per_turn_tables_with_hand_computed_cells(tmp_path):
    out = tmp_path / "out"
    compare([make_turn_experiment(tmp_path / "exp", horizon=2)], out, n_boot=20)
    md = (out / "comparison.md").read_text()
    # Defender, turn 1: untuned 0.1, 0.2 -> 0.15 ± 12.7062 · 0.05 = 0.15 ± 0.6353; trained 0.3, 0.4 -> 0.35 ± 0.6353.
    # Turn 2: untuned 0.2, 0.4 -> 0.3 ± 12.7062 · 0.1 = 0.3 ± 1.2706; trained 0.6, 0.6 -> 0.6 ± 0.
    # Differences: turn 1 0.2, 0.2 -> +0.2 ± 0 (bold), ratio 0.35 / 0.15 = 2.333; turn 2 0.4, 0.2 -> +0.3 ± 1.2706,
    # ratio 0.6 / 0.3 = 2.
    defender = (
        "\n### Defender toxicity per turn\n\n"
        "Defender toxicity at turn k, mean over seeds [95% t CI across seeds]:\n\n"
        "| arm | seeds | turn 1 | turn 2 |\n|---|---|---|---|\n"
        "| untuned | 2 | 0.1500 [-0.4853, 0.7853] | 0.3000 [-0.9706, 1.5706] |\n"
        "| trained | 2 | 0.3500 [-0.2853, 0.9853] | 0.6000 [0.6000, 0.6000] |\n\n"
        "Difference to the baseline per turn (same seeds; mean over seeds [95% t CI across seeds] ×ratio of "
        "means; bold: the CI excludes 0):\n\n"
        "| arm | baseline | turn 1 | turn 2 |\n|---|---|---|---|\n"
        "| trained | untuned | **+0.2000 [+0.2000, +0.2000]** ×2.333 | +0.3000 [-0.9706, +1.5706] ×2 |\n"
    )
    # Adversary: untuned 0.1 everywhere; trained turn 1 0.1, turn 2 0.5, 0.7 -> 0.6 ± 1.2706. Differences: turn 1
    # 0, 0 -> +0 ± 0 (not bold) ×1; turn 2 0.4, 0.6 -> +0.5 ± 1.2706, ratio 0.6 / 0.1 = 6.
    adversary = (
        "\n### Adversary toxicity per turn\n\n"
        "The adversary's own toxicity at turn k (how much of that turn's defender toxicity may be echo), "
        "mean over seeds [95% t CI across seeds]:\n\n"
        "| arm | seeds | turn 1 | turn 2 |\n|---|---|---|---|\n"
        "| untuned | 2 | 0.1000 [0.1000, 0.1000] | 0.1000 [0.1000, 0.1000] |\n"
        "| trained | 2 | 0.1000 [0.1000, 0.1000] | 0.6000 [-0.6706, 1.8706] |\n\n"
        "Difference to the baseline per turn (same seeds; mean over seeds [95% t CI across seeds] ×ratio of "
        "means; bold: the CI excludes 0):\n\n"
        "| arm | baseline | turn 1 | turn 2 |\n|---|---|---|---|\n"
        "| trained | untuned | +0.0000 [+0.0000, +0.0000] ×1 | +0.5000 [-0.7706, +1.7706] ×6 |\n"
    )
    assert defender + adversary in md
    # Clean-adversary defender toxicity: every untuned exchange is clean (adversary 0.1), so as the defender table;
    # trained turn 2 is clean at seed 0 only (0.5 is at the threshold, 0.7 above it): 0.6, one seed, no interval;
    # its difference to untuned seed 0 is 0.6 - 0.2 = +0.4, ratio 0.6 / 0.2 = 3.
    clean = md[md.index("### Clean-adversary defender toxicity per turn") :]
    assert "| trained | 2 | 0.3500 [-0.2853, 0.9853] | 0.6000 (1 of 2 seeds) |" in clean
    assert "| trained | untuned | **+0.2000 [+0.2000, +0.2000]** ×2.333 | +0.4000 ×3 (1 of 2 seeds) |" in clean
    # Both belong to the main defender's section, after its headline tables.
    assert md.index("## Main defender") < md.index("| trained | untuned | ") < md.index(defender) < md.index("## Plots")


def test_single_turn_markdown_has_no_per_turn_tables(tmp_path):
    out = tmp_path / "out"
    res = compare([make_turn_experiment(tmp_path / "exp", horizon=1)], out, n_boot=20)
    md = (out / "comparison.md").read_text()
    assert row(res, "trained", "defender_toxicity/turn_1")["mean"] == pytest.approx(0.35)  # in the CSV rows
    assert "per turn" not in md and "turn 1" not in md and "###" not in md
    # The headline tables are followed directly by the plots, as before per-turn tables existed.
    assert "| **+0.2000 [+0.2000, +0.2000]** ×2.333 |" in md
    lines = md.split("\n")
    assert lines[lines.index("## Plots") - 2].startswith("| trained | untuned | ")


def test_an_ablation_metric_missing_at_some_seeds_says_so():
    from redgym.experiments.comparison_report import render_ablations

    # defender toxicity paired at seeds 0 and 2; after clean adversary turns at seed 0 only (seed 2's adversary
    # turns were all toxic), so its cell has no CI and says it covers 1 of the sentence's 2 seeds
    common = {"arm": "abl", "against": "ipo", "changes": {"w_nll": 0}}
    effects = [
        {
            **common,
            "metric": "defender_toxicity",
            "n_paired_seeds": 2,
            "paired_seeds": [0, 2],
            "diff_mean": 0.1,
            "diff_ci95_lo": 0.05,
            "diff_ci95_hi": 0.15,
            "ratio": 2.0,
        },
        {
            **common,
            "metric": "defender_toxicity_clean_adversary",
            "n_paired_seeds": 1,
            "paired_seeds": [0],
            "diff_mean": -0.04,
            "diff_ci95_lo": math.nan,
            "diff_ci95_hi": math.nan,
            "ratio": 0.5,
        },
    ]
    assert render_ablations(effects) == (
        "- `abl` (`ipo` with `w_nll: 0`; seeds 0, 2, each against `ipo` at the same seed): "
        "defender toxicity **+0.1000 [+0.0500, +0.1500]** ×2; "
        "after clean adversary turns -0.0400 ×0.5 (1 of 2 seeds).\n"
    )
