"""Transfer replay: a run's recorded adversary turns put to another defender, none generated."""

import json

import pytest

from redgym.cli import main
from redgym.errors import RedgymError
from redgym.models.replay import ScriptedSpeaker
from redgym.rollout import rollout


def test_scripted_speaker_says_each_conversations_recorded_turns_in_order(tiny_lm):
    scripts = [(("hi",), ["first a", "second a"]), (("hi",), ["first b", "second b"]), (("yo", "ok"), ["only c", "c2"])]
    convs = rollout(
        [("p1", ("hi",)), ("p1", ("hi",)), ("p2", ("yo", "ok"))],
        ScriptedSpeaker(scripts),
        tiny_lm,
        horizon=2,
        batch_size=2,
        progress=False,
    )
    said = [[t.text for t in c.turns if t.speaker == "adversary"] for c in convs]
    assert said == [["first a", "second a"], ["first b", "second b"], ["only c", "c2"]]
    assert all(t.text is not None for c in convs for t in c.turns if t.speaker == "defender")


def test_scripted_speaker_refuses_a_longer_horizon_than_recorded(tiny_lm):
    with pytest.raises(RedgymError, match="no recorded adversary turn 2"):
        rollout([("p", ("hi",))], ScriptedSpeaker([(("hi",), ["only one"])]), tiny_lm, horizon=2, progress=False)


def test_eval_replay_puts_the_recorded_turns_to_the_defender(tiny_model_dir, prompt_file, tmp_path, capsys):
    src = tmp_path / "src"
    common = [
        "--adversary_model",
        str(tiny_model_dir),
        "--defender_model",
        str(tiny_model_dir),
        "--prompts",
        str(prompt_file),
        "--max_new_tokens",
        "5",
        "--test_fraction",
        "0.3",
        "--horizon",
        "1",
        "--n_eval_prompts",
        "3",
        "--quiet",
    ]
    assert main(["eval", "--out", str(src), *common]) == 0
    recorded = [json.loads(x) for x in (src / "samples.jsonl").read_text().splitlines()]
    # mark every recorded adversary turn: a replay says the marks, a regeneration (same seed, same model: the same
    # turns) would not
    for i, r in enumerate(recorded):
        r["turns"][0]["text"] = f"recorded turn {i}"
    (src / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recorded))
    out = tmp_path / "replay"
    assert main(["eval", "--replay", str(src), "--out", str(out), *common]) == 0
    replayed = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    adv = lambda rows: [(r["prompt_id"], r["turns"][0]["text"]) for r in rows]  # noqa: E731
    assert adv(replayed) == adv(recorded)  # the same adversary turns on the same prompts, nothing generated
    report = json.loads((out / "report.json").read_text())
    assert report["replay_of"] == str(src) and report["n_conversations"] == len(recorded)


def test_eval_replay_of_a_folder_without_samples_is_one_line(tmp_path, capsys):
    assert main(["eval", "--replay", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "samples.jsonl not found" in err
