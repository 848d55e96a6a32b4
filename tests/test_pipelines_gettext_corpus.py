"""The offline gettext corpus: filtering, de-duplication, deterministic splits."""

import json
import struct

import pytest

from keras_transformer_pipelines import gettext_corpus
from keras_transformer_pipelines.gettext_corpus import (
    build_corpus,
    catalog_pairs,
    find_catalogs,
    is_clean_text,
    split_of,
    write_corpus,
)
from keras_transformer_pipelines.readers import read_parallel_tsv


def write_mo(path, entries):
    """A GNU .mo file (little-endian, no hash table) from {msgid: msgstr}."""
    keys = sorted(entries)
    ids = b"".join(k.encode() + b"\0" for k in keys)
    strs = b"".join(entries[k].encode() + b"\0" for k in keys)
    n = len(keys)
    table_start = 7 * 4
    ids_start = table_start + 16 * n
    strs_start = ids_start + len(ids)
    offsets, position = [], 0
    for k in keys:
        offsets.append((len(k.encode()), ids_start + position))
        position += len(k.encode()) + 1
    translations, position = [], 0
    for k in keys:
        translations.append((len(entries[k].encode()), strs_start + position))
        position += len(entries[k].encode()) + 1
    header = struct.pack("<7I", 0x950412DE, 0, n, table_start, table_start + 8 * n, 0, 0)
    tables = b"".join(struct.pack("<2I", *pair) for pair in offsets + translations)
    path.write_bytes(header + tables + ids + strs)


ENTRIES = {
    "": "Content-Type: text/plain; charset=UTF-8\n",
    "Open the file": "Ouvrir le fichier",
    "Save %s now": "Enregistrer %s maintenant",
    "_Quit the program": "_Quitter le programme",
    "menu\x04Close window": "Fermer la fenêtre",
    "Untranslated message here": "",
    "Show hidden files": "Afficher les fichiers cachés",
    "OK": "OK",
    "<b>Bold</b> words": "<b>Gras</b> mots",
}


def test_clean_text_filter():
    assert is_clean_text("Show hidden files")
    for bad in [
        "Save %s now",
        "_Quit",
        "<b>x</b> y",
        "two\nlines",
        "OneWord",
        "--verbose mode",
        "{name} is here",
        " padded words",
    ]:
        assert not is_clean_text(bad), bad


def test_catalog_pairs_skip_header_context_and_untranslated(tmp_path):
    write_mo(tmp_path / "app.mo", ENTRIES)
    pairs = dict(catalog_pairs(tmp_path / "app.mo"))
    assert "" not in pairs and "menu\x04Close window" not in pairs
    assert "Untranslated message here" not in pairs and "OK" not in pairs
    assert pairs["Open the file"] == "Ouvrir le fichier"


def test_build_and_write_corpus(tmp_path):
    write_mo(tmp_path / "a.mo", ENTRIES)
    write_mo(
        tmp_path / "b.mo",
        {"Open the file": "Ouvre le fichier", "Delete the folder": "Supprimer le dossier"},
    )
    splits = build_corpus([tmp_path / "a.mo", tmp_path / "b.mo"])
    pairs = dict(p for split in splits.values() for p in split)
    assert pairs == {
        "Open the file": "Ouvrir le fichier",  # the first catalog wins a duplicate
        "Show hidden files": "Afficher les fichiers cachés",
        "Delete the folder": "Supprimer le dossier",
    }
    for name, split in splits.items():
        assert all(split_of(source) == name for source, _ in split)
    manifest = write_corpus(splits, tmp_path / "out", [tmp_path / "a.mo"], "fr")
    assert sum(manifest["pairs"].values()) == 3
    read_back = [p for name in splits for p in read_parallel_tsv(tmp_path / "out" / f"{name}.tsv")]
    assert dict(read_back) == pairs
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["target_language"] == "fr"


def test_split_is_stable_and_roughly_proportional():
    assert split_of("Open the file") == split_of("Open the file")
    names = [split_of(f"message number {i}") for i in range(4000)]
    assert 0.87 < names.count("train") / 4000 < 0.93
    assert names.count("valid") > 100 and names.count("test") > 100


def test_corpus_from_this_machines_catalogs():
    catalogs = find_catalogs("fr")
    if not catalogs:
        pytest.skip("no French gettext catalogs on this machine")
    splits = build_corpus(catalogs)
    assert len(splits["train"]) > 1000 and len(splits["test"]) > 50
    sources = [source for split in splits.values() for source, _ in split]
    assert len(sources) == len(set(sources))
    assert all(is_clean_text(s) and is_clean_text(t) for split in splits.values() for s, t in split)


def test_language_pair_names_the_recipes_languages(monkeypatch, tmp_path):
    table = tmp_path / "iso_639-2.json"
    table.write_text('{"639-2": [{"alpha_2": "de", "alpha_3": "ger", "name": "German"}]}')
    monkeypatch.setattr(
        gettext_corpus, "ISO_639_FILES", (str(tmp_path / "absent.json"), str(table))
    )
    assert gettext_corpus.language_pair("gettext:de") == ("English", "German")
    assert gettext_corpus.language_pair("gettext:de_AT") == ("English", "German")
    # a code the machine's table does not know stays a code; other data has no pair
    assert gettext_corpus.language_pair("gettext:xx") == ("English", "xx")
    assert gettext_corpus.language_pair(None) is None
