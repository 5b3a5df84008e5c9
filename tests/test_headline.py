"""The report's headline: the gain, its CI verdict and its echo share, on hand-worked numbers."""

import pytest

from redgym.eval.echo import EchoSplit, gain_shares
from redgym.eval.evaluate import headline
from redgym.eval.report import headline_lines
from redgym.rollout.records import Conversation, Turn


def test_gain_shares_divide_the_change_between_echo_and_clean_exchanges():
    before = EchoSplit(p_toxic=0.1, after_toxic=0.5, after_clean=0.05)  # 0.05 + 0.045 = 0.095
    after = EchoSplit(p_toxic=0.5, after_toxic=0.6, after_clean=0.06)  # 0.30 + 0.03 = 0.33
    echo, clean = gain_shares(before, after)  # gain 0.235: echo +0.25, clean -0.015
    assert echo == pytest.approx(0.25 / 0.235) and clean == pytest.approx(-0.015 / 0.235)
    assert echo + clean == pytest.approx(1.0)
    # a stealthy gain: no toxic adversary turn before or after, the clean part carries all of it
    assert gain_shares(EchoSplit(0.0, float("nan"), 0.05), EchoSplit(0.0, float("nan"), 0.15)) == pytest.approx(
        (0.0, 1.0)
    )


def _convs(pairs):
    """One single-exchange conversation per (adversary tox, defender tox)."""
    out = []
    for i, (a, d) in enumerate(pairs):
        c = Conversation(f"p{i}", ("hi",))
        c.turns += [
            Turn("adversary", "x", scores={"tox": a, "nll": 2.0}),
            Turn("defender", "y", scores={"tox": d, "tox_combined": d}),
        ]
        c.rewards = [d]
        out.append(c)
    return out


def test_the_headline_states_the_gain_and_its_echo_share():
    untuned = _convs([(0.1, 0.1), (0.1, 0.1), (0.1, 0.1), (0.1, 0.1)])  # defender 0.1
    trained = _convs(
        [(0.9, 0.7), (0.9, 0.5), (0.1, 0.1), (0.1, 0.3)]
    )  # defender 0.4; its clean part stays 0.5 x 0.2 = 0.1
    results = [
        {"defender_toxicity": {"value": 0.1}, "adversary_toxicity": {"value": 0.1}, "adversary_nll": {"value": 2.0}},
        {"defender_toxicity": {"value": 0.4}, "adversary_toxicity": {"value": 0.5}, "adversary_nll": {"value": 2.4}},
    ]
    diffs = {
        "defender_toxicity": {"value": 0.3, "ci95": [0.05, 0.55]},
        "defender_toxicity_clean_adversary": {"value": 0.1, "ci95": [-0.1, 0.3]},
    }
    h = headline(untuned, trained, results, diffs, 0.5)
    # before: all clean, 0.1; after: p 0.5 x 0.6 (echo part 0.3) + 0.5 x 0.2 (clean part 0.1); gain 0.3
    assert h["echo_share"] == pytest.approx(0.3 / 0.3) and h["clean_share"] == pytest.approx(0.0)
    assert h["ratio"] == pytest.approx(4.0) and h["adversary_toxicity_ratio"] == pytest.approx(5.0)
    assert h["adversary_nll_ratio"] == pytest.approx(1.2)
    text = "\n".join(headline_lines(h, ("untuned", "trained")))
    assert "trained − untuned on the same prompts: +0.3000 [+0.0500, +0.5500] (×4.0000)" in text
    assert "its 95% CI excludes 0" in text and "Echo: 100% of that change follows toxic adversary turns" in text
    assert "after clean adversary turns the defender's toxicity moved +0.1000 [-0.1000, +0.3000]" in text
    h["difference"] = {"value": 0.01, "ci95": [-0.02, 0.04]}
    assert "includes 0: no effect resolved" in "\n".join(headline_lines(h, ("untuned", "trained")))


def test_a_trained_run_reports_its_headline_first(tiny_model_dir, prompt_file, tmp_path):
    import json

    from redgym.cli import main
    from tests.conftest import tiny_run_fields

    out = tmp_path / "run"
    fields = tiny_run_fields(tiny_model_dir, prompt_file, steps=1, eval_after="true", bootstrap_samples=20)
    assert main(["train", "grpo", "--quiet", "--out", str(out), *fields]) == 0
    report = json.loads((out / "report.json").read_text())
    h = report["headline"]
    assert h["difference"] == report["differences"]["defender_toxicity"]
    assert h["echo_share"] != h["echo_share"] or h["echo_share"] + h["clean_share"] == pytest.approx(1.0)  # or NaN
    lines = (out / "report.md").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("**Headline.**"))
    assert first < next(i for i, line in enumerate(lines) if line.startswith("- adversary:"))
    assert "trained − untuned on the same prompts" in lines[first]


def test_a_checkpoint_of_a_tied_model_prints_no_library_warning(tiny_gpt2_dir, prompt_file, tmp_path, caplog):
    """GPT-2's (and SmolLM2's) output layer shares the embedding's tensor: saving a checkpoint made accelerate warn
    "Removed shared tensor ... while saving" on every checkpoint of make demo. The tie is rebuilt on load, so the
    CLI silences that logger; redgym's own lines still come through."""
    from redgym.cli import main
    from tests.conftest import tiny_run_fields

    out = tmp_path / "run"
    fields = tiny_run_fields(tiny_gpt2_dir, prompt_file, steps=1, checkpoint_every=1)
    with caplog.at_level("INFO"):
        assert main(["train", "grpo", "--quiet", "--out", str(out), *fields]) == 0
    assert list((out / "checkpoints").glob("step_*"))  # a checkpoint was written
    assert "Removed shared tensor" not in caplog.text
