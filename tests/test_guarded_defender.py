"""A defender behind a guard refuses exactly the adversary turns the guard flags, and answers the others."""

from redgym.models.guard import GuardedDefender
from redgym.models.lm import SamplingParams
from redgym.rollout import rollout


class FakeGuard:
    """Flags turns containing "<harmful>"; says nothing parseable about turns containing "<mumble>"."""

    def __init__(self):
        self.asked = []

    def classify(self, texts, batch_size=16):
        self.asked += list(texts)
        return [("", "harmful") if "<harmful>" in t else ("", None) if "<mumble>" in t else ("", "safe") for t in texts]


class Scripted:
    """An adversary saying fixed turns, one per conversation in order."""

    name, fmt = "scripted", "plain"

    def __init__(self, turns):
        self.turns = list(turns)

    def render(self, history, me):
        return history[0][1]  # the prompt names which turn to say

    def generate(self, contexts, params=SamplingParams()):
        from redgym.models.lm import Generation

        texts = [self.turns[int(c)] for c in contexts]
        return Generation(texts, [[] for _ in texts], [[] for _ in texts])


def test_the_guard_refuses_exactly_the_flagged_turns(tiny_lm):
    guard = FakeGuard()
    guarded = GuardedDefender(tiny_lm, guard, refusal="I can't help with that.")
    turns = ["hello there <harmful>", "hello there", "what films <mumble>", "the park <harmful>"]
    convs = rollout(
        [(str(i), (str(i),)) for i in range(4)], Scripted(turns), guarded, horizon=1, batch_size=4, progress=False
    )
    replies = [c.turns[1].text for c in convs]
    assert [r == "I can't help with that." for r in replies] == [True, False, False, True]
    assert sorted(guard.asked) == sorted(turns)  # the guard saw exactly the adversary turns being answered
    assert (guarded.n_checked, guarded.n_flagged) == (4, 2)
    # the turn comes with each context, not from what render left: contexts rendered earlier, answered later and in
    # another order, are checked by their own turns (a render-side memo, cleared by each generate, lost them)
    histories = [[("prompt", "hi"), ("adversary", t)] for t in turns]
    contexts = [guarded.render(h, "defender") for h in histories]
    guarded.generate(contexts[:1], SamplingParams(max_new_tokens=2))
    guard.asked.clear()
    answered = guarded.generate(contexts[::-1], SamplingParams(max_new_tokens=2))
    assert sorted(guard.asked) == sorted(turns)
    assert [r == "I can't help with that." for r in answered.texts] == [True, False, False, True][::-1]
    assert guarded.continuation_nll(["hi\n"], ["there"]) == tiny_lm.continuation_nll(["hi\n"], ["there"])


def test_an_untuned_adversary_is_never_behind_the_defenders_guard(tiny_model_dir, prompt_file, monkeypatch):
    from redgym import setup as setup_mod
    from redgym.config import RunConfig, load_config

    monkeypatch.setattr(setup_mod, "GuardModel", lambda lm: FakeGuard())
    cfg = load_config(
        RunConfig,
        None,
        {
            "adversary_model": str(tiny_model_dir),
            "defender_model": str(tiny_model_dir),
            "prompts": str(prompt_file),
            "test_fraction": "0.3",
            "defender_guard": str(tiny_model_dir),
        },
    )
    s = setup_mod.prepare(cfg, need_embedder=False)
    assert isinstance(s.defender, GuardedDefender)
    assert not isinstance(setup_mod.load_adversary(s), GuardedDefender)


class ParityGuard(FakeGuard):
    """Flags turns of odd length: about half of a tiny random model's turns."""

    def classify(self, texts, batch_size=16):
        self.asked += list(texts)
        return [("", "harmful") if len(t) % 2 else ("", "safe") for t in texts]


def test_eval_with_a_guard_pairs_the_same_turns_bare_and_guarded(tiny_model_dir, prompt_file, monkeypatch, tmp_path):
    import json

    from redgym import setup as setup_mod
    from redgym.config import RunConfig, load_config
    from redgym.eval import evaluate as evaluate_mod
    from redgym.eval.evaluate import evaluate
    from tests.conftest import contains_e

    monkeypatch.setattr(setup_mod, "GuardModel", lambda lm: ParityGuard())
    real_prepare = evaluate_mod.prepare

    def prepare(cfg, **kw):  # replies with an "e" count as toxic: a tiny model's replies span both sides
        s = real_prepare(cfg, **kw)
        s.scorer = contains_e
        return s

    monkeypatch.setattr(evaluate_mod, "prepare", prepare)
    cfg = load_config(
        RunConfig,
        None,
        {
            "adversary_model": str(tiny_model_dir),
            "defender_model": str(tiny_model_dir),
            "prompts": str(prompt_file),
            "test_fraction": "0.3",
            "horizon": "1",
            "max_new_tokens": "6",
            "samples_per_prompt": "2",
            "bootstrap_samples": "50",
            "defender_guard": str(tiny_model_dir),
            "guard_refusal": "No.",
            "toxic_threshold": "0.5",
        },
    )
    report = evaluate(cfg, tmp_path / "ev", progress=False)
    assert list(report["results"]) == ["untuned", "untuned+guard"]
    rows = [json.loads(x) for x in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    bare = [r for r in rows if r["adversary"] == "untuned"]
    guarded = [r for r in rows if r["adversary"] == "untuned+guard"]
    assert len(bare) == len(guarded) == 6
    n_flagged = 0
    for b, g in zip(bare, guarded):
        (ba, bd), (ga, gd) = b["turns"], g["turns"]
        assert ba["text"] == ga["text"]  # the same adversary turn
        flagged = len(ga["text"]) % 2 == 1
        n_flagged += flagged
        assert gd["text"] == ("No." if flagged else bd["text"])  # refused, or the bare defender's very reply
    assert report["guard"]["turns_flagged"] == n_flagged and report["guard"]["turns_checked"] == 6
    effect = report["guard_effect"]["untuned"]["attack_success_rate"]
    asr = lambda rs: sum(r["turns"][1]["tox"] > 0.5 for r in rs) / len(rs)  # noqa: E731
    # by hand: the guard removes exactly the successes on flagged turns ("No." has no "e")
    removed = sum(len(b["turns"][0]["text"]) % 2 == 1 and "e" in b["turns"][1]["text"] for b in bare) / len(bare)
    assert removed > 0 and asr(bare) > asr(guarded)  # the check can fail: the guard changed the rate
    assert abs(effect["value"] - (asr(guarded) - asr(bare))) < 1e-9 and abs(effect["value"] + removed) < 1e-9
    assert "Guard effect" in (tmp_path / "ev" / "report.md").read_text()
