"""Subword tokenizers from keras-nlp, trained on a training split and saved as plain files.

Two kinds, one id layout for the special tokens (the same as the synthetic tasks):

    id 0 pad    id 1 start    id 2 end    id 3 unk

- ``"sentencepiece"``: BPE through the ``sentencepiece`` trainer, run by keras-nlp's
  ``SentencePieceTokenizer``. Detokenized text reads naturally (spaces are pieces, so
  "Ouvrir le fichier…" comes back byte for byte), which translation needs because BLEU and
  chrF are scored on real text. Normalization is ``identity`` and unknown characters fall back
  to bytes, so detokenize(tokenize(text)) == text and a device runtime can reproduce the ids
  without the normalization tables.
- ``"wordpiece"``: keras-nlp's ``WordPieceTokenizer`` with a vocabulary from
  ``compute_word_piece_vocabulary``; for classification and tagging, where text is not
  generated.

A saved tokenizer is a directory: ``tokenizer.json`` (kind and special tokens), plus
``sentencepiece.model`` and a readable ``vocabulary.txt`` (one piece per line, id = line
number), or ``vocabulary.txt`` alone for WordPiece.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import keras_nlp
import sentencepiece
import tensorflow as tf

from keras_transformer.errors import InputProblem, MissingInput
from keras_transformer_pipelines import files

PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = {"pad": "<pad>", "start": "<s>", "end": "</s>", "unk": "<unk>"}
WORDPIECE_SPECIAL_TOKENS = {"pad": "[PAD]", "start": "[START]", "end": "[END]", "unk": "[UNK]"}
KINDS = ("sentencepiece", "wordpiece")
CONFIG_FILE, VOCABULARY_FILE, SENTENCEPIECE_FILE = (
    "tokenizer.json",
    "vocabulary.txt",
    "sentencepiece.model",
)


def train_sentencepiece(texts: Iterable[str], vocabulary_size: int) -> bytes:
    """A serialized SentencePiece BPE model trained on ``texts``.

    With byte fallback the vocabulary holds 256 byte pieces and every character seen, so it
    needs a few hundred entries at least.

    keras-nlp's ``compute_sentence_piece_proto`` fixes NFKC normalization and other special
    ids, so the trainer is called directly with the project's layout.
    """
    model = io.BytesIO()
    try:
        _train_sentencepiece(texts, vocabulary_size, model)
    except RuntimeError as error:  # the trainer's own message, e.g. vocabulary too small
        reason = str(error).splitlines()[0].split("] ")[-1]
        raise InputProblem(f"SentencePiece training failed: {reason}") from None
    return model.getvalue()


def _train_sentencepiece(texts: Iterable[str], vocabulary_size: int, model: io.BytesIO) -> None:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([text for text in texts if text]),
        model_writer=model,
        vocab_size=vocabulary_size,
        model_type="bpe",
        normalization_rule_name="identity",
        byte_fallback=True,
        character_coverage=1.0,
        pad_id=PAD_ID,
        bos_id=START_ID,
        eos_id=END_ID,
        unk_id=UNK_ID,
        pad_piece=SPECIAL_TOKENS["pad"],
        bos_piece=SPECIAL_TOKENS["start"],
        eos_piece=SPECIAL_TOKENS["end"],
        unk_piece=SPECIAL_TOKENS["unk"],
        num_threads=2,
        minloglevel=2,
    )


def train_tokenizer(
    texts: Iterable[str], vocabulary_size: int, kind: str = "sentencepiece", lowercase: bool = False
):
    """A keras-nlp tokenizer of ``kind`` with a vocabulary learned from ``texts``."""
    if kind not in KINDS:
        raise InputProblem(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
    if vocabulary_size < 16:
        raise InputProblem(f"vocabulary_size must be >= 16, got {vocabulary_size}")
    texts = [text.lower() if lowercase else text for text in texts]
    if not texts:
        raise InputProblem("cannot train a tokenizer on no text")
    if kind == "sentencepiece":
        return keras_nlp.tokenizers.SentencePieceTokenizer(
            proto=train_sentencepiece(texts, vocabulary_size)
        )
    specials = list(WORDPIECE_SPECIAL_TOKENS.values())
    # A list would be read as file names; a dataset is read as text.
    vocabulary = keras_nlp.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(texts).batch(1000),
        vocabulary_size,
        lowercase=lowercase,
        reserved_tokens=specials,
    )
    return keras_nlp.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary,
        lowercase=lowercase,
        oov_token=WORDPIECE_SPECIAL_TOKENS["unk"],
        special_tokens=specials,
    )


def refreshed(tokenizer):
    """A SentencePiece tokenizer with a new TensorFlow op; other tokenizers as they are.

    tensorflow-text's SentencePiece model lives in a kernel-owned resource, and
    ``tf.random.set_seed`` (so ``keras.utils.set_random_seed``) clears the kernel cache in
    eager mode, which deletes it: a tokenizer made before seeding fails with "Resource
    ..._SentencepieceOp... does not exist". Pipelines build their own copy when they start.
    """
    if isinstance(tokenizer, keras_nlp.tokenizers.SentencePieceTokenizer):
        return keras_nlp.tokenizers.SentencePieceTokenizer(proto=tokenizer.proto)
    return tokenizer


def tokenizer_kind(tokenizer) -> str:
    if isinstance(tokenizer, keras_nlp.tokenizers.SentencePieceTokenizer):
        return "sentencepiece"
    if isinstance(tokenizer, keras_nlp.tokenizers.WordPieceTokenizer):
        return "wordpiece"
    raise InputProblem(f"unsupported tokenizer {type(tokenizer).__name__}")


def save_tokenizer(tokenizer, directory: str | Path) -> Path:
    """Write the tokenizer's files into ``directory``, as a whole (an existing one is
    replaced only once the new one is complete: ``files.atomic_directory``)."""
    directory = Path(directory)
    kind = tokenizer_kind(tokenizer)
    vocabulary = tokenizer.get_vocabulary()
    config = {"kind": kind, "vocabulary_size": len(vocabulary)}
    with files.atomic_directory(directory) as folder:
        if kind == "sentencepiece":
            (folder / SENTENCEPIECE_FILE).write_bytes(tokenizer.proto)
            config["special_tokens"] = SPECIAL_TOKENS
        else:
            config["special_tokens"] = WORDPIECE_SPECIAL_TOKENS
            config["lowercase"] = tokenizer.lowercase
        config["special_ids"] = {"pad": PAD_ID, "start": START_ID, "end": END_ID, "unk": UNK_ID}
        (folder / VOCABULARY_FILE).write_text(
            "".join(piece + "\n" for piece in vocabulary), encoding="utf-8"
        )
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory


def load_tokenizer(directory: str | Path):
    """The tokenizer saved by :func:`save_tokenizer` in ``directory``."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise MissingInput(f"no tokenizer in {directory}: {CONFIG_FILE} is missing")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("kind") == "sentencepiece":
        return keras_nlp.tokenizers.SentencePieceTokenizer(
            proto=(directory / SENTENCEPIECE_FILE).read_bytes()
        )
    if config.get("kind") == "wordpiece":
        vocabulary = (directory / VOCABULARY_FILE).read_text(encoding="utf-8").split("\n")[:-1]
        specials = list(config["special_tokens"].values())
        return keras_nlp.tokenizers.WordPieceTokenizer(
            vocabulary=vocabulary,
            lowercase=config.get("lowercase", False),
            oov_token=config["special_tokens"]["unk"],
            special_tokens=specials,
        )
    raise InputProblem(f"{config_path}: unknown tokenizer kind {config.get('kind')!r}")
