"""The labelling CSV round trip, its one-line errors, and PyRIT's human-scored harm sets."""

import csv

import pytest

from redgym.data.labels import Labelled, pyrit_harm_sets, read_labelled_csv, write_labelling_csv
from redgym.errors import RedgymError

ROWS = [
    {"id": "c0:1", "cluster": 0, "distance": 0.12, "text": "well, damn, that went badly", "turn": 2},
    {"id": "c0:2", "cluster": 0, "distance": 0.31, "text": 'a line with a comma, and "quotes"\nand a newline'},
    {"id": "c1:1", "cluster": 1, "distance": 0.05, "text": "naïve café talk", "source": "dev"},
]


def fill_labels(path, labels: list[str]) -> None:
    """What a person does in a spreadsheet: fill the label column, keep everything else."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for row, label in zip(rows, labels):
        row["label"] = label
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_round_trip_reads_the_labels_a_person_filled_in(tmp_path):
    path = write_labelling_csv(tmp_path / "out" / "to_label.csv", ROWS)
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "cluster", "distance", "text", "label", "turn", "source"]
    assert [r["label"] for r in rows] == ["", "", ""] and rows[1]["turn"] == "" and rows[2]["source"] == "dev"
    fill_labels(path, [" Toxic ", "", "ok"])  # loose spelling; the middle row stays unlabelled
    got = read_labelled_csv(path, labels=["toxic", "ok"])
    assert got == [Labelled("c0:1", "well, damn, that went badly", "toxic"), Labelled("c1:1", "naïve café talk", "ok")]
    assert read_labelled_csv(path)[0].label == "Toxic"  # without a label set the spelling is kept (stripped)


def test_bom_and_missing_ids_are_accepted(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,Label\nhello there,ok\ndamn it,toxic\n".encode("utf-8"))
    got = read_labelled_csv(path, labels=["ok", "toxic"])
    assert got == [Labelled("row2", "hello there", "ok"), Labelled("row3", "damn it", "toxic")]


def one_line(path, match: str, labels=None) -> str:
    with pytest.raises(RedgymError, match=match) as e:
        read_labelled_csv(path, labels)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "is empty"),
        (b"  \n\n", "is empty"),
        (b"id,text,label\n", "no rows"),
        (b"id,text\n1,hello\n", "no 'label' column"),
        (b"id,label\n1,ok\n", "no 'text' column"),
        (b"id,text,label\n1,hello,\n2,there,\n", "no labelled rows"),
        ("id,text,label\n1,caf\u00e9 talk,ok\n".encode("cp1252"), "not UTF-8"),
        ("id,text,label\n1,hello,ok\n".encode("utf-16"), "not UTF-8"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path, content, match):
    path = tmp_path / "labels.csv"
    path.write_bytes(content)
    one_line(path, match, labels=["ok", "toxic"])


def test_unknown_label_names_its_row_and_missing_file(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("id,text,label\n1,hello,ok\n2,damn it,toxc\n", encoding="utf-8")
    assert "row 3" in one_line(path, "label 'toxc' is not one of", labels=["ok", "toxic"])
    one_line(tmp_path / "nowhere.csv", "not found")


def test_pyrit_harm_sets_have_both_labels():
    sets = pyrit_harm_sets()
    assert "violence" in sets and "hate_speech_multi_score" in sets
    assert not any(name.startswith("mini_") for name in sets)  # samples of the multi-score sets: not counted twice
    for name, items in sets.items():
        counts = {label: sum(x.label == label for x in items) for label in ("harmful", "harmless")}
        assert counts["harmful"] > 0 and counts["harmless"] > 0, name
        assert {x.label for x in items} == {"harmful", "harmless"}
        assert len({x.id for x in items}) == len(items) and all(x.text.strip() for x in items)
    assert set(pyrit_harm_sets(["violence"])) == {"violence"}
    with pytest.raises(RedgymError, match="unknown PyRIT harm set"):
        pyrit_harm_sets(["nosuch"])


def test_pyrit_labels_follow_the_mean_human_score(tmp_path, monkeypatch):
    """A 3-rater file: mean 0.5 is harmful, mean 0.42 is not; the '# dataset_version' line is skipped."""
    from redgym.data import labels

    folder = tmp_path / "harm"
    folder.mkdir()
    (folder / "demo_multi_score.csv").write_text(
        "# dataset_version=1.0, harm_definition=demo.yaml,,,,\n"
        "harm_category,objective,assistant_response,human_score_1,human_score_2,human_score_3,data_type\n"
        'demo,q1,"a reply, with a comma",0.5,0.25,0.75,text\n'
        "demo,q2,another reply,0.5,0.5,0.25,text\n",
        encoding="utf-8",
    )
    (folder / "mini_demo.csv").write_text("ignored", encoding="utf-8")
    monkeypatch.setattr(labels, "pyrit_harm_folder", lambda: folder)
    assert pyrit_harm_sets() == {
        "demo_multi_score": [
            Labelled("pyrit:demo_multi_score:0", "a reply, with a comma", "harmful"),
            Labelled("pyrit:demo_multi_score:1", "another reply", "harmless"),
        ]
    }


def test_missing_pyrit_is_one_line_with_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RedgymError, match=r"pip install --no-deps pyrit==1\.1\.0") as e:
        pyrit_harm_sets()
    assert "\n" not in str(e.value)
