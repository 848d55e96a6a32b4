"""Readers: records out, every malformed line reported with its file and line number."""

import json
import logging

import pytest

from keras_transformer_pipelines.readers import (
    MalformedInputError,
    ReadReport,
    read_conll,
    read_labelled,
    read_parallel_tsv,
    read_text,
)


def test_parallel_tsv_skips_and_reports_malformed_lines(tmp_path, caplog):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(
        b"Hello\tBonjour\n"
        b"no tab here\n"
        b"\n"
        b"a\tb\tc\n"
        b"Open the file\tOuvrir le fichier\n"
        b"  \tvide\n"
        b"caf\xe9\tcaf\xc3\xa9\n"
    )
    report = ReadReport(str(path))
    with caplog.at_level(logging.WARNING):
        pairs = list(read_parallel_tsv(path, report=report))
    assert pairs == [("Hello", "Bonjour"), ("Open the file", "Ouvrir le fichier")]
    assert report.records == 2
    assert [line for line, _ in report.skipped] == [2, 4, 6, 7]
    assert f"{path}:2: expected 2 tab-separated columns, got 1" in caplog.text
    assert "not valid UTF-8" in report.skipped[-1][1]
    with pytest.raises(MalformedInputError, match=rf"^{path}:2: expected 2 tab-separated"):
        list(read_parallel_tsv(path, strict=True))


def test_labelled_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(
        "\n".join(
            [
                json.dumps({"text": "great film", "label": "pos"}),
                "{not json",
                json.dumps({"text": "", "label": "neg"}),
                json.dumps({"text": "dull", "label": 0}),
                json.dumps(["a", "list"]),
            ]
        )
    )
    report = ReadReport(str(jsonl))
    assert list(read_labelled(jsonl, report=report)) == [("great film", "pos"), ("dull", "0")]
    assert [line for line, _ in report.skipped] == [2, 3, 5]

    table = tmp_path / "data.csv"
    table.write_text('label,text\npos,"fine, really"\nneg\n')
    report = ReadReport(str(table))
    assert list(read_labelled(table, report=report)) == [("fine, really", "pos")]
    assert report.skipped == [(3, "expected 2 columns, got 1")]
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("sentence,label\nhi,1\n")
    with pytest.raises(
        MalformedInputError, match=r"bad.csv:1: header lacks column\(s\) \['text'\]"
    ):
        list(read_labelled(bad_header))


def test_conll_sentences_and_malformed_lines(tmp_path):
    path = tmp_path / "ner.conll"
    path.write_text(
        "-DOCSTART- O\n\nParis NNP B-LOC\nis VBZ O\n\nJohn NNP B-PER\nbroken\nruns VBZ O\n"
    )
    report = ReadReport(str(path))
    sentences = list(read_conll(path, report=report))
    assert sentences == [(["Paris", "is"], ["B-LOC", "O"]), (["John", "runs"], ["B-PER", "O"])]
    assert report.skipped == [(7, "expected at least 2 columns, got 1")]
    with pytest.raises(MalformedInputError, match="ner.conll:7"):
        list(read_conll(path, strict=True))


def test_plain_text(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\n\n  second  \n")
    assert list(read_text(path)) == ["first line", "second"]
