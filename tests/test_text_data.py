"""Reading symptom corpus and query files: what each kind of file must hold, and errors that name the line."""

import json

import pytest

from medsora.text.corpus import read_corpus

ORGANS = ["liver", "pancreas", "kidney"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_each_kind_reads_its_labels(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "jaundice", "organ": "liver", "group": "g1"}])
    assert read_corpus(train, ORGANS, "train") == [
        {"text": "jaundice", "organ": "liver", "group": "g1", "labels": ["liver"]}
    ]
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "flank pain", "labels": ["kidney", "liver"]}])
    assert read_corpus(test, ORGANS, "test")[0]["labels"] == ["kidney", "liver"]
    ood = write_jsonl(tmp_path / "ood.jsonl", [{"text": "knee pain"}])
    assert read_corpus(ood, ORGANS, "ood")[0]["labels"] == []
    queries = write_jsonl(
        tmp_path / "queries.jsonl",
        [{"text": "raised lipase", "labels": ["pancreas"]}, {"text": "knee pain", "labels": []}],
    )
    assert [r["labels"] for r in read_corpus(queries, ORGANS, "queries")] == [["pancreas"], []]


@pytest.mark.parametrize(
    "kind, record, message",
    [
        ("train", {"text": "jaundice"}, r"queries.jsonl:2: expected organ label\(s\) among"),
        ("test", {"text": "jaundice", "labels": []}, r"queries.jsonl:2: expected organ label\(s\)"),
        ("queries", {"text": "jaundice", "labels": ["heart"]}, r"queries.jsonl:2: .* got \['heart'\]"),
        ("queries", {"text": "  ", "labels": []}, r"queries.jsonl:2: expected a non-empty string field 'text'"),
        (
            "ood",
            {"text": "jaundice", "labels": ["liver"]},
            r"queries.jsonl:2: an out-of-domain text must have no organ",
        ),
    ],
)
def test_a_bad_record_is_refused_naming_its_file_and_line(tmp_path, kind, record, message):
    good = {"text": "yellow skin", "organ": "liver", "labels": [] if kind == "ood" else ["liver"]}
    path = write_jsonl(tmp_path / "queries.jsonl", [good, record])
    with pytest.raises(ValueError, match=message):
        read_corpus(path, ORGANS, kind)


def test_an_unknown_kind_or_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="kind must be 'train', 'test', 'ood' or 'queries', got 'dev'"):
        read_corpus(str(tmp_path / "x.jsonl"), ORGANS, "dev")
    with pytest.raises(FileNotFoundError, match="x.jsonl not found"):
        read_corpus(str(tmp_path / "x.jsonl"), ORGANS, "queries")
