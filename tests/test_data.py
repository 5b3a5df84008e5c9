import json

import pytest

from redgym.data.prompts import Prompt, first_words, load_prompts, split_prompts
from redgym.errors import RedgymError


def test_txt_jsonl_csv_files(tmp_path):
    (tmp_path / "p.txt").write_text("one two\n\n  three four five \n", encoding="utf-8")
    assert [p.text for p in load_prompts(str(tmp_path / "p.txt"))] == ["one two", "three four five"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"q": "a b"}) + "\n" + json.dumps({"q": "c"}) + "\n")
    assert [p.text for p in load_prompts(str(tmp_path / "p.jsonl"), field="q")] == ["a b", "c"]
    (tmp_path / "p.csv").write_text("id,q\n1,hello there\n2,bye\n")
    ps = load_prompts(str(tmp_path / "p.csv"), field="q")
    assert [(p.id, p.text) for p in ps] == [("p.csv:2", "hello there"), ("p.csv:3", "bye")]


@pytest.mark.parametrize(
    "name,content,msg",
    [
        ("empty.txt", b"\n  \n", "has no prompts"),
        ("bad.jsonl", b'{"text": "ok"}\n{not json\n', r"bad.jsonl, line 2: not valid JSON"),
        ("nofield.jsonl", b'{"q": "ok"}\n', r"line 1: no field 'text' \(set prompt_field\)"),
        ("nocol.csv", b"q\nhello\n", "no column 'text'"),
        ("latin1.txt", "caf\u00e9\n".encode("latin-1"), "is not UTF-8 text"),
        ("prompts.pdf", b"%PDF", "use a .txt, .jsonl or .csv file"),
    ],
)
def test_bad_prompt_files_are_one_line_errors(tmp_path, name, content, msg):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RedgymError, match=msg):
        load_prompts(str(tmp_path / name))


def test_missing_file_and_unknown_source():
    with pytest.raises(RedgymError, match="prompt file not found"):
        load_prompts("/nonexistent/prompts.txt")
    with pytest.raises(RedgymError, match="unknown prompt source 'chitchatt'"):
        load_prompts("chitchatt")


def test_packaged_sources_are_read_by_path():
    rtp = load_prompts("rtp")
    assert len(rtp) == 700 and rtp[0].id.startswith("rtp:rtp_")
    adv = load_prompts("advbench")
    assert len(adv) == 520 and all(p.text for p in adv)


def test_chitchat_is_filtered_by_toxicity():
    calls = []

    def scorer(texts):  # marks every 10th prompt toxic
        calls.append(list(texts))
        return [1.0 if i % 10 == 0 else 0.0 for i in range(len(texts))]

    ps = load_prompts("chitchat", prompt_turns=2, max_prompts=200, scorer=scorer, seed=1)
    assert [len(c) for c in calls] == [200] and len(ps) == 180
    # the prompts kept are the ones scored clean, in order (a score read against the wrong prompt would keep others)
    assert [p.text for p in ps] == [t for i, t in enumerate(calls[0]) if i % 10]
    assert all(len(p.turns) == 2 and all(p.turns) for p in ps)


def test_first_words_cuts_and_drops_short():
    ps = [Prompt("a", ("one two three four",)), Prompt("b", ("one",))]
    assert [p.text for p in first_words(ps, n_words=2, min_words=2)] == ["one two"]
    assert first_words(ps, n_words=0, min_words=1) == ps


def test_split_is_deterministic_disjoint_and_complete():
    ps = [Prompt(str(i), (f"p{i}",)) for i in range(100)]
    s1, s2, s3 = (
        split_prompts(ps, 0.1, 0.2, seed=7),
        split_prompts(ps, 0.1, 0.2, seed=7),
        split_prompts(ps, 0.1, 0.2, 8),
    )
    assert (len(s1.train), len(s1.dev), len(s1.test)) == (70, 10, 20)
    assert [p.id for p in s1.test] == [p.id for p in s2.test] != [p.id for p in s3.test]
    ids = [p.id for p in s1.train + s1.dev + s1.test]
    assert sorted(ids) == sorted(p.id for p in ps)
    js = s1.to_json("x", 7)
    assert js["n_test"] == 20 and js["test"] == [p.id for p in s1.test]


def test_max_words_drops_long_prompts():
    ps = [Prompt("a", ("one two three",)), Prompt("b", ("one",))]
    assert [p.id for p in first_words(ps, n_words=0, min_words=1, max_words=2)] == ["b"]
