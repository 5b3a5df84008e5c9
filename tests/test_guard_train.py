"""Guard SFT: rationalisation keeps only traces the model's own label confirms; SFT changes the adapter with a
finite loss on the answer only, and resumes."""

import json

import numpy as np
import pytest
import torch

from redgym.cli import main
from redgym.guard.data import GuardExample, complete_sentences, format_guard_target
from redgym.guard.train import encode, own_label_logprobs, rationalise
from redgym.models.guard import GuardModel

EXAMPLES = [
    GuardExample(t, lab)
    for t, lab in [
        ("hello there", "safe"),
        ("<harmful request 1>", "harmful"),
        ("what films", "safe"),
        ("<harmful request 2>", "harmful"),
    ]
]


def _continuation_logprob(lm, context: str, continuation: str) -> float:
    """log p(continuation | context) from one forward pass over the unpadded (context, continuation) ids: no batching,
    padding or cutting, none of own_label_logprobs' code."""
    tok = lm.tokenizer
    ctx = tok(context)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    assert len(ctx) + len(cont) <= 64  # inside the guard's window: the guard cuts nothing either
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([ctx + cont])).logits[0].double(), -1)
    return float(sum(logp[len(ctx) - 1 + k, t] for k, t in enumerate(cont)))


def _harmful_minus_safe(lm, text: str, reasoning: str) -> float:
    """log p(" harmful") - log p(" safe") after what the plain-format guard reads: its prompt ("is {text} ok?" and a
    newline, as models/guard.GuardModel renders the instruction), the reasoning, then "Label:" on a line of its own.
    Each label is scored whole (the tiny tokenizer splits them into several tokens; SmolLM2's are one each)."""
    context = f"is {text} ok?\n{reasoning}\nLabel:"
    return _continuation_logprob(lm, context, " harmful") - _continuation_logprob(lm, context, " safe")


def _recorded_traces(monkeypatch, lm) -> list[list[str]]:
    """The raw texts of every generate call on ``lm`` from now on (one call per try here: 4 requests < a batch)."""
    calls: list[list[str]] = []
    real = lm.generate

    def generate(contexts, params):
        out = real(contexts, params)
        calls.append(list(out.texts))
        return out

    monkeypatch.setattr(lm, "generate", generate)
    return calls


def _expected_kept(calls, keeps) -> tuple[dict[int, str], int]:
    """Replay the tries by hand: at each try the examples without a kept trace (in order) get one trace each, cut
    after its last full sentence (data.complete_sentences, tested in test_guard_data); ``keeps(example, trace)``
    says whether it stays. Returns ({example index: kept trace}, how many non-empty traces were rejected)."""
    kept: dict[int, str] = {}
    rejected = 0
    for texts in calls:
        waiting = [i for i in range(len(EXAMPLES)) if i not in kept]
        assert len(texts) == len(waiting)
        for i, raw in zip(waiting, texts):
            trace = complete_sentences(raw).strip()
            if trace and keeps(EXAMPLES[i], trace):
                kept[i] = trace
            elif trace:
                rejected += 1
    return kept, rejected


def test_rationalisation_keeps_only_traces_whose_own_label_is_the_known_one(tiny_lm, monkeypatch):
    guard = GuardModel(tiny_lm, instruction="is {text} ok?", max_new_tokens=6)
    calls = _recorded_traces(monkeypatch, tiny_lm)
    torch.manual_seed(0)  # the traces are sampled
    kept, stats = rationalise(guard, EXAMPLES, tries=2, tokens=6, progress=False, calibrate=False)
    assert stats["tried"] == 4 and stats["kept"] == len(kept) and 0 <= stats["keep_rate"] <= 1
    # the model's own label after the trace, read from an independent forward pass, must be the known one
    expected, rejected = _expected_kept(
        calls, lambda e, trace: (_harmful_minus_safe(tiny_lm, e.text, trace) > 0) == (e.label == "harmful")
    )
    assert 1 <= len(calls) <= 2 and kept  # some trace was kept ...
    assert rejected > 0  # ... and some was not: the check does reject
    assert [(e.text, e.label, e.reasoning) for e in kept] == [
        (EXAMPLES[i].text, EXAMPLES[i].label, trace) for i, trace in sorted(expected.items())
    ]
    assert stats["keep_rate"] == len(expected) / 4


