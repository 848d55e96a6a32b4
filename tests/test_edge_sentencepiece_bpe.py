"""The device runtime's pure-Python SentencePiece BPE gives the ids and text of the
``sentencepiece`` library and of keras-nlp's tokenizer, on whole test splits and hard cases."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from keras_transformer_edge.runtime.sentencepiece_bpe import SentencePieceBPE
from keras_transformer_pipelines.gettext_corpus import build_corpus, find_catalogs
from keras_transformer_pipelines.synthetic import word_translation_pairs
from keras_transformer_pipelines.tokenizers import (
    END_ID,
    PAD_ID,
    START_ID,
    UNK_ID,
    save_tokenizer,
    train_sentencepiece,
    train_tokenizer,
)

HARD_CASES = [
    "",
    " ",
    "   ",
    "red",
    " red",
    "red ",
    "  red   cat  ",
    "red\u00a0cat",  # no-break space: a character of its own under identity
    "\tred\tcat\t",
    "red\ncat",
    "😀",
    "red 😀 cat 🚀",
    "東京 red 日本語のテキスト",
    "e\u0301te\u0301 cafe\u0301",  # combining accents
    "«red cat»",
    "« Ouvrir le fichier »",
    "L'élève a lu 3 livres — naïve façon, cœur ouvert.",
    "\u2581",
    "red\u2581",
    "\u2581\u2581 \u2581red",
    "<s> </s> <unk> <pad> <0x41>",
    "\ufffd \u200b \u01c5",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "RED CAT.",
    "ooo OOO eee ooooo",  # equal-score pairs: the leftmost merges first
    "a" * 300,
    "red" * 100,
]


@dataclass
class Case:
    """A trained tokenizer, its texts, and what the library and keras-nlp make of them."""

    texts: list[str]
    ours: SentencePieceBPE
    library: sentencepiece.SentencePieceProcessor
    keras_ids: list[list[int]]
    keras_text: list[str]
    folder: Path


def _lists(ids) -> list[list[int]]:
    ids = ids.to_list() if hasattr(ids, "to_list") else ids
    return [[int(index) for index in row] for row in ids]


def _strings(texts) -> list[str]:
    texts = texts.numpy().tolist() if hasattr(texts, "numpy") else texts
    return [text.decode("utf-8") if isinstance(text, bytes) else str(text) for text in texts]


def _case(train: list[str], test: list[str], vocabulary_size: int, folder: Path) -> Case:
    # keras-nlp's op dies when a test reseeds (see conftest), so its outputs are taken now.
    tokenizer = train_tokenizer(train, vocabulary_size)
    save_tokenizer(tokenizer, folder)
    texts = test + HARD_CASES
    keras_ids = _lists(tokenizer(texts))
    return Case(
        texts=texts,
        ours=SentencePieceBPE.load(folder),
        library=sentencepiece.SentencePieceProcessor(model_proto=tokenizer.proto),
        keras_ids=keras_ids,
        keras_text=_strings(tokenizer.detokenize(keras_ids)),
        folder=folder,
    )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Case:
    pairs = word_translation_pairs(3000, seed=0)
    train, test = pairs[:1850], pairs[1850:]
    flat = [text for pair in train for text in pair]
    return _case(flat, [text for pair in test for text in pair], 400, tmp_path_factory.mktemp("s"))


@pytest.fixture(scope="module")
def gettext(tmp_path_factory) -> Case:
    catalogs = find_catalogs("fr")
    if not catalogs:
        pytest.skip("no French gettext catalogs on this machine")
    splits = build_corpus(catalogs)
    train = [text for pair in splits["train"] for text in pair]
    test = [text for pair in splits["test"] for text in pair]
    return _case(train, test, 6000, tmp_path_factory.mktemp("g"))


@pytest.fixture(params=["synthetic", "gettext"])
def case(request) -> Case:
    return request.getfixturevalue(request.param)


def _mismatches(got: list, expected: list, texts: list[str]) -> list[str]:
    return [f"{text!r}: {a} != {b}" for text, a, b in zip(texts, got, expected) if a != b][:5]


def test_ids_match_the_library_and_keras_nlp(case):
    ours = [case.ours.encode(text) for text in case.texts]
    library = [case.library.encode(text) for text in case.texts]
    assert len(case.texts) > 2300
    assert _mismatches(ours, library, case.texts) == []
    assert _mismatches(ours, case.keras_ids, case.texts) == []
    assert UNK_ID not in {index for ids in ours for index in ids}  # byte fallback instead


def test_decode_matches_the_library_and_keras_nlp(case):
    ids = [case.library.encode(text) for text in case.texts]
    ours = [case.ours.decode(row) for row in ids]
    assert _mismatches(ours, [case.library.decode(row) for row in ids], case.texts) == []
    assert _mismatches(ours, case.keras_text, case.texts) == []
    # Text without extra spaces comes back byte for byte.
    kept = [t for t in case.texts if t == t.strip(" ") and "  " not in t and "\u2581" not in t]
    assert [case.ours.decode(case.ours.encode(text)) for text in kept] == kept


def test_decode_of_any_ids_matches_the_library(synthetic):
    """Control, unknown and byte ids, byte runs that are not UTF-8 (one U+FFFD per byte)."""
    rng = random.Random(0)
    size = synthetic.ours.vocabulary_size
    for _ in range(2000):
        ids = [rng.choice([rng.randrange(4), rng.randrange(4, 260), rng.randrange(size)])]
        ids += [rng.randrange(4, 260) if rng.random() < 0.6 else rng.randrange(size)]
        ids += [rng.randrange(size) for _ in range(rng.randrange(6))]
        assert synthetic.ours.decode(ids) == synthetic.library.decode(ids), ids
    assert synthetic.ours.decode([START_ID, PAD_ID, END_ID]) == ""
    with pytest.raises(IndexError, match="out of range"):
        synthetic.ours.decode([size])


def test_special_ids_and_vocabulary(synthetic):
    ours = synthetic.ours
    assert (ours.pad_id, ours.start_id, ours.end_id, ours.unk_id) == (0, 1, 2, 3)
    vocabulary = (synthetic.folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    assert [ours.id_to_piece(i) for i in range(ours.vocabulary_size)] == vocabulary[:-1]
    assert ours.piece_to_id("no such piece") == UNK_ID


VARIANT_TEXTS = [" ".join(pair) for pair in word_translation_pairs(300, seed=5)] + [
    "red  cat  <sep> dog",
    "© open the  door ©",
]


UNSEEN = ["é", "aé🚀b", "red  cat <sep>§§ dog red cat", "§ cat dog  door © ▁red▁cat"]


@pytest.fixture(scope="module")
def variant_base() -> bytes:
    return train_sentencepiece(VARIANT_TEXTS, 330)


def _edited(proto: bytes, edit: Callable) -> bytes:
    """``proto`` after ``edit(model)`` on its parsed ``ModelProto``."""
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    edit(model)
    return model.SerializeToString()


def _user_defined(model) -> None:
    for symbol in ["<sep>", "§", "door ©", "cat dog", "▁red▁cat"]:
        model.pieces.add(piece=symbol, score=0.0, type=model.SentencePiece.USER_DEFINED)


def _spanning(model) -> None:  # merges across a space: no word-by-word shortcut then
    for symbol in ["e▁", "e▁t", "s▁"]:
        model.pieces.add(piece=symbol, score=0.0, type=model.SentencePiece.NORMAL)


def _no_byte_fallback(model) -> None:
    kept = [piece for piece in model.pieces if piece.type != piece.BYTE]
    del model.pieces[:]
    model.pieces.extend(kept)
    model.trainer_spec.byte_fallback = False


def _unused(model) -> None:  # merged pieces that encoding splits back into their parts
    merged = [p for p in model.pieces if p.type == p.NORMAL and len(p.piece) > 2]
    for piece in merged[::3]:
        piece.type = piece.UNUSED


def _spec(**flags) -> Callable:
    return lambda model: [setattr(model.normalizer_spec, k, v) for k, v in flags.items()]


@pytest.mark.parametrize(
    "edit",
    [
        _spec(add_dummy_prefix=False),
        _spec(remove_extra_whitespaces=False),
        _spec(add_dummy_prefix=False, remove_extra_whitespaces=False),
        _spec(escape_whitespaces=False),
        _user_defined,
        _spanning,
        _no_byte_fallback,
        _unused,
    ],
    ids=[
        "no-prefix",
        "keep-spaces",
        "neither",
        "raw-spaces",
        "user-defined",
        "spanning",
        "no-bytes",
        "unused",
    ],  # fmt: skip
)
def test_other_normalizer_options_and_piece_types_match_the_library(variant_base, edit):
    proto = _edited(variant_base, edit)
    ours, library = SentencePieceBPE(proto), sentencepiece.SentencePieceProcessor(model_proto=proto)
    for text in HARD_CASES + VARIANT_TEXTS[:60] + VARIANT_TEXTS[-2:] + UNSEEN:
        ids = library.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.encode(text) == ids, text  # again: from the words it remembers
        assert ours.decode(ids) == library.decode(ids), text


def _refusal(data: bytes) -> str:
    with pytest.raises(ValueError) as error:
        SentencePieceBPE(data)
    message = str(error.value)
    assert "\n" not in message and message.startswith("unusable SentencePiece model: ")
    return message


def test_truncated_or_corrupt_models_are_refused_in_one_line(synthetic, tmp_path):
    data = (synthetic.folder / "sentencepiece.model").read_bytes()
    cuts = sorted(
        {*range(0, len(data), max(1, len(data) // 150)), *range(len(data) - 60, len(data))}
    )
    for cut in cuts:
        _refusal(data[:cut])
    assert "truncated" in _refusal(data[: len(data) - 3])
    assert "empty" in _refusal(b"")
    _refusal(b"this is not a model")
    assert "varint" in _refusal(b"\xff" * 12)
    broken = tmp_path / "sentencepiece.model"
    broken.write_bytes(data[:-5])
    with pytest.raises(ValueError, match=f"^{broken}: unusable SentencePiece model: "):
        SentencePieceBPE.load(broken)
    (tmp_path / "tokenizer.json").write_text('{"kind": "wordpiece"}')
    with pytest.raises(ValueError, match="not sentencepiece"):
        SentencePieceBPE.load(tmp_path)


def test_other_model_types_and_normalizers_are_refused(variant_base):
    def unigram(model) -> None:
        model.trainer_spec.model_type = model.trainer_spec.UNIGRAM

    def nfkc(model) -> None:
        model.normalizer_spec.name = "nmt_nfkc"
        model.normalizer_spec.precompiled_charsmap = b"\x04\0\0\0rules"

    def suffix(model) -> None:
        model.trainer_spec.treat_whitespace_as_suffix = True

    assert "model type is UNIGRAM, only BPE" in _refusal(_edited(variant_base, unigram))
    assert "'nmt_nfkc', only 'identity'" in _refusal(_edited(variant_base, nfkc))
    assert "treat_whitespace_as_suffix" in _refusal(_edited(variant_base, suffix))


def test_a_200_character_sentence_encodes_fast(gettext):
    text = max(gettext.texts[: -len(HARD_CASES)], key=len)[:200]
    gettext.ours.encode(text)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(50):
            gettext.ours.encode(text)
        best = min(best, (time.perf_counter() - start) / 50)
    assert best < 0.003, f"{best * 1e3:.2f} ms for {len(text)} characters"


def test_the_runtime_imports_neither_tensorflow_keras_nor_sentencepiece(synthetic):
    code = (
        "import sys\n"
        "from keras_transformer_edge.runtime.sentencepiece_bpe import SentencePieceBPE\n"
        f"tokenizer = SentencePieceBPE.load({str(synthetic.folder)!r})\n"
        "assert tokenizer.decode(tokenizer.encode('red cat')) == 'red cat'\n"
        "heavy = ('tensorflow', 'keras', 'sentencepiece', 'keras_nlp', 'keras_hub', 'google')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
