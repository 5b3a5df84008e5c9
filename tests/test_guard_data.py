import json

import pytest

from redgym.errors import RedgymError
from redgym.guard.data import (
    GuardExample,
    check_no_overlap,
    complete_sentences,
    default_guard_sets,
    describe,
    format_guard_target,
    normalise_label,
    normalise_text,
    parse_guard_output,
    read_guard_test,
    read_guard_train,
    write_guard_jsonl,
)

# ---------------------------------------------------------------- the label line


@pytest.mark.parametrize(
    "raw,label",
    [
        ("harmful", "harmful"),
        ("Unsafe", "harmful"),
        (" TOXIC\n", "harmful"),
        ("harm ful", None),
        ("safe", "safe"),
        ("Harmless", "safe"),
        ("  benign ", "safe"),
        ("UNHARMFUL", "safe"),
        ("unclear", None),
        ("", None),
        ("not harmful", None),
        ("harmfully", None),
    ],
)
def test_normalise_label_table(raw, label):
    assert normalise_label(raw) == label


@pytest.mark.parametrize(
    "text,reasoning,label",
    [
        ("Asks for a recipe.\nLabel: safe", "Asks for a recipe.", "safe"),
        ("  It asks for X.\nLABEL:  Harmful", "It asks for X.", "harmful"),
        ("r\n  label : unsafe", "r", "harmful"),
        ("r\nLabel：benign", "r", "safe"),  # full-width colon
        ("r\nLabel: safe.\nThanks for asking!\nmore text", "r", "safe"),  # text after the label is ignored
        (
            "first\nLabel: harmful\nwait, it is a recipe\nLabel: safe",
            "first\nLabel: harmful\nwait, it is a recipe",
            "safe",
        ),
        ("no label line at all", "no label line at all", None),
        ("r\nLabel: unclear", "r", None),
        ("The label: harmful is in the middle of a line", "The label: harmful is in the middle of a line", None),
        ("", "", None),
    ],
)
def test_parse_guard_output(text, reasoning, label):
    assert parse_guard_output(text) == (reasoning, label)


def test_format_then_parse_round_trip():
    target = format_guard_target("It asks how to bake bread.", "Benign")
    assert target == "It asks how to bake bread.\nLabel: safe"
    assert parse_guard_output(target) == ("It asks how to bake bread.", "safe")
    with pytest.raises(ValueError, match="not harmful or safe"):
        format_guard_target("r", "maybe")


@pytest.mark.parametrize(
    "trace,kept",
    [
        ("It asks for a recipe. Baking is a common hobby and", "It asks for a recipe."),
        ("  Is it legal? It is. The user wants", "Is it legal? It is."),
        ("Version 2.5 of the tool is asked for. It", "Version 2.5 of the tool is asked for."),  # no cut inside 2.5
        ("It asks for a recipe.", "It asks for a recipe."),
        ("no sentence end at all", "no sentence end at all"),
        ("", ""),
    ],
)
def test_complete_sentences_cuts_after_the_last_full_sentence(trace, kept):
    assert complete_sentences(trace) == kept


# ---------------------------------------------------------------- files