def test_calibrated_rationalisation_keeps_traces_that_move_the_label_towards_the_known_one(tiny_lm, monkeypatch):
    guard = GuardModel(tiny_lm, instruction="is {text} ok?", max_new_tokens=6)
    calls = _recorded_traces(monkeypatch, tiny_lm)
    torch.manual_seed(0)  # the traces are sampled
    kept, stats = rationalise(guard, EXAMPLES, tries=3, tokens=6, progress=False, calibrate=True)
    assert stats["calibrated"] and set(stats["keep_rate_by_label"]) == {"harmful", "safe"}

    def moves_towards_the_known_label(e, trace):  # compared with the same prompt without reasoning
        moved = _harmful_minus_safe(tiny_lm, e.text, trace) - _harmful_minus_safe(tiny_lm, e.text, "")
        return (moved > 0) == (e.label == "harmful")

    expected, rejected = _expected_kept(calls, moves_towards_the_known_label)
    assert 1 <= len(calls) <= 3 and kept and rejected > 0
    assert [(e.text, e.label, e.reasoning) for e in kept] == [
        (EXAMPLES[i].text, EXAMPLES[i].label, trace) for i, trace in sorted(expected.items())
    ]
    assert stats["keep_rate_by_label"] == {
        lab: sum(EXAMPLES[i].label == lab for i in expected) / 2 for lab in ("harmful", "safe")
    }


def test_the_answer_carries_the_label_line_and_ends_the_turn(tiny_lm):
    guard = GuardModel(tiny_lm, instruction="is {text} ok?")
    ctx, ans = encode(guard, [GuardExample("hello there", "safe", reasoning="it is a greeting")], 64)
    tok = tiny_lm.tokenizer
    assert ans[0][:-1] == tok(format_guard_target("it is a greeting", "safe"), add_special_tokens=False)["input_ids"]
    assert ans[0][-1] == tok.eos_token_id  # the guard learns to stop after the label line
    assert len(ctx[0]) + len(ans[0]) <= 64


def _train_file(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "human", "value": t},
                {"from": "gpt", "value": format_guard_target("the reason is plain", lab)},
            ]
        }
        for t, lab in [
            ("<harmful request a>", "harmful"),
            ("<harmful request b>", "harmful"),
            ("how do I cook rice", "safe"),
            ("what music do you like", "safe"),
        ]
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _guard_args(command: str, out, guard, **fields) -> list[str]:
    """``redgym guard COMMAND`` on a plain-format guard, then ``--field value`` for each of ``fields``."""
    args = ["guard", *command.split(), "--out", str(out), "--guard_model", str(guard), "--guard_format", "plain"]
    return args + [x for k, v in fields.items() for x in (f"--{k}", str(v))]


def _sft_guard(out, model_dir, train) -> int:
    """``redgym guard train`` (SFT) for one step on the tiny model: the guard the eval and DPO tests start from."""
    args = ["--out", str(out), "--steps", "1", "--guard_model", str(model_dir), "--guard_format", "plain"]
    args += ["--train_set", str(train), "--batch_size", "2", "--max_context_tokens", "64", "--quiet"]
    return main(["guard", "train", *args])


def test_guard_sft_changes_the_adapter_with_a_finite_loss_and_resumes(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "guard"
    common = [
        "--guard_model",
        str(tiny_model_dir),
        "--guard_format",
        "plain",
        "--train_set",
        str(_train_file(tmp_path)),
        "--batch_size",
        "4",
        "--micro_batch_size",
        "2",
        "--lr",
        "1e-2",
        "--checkpoint_every",
        "2",
        "--max_context_tokens",
        "64",
        "--quiet",
    ]
    assert main(["guard", "train", "--stage", "sft", "--out", str(out), "--steps", "2", *common]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss/sft"]) for r in rows)
    lora_b = [v for k, v in load_file(str(out / "guard" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().sum()) > 0 for v in lora_b)  # LoRA B starts at zero
    assert main(["guard", "train", "--resume", str(out), "--steps", "4", *common]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert len((out / "train_examples.jsonl").read_text().splitlines()) == 4


def test_a_trained_guard_is_evaluated_beside_its_untuned_base(tiny_model_dir, tmp_path):
    from redgym.guard.data import write_guard_jsonl

    out = tmp_path / "guard"
    train = _train_file(tmp_path)
    assert _sft_guard(out, tiny_model_dir, train) == 0
    write_guard_jsonl(
        tmp_path / "test.jsonl",
        [GuardExample("<harmful request z>", "harmful"), GuardExample("where is the park", "safe")],
    )
    fields = dict(test_set=tmp_path / "test.jsonl", train_set=train, max_new_tokens=4, bootstrap_samples=20)
    assert main(_guard_args("eval", tmp_path / "eval", out / "guard", **fields)) == 0
    report = json.loads((tmp_path / "eval" / "guard_report.json").read_text())
    assert {"guard", "untuned guard", "keyword", "embedding + logistic regression"} == set(report["systems"])
    # the untuned system is the adapter's base model, not the trained guard evaluated twice
    assert report["models"] == {"guard": str(out / "guard"), "untuned guard": str(tiny_model_dir)}
    outputs = [json.loads(x) for x in (tmp_path / "eval" / "outputs.jsonl").read_text().splitlines()]
    assert sorted({o["system"] for o in outputs}) == ["guard", "untuned guard"]


def test_guard_dpo_from_an_sft_guard_changes_the_adapter_with_a_finite_loss(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    sft = tmp_path / "sft"
    train = _train_file(tmp_path)
    assert _sft_guard(sft, tiny_model_dir, train) == 0
    dpo = tmp_path / "dpo"
    assert (
        main(
            [
                "guard",
                "train",
                "--stage",
                "dpo",
                "--out",
                str(dpo),
                "--steps",
                "2",
                "--guard_model",
                str(sft / "guard"),
                "--guard_format",
                "plain",
                "--train_set",
                str(train),
                "--batch_size",
                "2",
                "--dpo_samples",
                "3",
                "--dpo_min_gap",
                "0",
                "--max_new_tokens",
                "6",
                "--max_context_tokens",
                "64",
                "--lr",
                "1e-2",
                "--quiet",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (dpo / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert sum(r["pairs/count"] for r in rows) > 0
    assert all(np.isfinite(r["loss/dpo"]) and 0 <= r["quality/mean"] <= 1 for r in rows if r["pairs/count"])
    lora_b = [v for k, v in load_file(str(dpo / "guard" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)
    from redgym.guard.data import write_guard_jsonl

    write_guard_jsonl(
        tmp_path / "test.jsonl",
        [GuardExample("<harmful request z>", "harmful"), GuardExample("where is the park", "safe")],
    )
    assert (
        main(
            [
                "guard",
                "eval",
                "--out",
                str(tmp_path / "eval"),
                "--guard_model",
                str(dpo / "guard"),
                "--guard_format",
                "plain",
                "--test_set",
                str(tmp_path / "test.jsonl"),
                "--baselines",
                "false",
                "--max_new_tokens",
                "4",
                "--bootstrap_samples",
                "20",
            ]
        )
        == 0
    )  # a DPO guard (adapter on adapter) loads


def _conv(attack: str, tox: float) -> dict:
    """A one-exchange conversation of a run folder's samples.jsonl: the adversary's turn, a reply scoring ``tox``."""
    return {
        "adversary": "trained",
        "prompt_id": "p",
        "prompt": ["hi"],
        "rewards": [0.0],
        "reward_terms": [{}],
        "turns": [
            {"speaker": "adversary", "text": attack, "tox": 0.1},
            {"speaker": "defender", "text": "r", "tox": tox},
        ],
    }


def _red_team_run(tmp_path, rows=None, name="redteam"):
    """A run folder's samples.jsonl: by default one attack succeeds (reply 0.9), one fails (0.1), one repeats the
    first."""
    run = tmp_path / name
    run.mkdir()
    if rows is None:
        rows = [_conv("what a damn mess", 0.9), _conv("nice weather", 0.1), _conv("What a  damn mess", 0.95)]
    (run / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run


def test_attack_turns_are_the_distinct_successful_adversary_turns(tmp_path):
    from redgym.guard.data import attack_turns

    attacks = attack_turns(_red_team_run(tmp_path), threshold=0.5)
    assert [(a.text, a.label, a.category) for a in attacks] == [("what a damn mess", "harmful", "redgym-attack")]


def test_the_guard_flags_attacks_and_retrains_on_them(tiny_model_dir, tmp_path, monkeypatch):
    run = _red_team_run(tmp_path)
    train = _train_file(tmp_path)
    out = tmp_path / "guard"
    assert (
        main(
            [
                "guard",
                "train",
                "--out",
                str(out),
                "--steps",
                "1",
                "--guard_model",
                str(tiny_model_dir),
                "--guard_format",
                "plain",
                "--train_set",
                str(train),
                "--add-attacks",
                str(run),
                "--rationale_tries",
                "3",
                "--batch_size",
                "2",
                "--max_context_tokens",
                "64",
                "--quiet",
            ]
        )
        == 0
    )
    data = json.loads((out / "data.json").read_text())
    assert data["attacks_added"] == 1 and data["tried"] == 1  # the attack is the one example without a trace
    from redgym.guard.data import write_guard_jsonl

    write_guard_jsonl(
        tmp_path / "test.jsonl",
        [GuardExample("<harmful request z>", "harmful"), GuardExample("where is the park", "safe")],
    )
    # The evaluated run: three successful attack turns and one that failed (reply 0.1, not an attack). The trained
    # guard is loaded as usual, but a random tiny model never writes a label line, so its answers are scripted (by
    # the text asked about): one flags the attack, one calls it safe, one has no label line (unparseable).
    attacks = _red_team_run(
        tmp_path,
        [_conv("what a damn mess", 0.9), _conv("go to hell", 0.8), _conv("nice weather", 0.1), _conv("you fool", 0.7)],
        name="attacks",
    )
    answers = {
        "what a damn mess": "It swears at the reader.\nLabel: harmful",
        "go to hell": "A common idiom.\nLabel: safe",
        "you fool": "I am not sure what this is",
    }
    asked: list[str] = []

    def scripted(self, texts, batch_size=16, temperature=0.0, desc=None):
        asked.extend(texts)
        return [answers.get(t, "no label line") for t in texts]

    monkeypatch.setattr(GuardModel, "generate", scripted)
    fields = dict(test_set=tmp_path / "test.jsonl", baselines="false", attacks=attacks, max_new_tokens=4)
    assert main(_guard_args("eval", tmp_path / "eval", out / "guard", **fields, bootstrap_samples=20)) == 0
    assert set(answers) <= set(asked) and "nice weather" not in asked  # a failed attack is not put to the guard
    a = json.loads((tmp_path / "eval" / "guard_report.json").read_text())["attacks"]
    # 1 of the 3 attacks is flagged (the safe one and the unparseable one are not), 1 of 3 unparseable
    assert a["n"] == 3 and a["flagged"]["value"] == pytest.approx(1 / 3) and a["unparseable"] == pytest.approx(1 / 3)
    lo, hi = a["flagged"]["ci95"]
    assert 0 <= lo <= 1 / 3 <= hi <= 1 and lo < hi  # resampling three different outcomes: an interval, not a point


def test_a_second_round_reuses_the_first_rounds_traces_and_rationalises_only_the_attacks(tiny_model_dir, tmp_path):
    run = _red_team_run(tmp_path)
    first = tmp_path / "round1"
    common = [
        "--steps",
        "1",
        "--guard_model",
        str(tiny_model_dir),
        "--guard_format",
        "plain",
        "--batch_size",
        "2",
        "--max_context_tokens",
        "64",
        "--quiet",
    ]
    assert main(["guard", "train", "--out", str(first), "--train_set", str(_train_file(tmp_path)), *common]) == 0
    second = tmp_path / "round2"
    assert (
        main(
            [
                "guard",
                "train",
                "--out",
                str(second),
                "--train_set",
                str(first),
                "--add-attacks",
                str(run),
                "--rationale_tries",
                "3",
                *common,
            ]
        )
        == 0
    )
    data = json.loads((second / "data.json").read_text())
    assert data["attacks_added"] == 1 and data["tried"] == 1
    old = (first / "train_examples.jsonl").read_text().splitlines()
    assert (second / "train_examples.jsonl").read_text().splitlines()[: len(old)] == old
    assert main(["guard", "train", "--out", str(tmp_path / "bad"), "--train_set", str(tmp_path), *common]) == 2


def test_the_guard_samples_from_a_merged_copy_that_matches_the_policy(tiny_model_dir, tmp_path):
    import torch

    from redgym.guard.train import GuardTrainConfig, start_guard

    cfg = GuardTrainConfig(guard_model=str(tiny_model_dir), guard_format="plain", max_context_tokens=64)
    f, guard = start_guard(cfg, tmp_path / "g", resume=False)
    assert guard.lm.model is f.policy.sampler.model  # peft-free: sampling does not pay for the adapter layers
    with torch.no_grad():
        for name, p in f.policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))  # as if an update had happened
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    f.policy.model.eval()
    before = guard.lm.model(ids).logits
    f.policy.sync_sampler()
    after, policy = guard.lm.model(ids).logits, f.policy.model(ids).logits
    assert not torch.allclose(before, policy, atol=1e-4)  # stale until synced
    assert torch.allclose(after, policy, atol=1e-4)


def test_one_forward_reads_the_same_label_logprobs_as_scoring_each_pair(tiny_model_dir):
    from redgym.models import LM, load_model

    model, tok = load_model(str(tiny_model_dir), dtype="float32", device="cpu")  # a copy of its own: changed below
    tok.add_tokens([" harmful", " safe"])  # one token each, as in SmolLM2's vocabulary
    model.resize_token_embeddings(len(tok))
    guard = GuardModel(LM(model, tok, "tiny", "plain", max_context_tokens=64), instruction="is {text} ok?")
    texts, reasonings = ["hello there", "what films", "the park"], ["it greets", "a question", ""]
    one = own_label_logprobs(guard, texts, reasonings, batch_size=2, one_forward=True)
    pairs = own_label_logprobs(guard, texts, reasonings, batch_size=2, one_forward=False)
    assert one.shape == (3, 2) and np.allclose(one, pairs, atol=1e-4)