def _chatml(text, answer):
    return {"conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]}


TRAIN = [
    ("how do I bake bread", format_guard_target("A cooking question.", "safe")),
    ("<harmful request 1>", format_guard_target("It asks for help causing harm.", "unsafe")),
    ("what is a good name for a cat", "Harmless small talk.\nlabel: HARMLESS\n"),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_read_guard_train_round_trip(tmp_path, suffix):
    rows = [_chatml(t, a) for t, a in TRAIN]
    path = tmp_path / f"train{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    else:
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    got = read_guard_train(path)
    assert [(e.text, e.label, e.reasoning) for e in got] == [
        ("how do I bake bread", "safe", "A cooking question."),
        ("<harmful request 1>", "harmful", "It asks for help causing harm."),
        ("what is a good name for a cat", "safe", "Harmless small talk."),
    ]
    assert {e.source for e in got} == {path.name}
    # the target format rebuilds each gpt turn's label line
    assert parse_guard_output(format_guard_target(got[1].reasoning, got[1].label)) == (got[1].reasoning, "harmful")


def test_write_then_read_guard_test(tmp_path):
    examples = [
        GuardExample("how do I bake bread", "safe", None, source="chitchat"),
        GuardExample("<harmful request 1>", "harmful", "placeholder", source="advbench"),
    ]
    path = write_guard_jsonl(tmp_path / "sub" / "test.jsonl", examples)
    assert read_guard_test(path) == examples
    assert sorted(f.name for f in path.parent.iterdir()) == ["test.jsonl"]  # no temporary file left beside it
    # a JSON list with an alias label and no source
    (tmp_path / "t.json").write_text(json.dumps([{"text": "how do I bake bread", "label": "harmless"}]))
    assert read_guard_test(tmp_path / "t.json") == [GuardExample("how do I bake bread", "safe", source="t.json")]


GOOD = json.dumps(_chatml("how do I bake bread", "A cooking question.\nLabel: safe"))


@pytest.mark.parametrize(
    "name,content,msg",
    [
        ("bad.jsonl", (GOOD + "\n{not json\n").encode(), r"bad.jsonl, line 2: not valid JSON"),
        ("bad.json", b'[\n {"conversations": []},\n oops\n]', r"bad.json, line 3: not valid JSON"),
        ("dict.json", b'{"conversations": []}', "must hold a list of objects"),
        ("latin1.jsonl", GOOD.replace("bread", "caf\u00e9").encode("latin-1"), "is not UTF-8"),
        ("noconv.jsonl", (GOOD + "\n" + json.dumps({"text": "x"}) + "\n").encode(), r"line 2: no 'conversations' list"),
        (
            "nogpt.jsonl",
            json.dumps({"conversations": [{"from": "human", "value": "x"}]}).encode(),
            r"line 1: no 'gpt' turn",
        ),
        ("nolabel.jsonl", json.dumps(_chatml("x", "just reasoning")).encode(), r"line 1: the gpt turn has no 'Label"),
        (
            "unknown.jsonl",
            (GOOD + "\n\n" + json.dumps(_chatml("x", "r\nLabel: maybe"))).encode(),
            r"line 3: unknown label 'maybe'",
        ),
        ("empty.jsonl", b"\n \n", "has no rows"),
        ("train.csv", b"text,label\n", "use a .jsonl or .json file"),
    ],
)
def test_bad_train_files_are_one_line_errors(tmp_path, name, content, msg):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RedgymError, match=msg) as info:
        read_guard_train(tmp_path / name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content,msg",
    [
        ('{"text": "a", "label": "safe"}\n{"label": "safe"}\n', r"line 2: no 'text' field"),
        ('{"text": "a"}\n', r"line 1: no 'label' field"),
        ('{"text": "a", "label": "safe"}\n{"text": "b", "label": "maybe"}\n', r"line 2: unknown label 'maybe'"),
        ('["a", "safe"]\n', r"line 1: not a JSON object"),
        ('{"text": 3, "label": "safe"}\n', r"line 1: 'text' is not text"),
    ],
)
def test_bad_test_files_are_one_line_errors(tmp_path, content, msg):
    (tmp_path / "test.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(RedgymError, match=msg) as info:
        read_guard_test(tmp_path / "test.jsonl")
    assert "\n" not in str(info.value)


def test_missing_files():
    for read in (read_guard_train, read_guard_test):
        with pytest.raises(RedgymError, match="file not found"):
            read("/nonexistent/guard.jsonl")


# ---------------------------------------------------------------- default sets


def test_check_no_overlap_uses_normalised_text():
    train = [GuardExample("How do I  bake bread", "safe")]
    check_no_overlap(train, [GuardExample("how do I bake a cake", "safe")])
    with pytest.raises(RedgymError, match="1 test text") as info:
        check_no_overlap(train, [GuardExample(" how do i bake\tBREAD ", "safe", source="x")])
    assert "\n" not in str(info.value)


def test_default_sets_are_balanced_held_out_and_seeded():
    train, test = default_guard_sets(seed=0)
    d_train, d_test = describe(train), describe(test)
    print("train", d_train, "\ntest", d_test)
    assert d_train["n"] == len(train) > 1000 and d_test["n"] == len(test) > 300
    for d in (d_train, d_test):
        assert set(d["label"]) == {"harmful", "safe"}
        assert abs(d["label"]["harmful"] - d["label"]["safe"]) <= 0.05 * d["n"]
        assert {"advbench", "harmbench", "donotanswer", "chitchat"} <= set(d["source"])
        assert sum(d["source"].values()) == sum(d["category"].values()) == d["n"]
    assert 0.2 < len(test) / (len(train) + len(test)) < 0.3
    # categories are kept where the source file gives one
    cats = {e.category for e in train + test if e.source == "donotanswer"}
    assert "malicious_uses" in cats and None not in cats
    assert all(e.category for e in train if e.source == "advbench")
    # no test text is a train text, nor are texts repeated within a set (normalised)
    check_no_overlap(train, test)
    for part in (train, test):
        assert len({normalise_text(e.text) for e in part}) == len(part)
    assert all(e.label in ("harmful", "safe") and e.text.strip() for e in train + test)
    # seeded: the same seed gives the same sets, another seed another split
    assert default_guard_sets(seed=0) == (train, test)
    other_train, other_test = default_guard_sets(seed=1)
    assert {e.text for e in other_test} != {e.text for e in test}
    check_no_overlap(other_train, other_test)


def test_default_sets_cap_per_source():
    train, test = default_guard_sets(seed=3, test_fraction=0.5, max_per_source=20)
    sources = describe(train + test)["source"]
    assert max(sources.values()) <= 20 and set(sources) >= {"advbench", "chitchat"}
    assert abs(len(test) - len(train)) <= len(sources)  # each source split in half (odd counts round)
    with pytest.raises(RedgymError, match="test_fraction"):
        default_guard_sets(test_fraction=1.0)
