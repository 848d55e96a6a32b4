"""SentencePiece BPE in pure Python: the ids and text of the ``sentencepiece`` library.

Reads the ``sentencepiece.model`` that
:func:`keras_transformer_pipelines.tokenizers.save_tokenizer` writes (a serialized
``ModelProto``) with a small protobuf wire-format reader (``protobuf_wire.py``), and
reproduces the library's BPE, so keras-nlp's ``SentencePieceTokenizer`` as well, without
TensorFlow or the library:

- :meth:`SentencePieceBPE.encode` normalizes as the ``NormalizerSpec`` says (dummy prefix ``▁``,
  spaces as ``▁``, extra spaces removed), splits into characters (user-defined symbols first,
  longest match, never merged), then merges the adjacent pair whose concatenation is a piece
  with the highest score, leftmost on ties, until none is left. A character left unknown becomes
  the byte pieces ``<0xXX>`` of its UTF-8 bytes with byte fallback, else one ``<unk>`` per run.
- :meth:`SentencePieceBPE.decode` skips control pieces, turns ``▁`` into spaces and drops the
  leading one, writes ``<unk>`` as the model's unknown surface, and reassembles byte pieces into
  UTF-8 with U+FFFD for each byte of an invalid sequence.

Only BPE models with the ``identity`` normalization (no character map) are accepted.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import operator
import struct
from collections.abc import Iterable
from pathlib import Path

from keras_transformer_edge.runtime.protobuf_wire import FIXED32 as _FIXED32
from keras_transformer_edge.runtime.protobuf_wire import LENGTH as _LENGTH
from keras_transformer_edge.runtime.protobuf_wire import VARINT as _VARINT
from keras_transformer_edge.runtime.protobuf_wire import fields as _fields
from keras_transformer_edge.runtime.protobuf_wire import int32 as _int32
from keras_transformer_edge.runtime.protobuf_wire import last as _last
from keras_transformer_edge.runtime.protobuf_wire import message as _message
from keras_transformer_edge.runtime.protobuf_wire import text as _text

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_TYPES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}
SPACE = "\u2581"  # ▁, the escaped space
MODEL_FILE, CONFIG_FILE = "sentencepiece.model", "tokenizer.json"

_MERGEABLE = (NORMAL, USER_DEFINED, UNUSED)  # the pieces BPE merges into
_BYTE_PIECES = {f"<0x{value:02X}>": value for value in range(256)}
WORD_CACHE = 1 << 16  # words whose pieces one tokenizer remembers

# --- UTF-8 as sentencepiece reads it ----------------------------------------------------------


def _decode_utf8(data: bytes) -> str:
    """``data`` as text, each byte of an invalid sequence as U+FFFD (sentencepiece's rule)."""
    try:
        return data.decode("utf-8")  # strict UTF-8 accepts exactly what sentencepiece accepts
    except UnicodeDecodeError:
        pass
    parts, position, end = [], 0, len(data)
    while position < end:
        lead = data[position]
        size = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        chunk = data[position : position + size]
        try:  # a lead byte, its trail bytes, no overlong form, no surrogate, <= U+10FFFF
            parts.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            parts.append("\ufffd")
            size = 1
        position += size
    return "".join(parts)


# --- The tokenizer ----------------------------------------------------------------------------


class SentencePieceBPE:
    """A SentencePiece BPE model read from its serialized ``ModelProto``.

    >>> tokenizer = SentencePieceBPE.load("runs/en-fr/tokenizer")  # doctest: +SKIP
    >>> tokenizer.decode(tokenizer.encode("Ouvrir le fichier"))  # doctest: +SKIP
    'Ouvrir le fichier'
    """

    def __init__(self, model_proto: bytes) -> None:
        try:
            self._read(bytes(model_proto))
        except ValueError as error:
            raise ValueError(f"unusable SentencePiece model: {error}") from None

    @classmethod
    def load(cls, path: str | Path) -> SentencePieceBPE:
        """From a ``.model`` file, or a tokenizer folder written by ``save_tokenizer``."""
        path = Path(path)
        if path.is_dir():
            config = path / CONFIG_FILE
            if config.is_file():
                kind = json.loads(config.read_text(encoding="utf-8")).get("kind")
                if kind != "sentencepiece":
                    raise ValueError(f"{path}: a {kind!r} tokenizer, not sentencepiece")
            path = path / MODEL_FILE
        try:
            return cls(path.read_bytes())
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    # Reading the model.

    def _read(self, data: bytes) -> None:
        if not data:
            raise ValueError("no data (empty file)")
        model = _fields(data)
        trainer, normalizer = _message(model, 2), _message(model, 3)
        if trainer is None:
            raise ValueError("no trainer_spec (truncated file?)")
        if normalizer is None:
            raise ValueError("no normalizer_spec (truncated file?)")
        model_type = _int32(_last(trainer, 3, _VARINT, 1))
        if model_type != 2:
            name = MODEL_TYPES.get(model_type, str(model_type))
            raise ValueError(f"model type is {name}, only BPE is supported")
        name = _text(_last(normalizer, 1, _LENGTH, b""), "normalizer name")
        if name != "identity" or _last(normalizer, 2, _LENGTH, b""):
            raise ValueError(f"normalization is {name!r}, only 'identity' is supported")
        denormalizer = _message(model, 5)
        if denormalizer is not None and _last(denormalizer, 2, _LENGTH, b""):
            raise ValueError("a denormalizer character map is not supported")
        if _last(trainer, 24, _VARINT, 0):
            raise ValueError("treat_whitespace_as_suffix is not supported")
        self.add_dummy_prefix = bool(_last(normalizer, 3, _VARINT, 1))
        self.remove_extra_whitespaces = bool(_last(normalizer, 4, _VARINT, 1))
        self.escape_whitespaces = bool(_last(normalizer, 5, _VARINT, 1))
        self.byte_fallback = bool(_last(trainer, 35, _VARINT, 0))
        self.unknown_surface = _text(_last(trainer, 44, _LENGTH, " \u2047 ".encode()), "unk")
        self._read_pieces(model.get(1, []))
        special = {}
        for key, number, default in [
            ("unk", 45, "<unk>"),
            ("start", 46, "<s>"),
            ("end", 47, "</s>"),
            ("pad", 48, "<pad>"),
        ]:
            piece = _text(_last(trainer, number, _LENGTH, b""), f"{key} piece") or default
            found = self.piece_to_id(piece)
            wanted = UNKNOWN if key == "unk" else CONTROL
            special[key] = found if self._types[found] == wanted else -1
        self.unk_id, self.start_id = special["unk"], special["start"]
        self.end_id, self.pad_id = special["end"], special["pad"]
        # With no space inside a piece (sentencepiece's split_by_whitespace), no merge crosses
        # the space that starts a word, so a text's pieces are its words' pieces: each word is
        # merged once and remembered (300 test sentences: 11.6 ms, then 2.2 ms once their
        # words are known). functools' cache is thread-safe and bounded.
        self._space = SPACE if self.escape_whitespaces else " "
        self._words_apart = not any(self._space in piece[1:] for piece in self._ids)
        self._word_pieces = functools.lru_cache(maxsize=WORD_CACHE)(self._merge)

    def _read_pieces(self, entries: list[tuple[int, int | bytes]]) -> None:
        if not entries:
            raise ValueError("no pieces")
        self._pieces: list[str] = []
        self._types: list[int] = []
        self._scores: dict[str, float] = {}  # mergeable piece -> -score, for the min-heap
        self._normal_ids: dict[str, int] = {}
        self._reserved_ids: dict[str, int] = {}
        self._unused: set[str] = set()
        user_defined, bytes_found = [], set()
        unk = -1
        for index, (wire, entry) in enumerate(entries):
            if wire != _LENGTH:
                raise ValueError("field 1 (pieces) is not a message")
            fields = _fields(entry)  # type: ignore[arg-type]
            piece = _text(_last(fields, 1, _LENGTH, b""), f"piece {index}")
            (score,) = struct.unpack("<f", _last(fields, 2, _FIXED32, b"\0\0\0\0"))
            kind = _int32(_last(fields, 3, _VARINT, NORMAL))
            if not piece:
                raise ValueError(f"piece {index} is empty")
            if not NORMAL <= kind <= BYTE:
                raise ValueError(f"piece {index} has unknown type {kind}")
            ids = self._normal_ids if kind in _MERGEABLE else self._reserved_ids
            if piece in ids:
                raise ValueError(f"piece {piece!r} is defined twice")
            ids[piece] = index
            self._pieces.append(piece)
            self._types.append(kind)
            if kind in _MERGEABLE:
                self._scores[piece] = -score
            if kind == USER_DEFINED:
                user_defined.append(piece)
            elif kind == UNUSED:
                self._unused.add(piece)
            elif kind == UNKNOWN:
                if unk >= 0:
                    raise ValueError("two unknown pieces")
                unk = index
            elif kind == BYTE:
                if not self.byte_fallback:
                    raise ValueError(f"byte piece {piece} without byte_fallback")
                if piece not in _BYTE_PIECES:
                    raise ValueError(f"invalid byte piece {piece!r}")
                bytes_found.add(_BYTE_PIECES[piece])
        if unk < 0:
            raise ValueError("no unknown piece")
        if self.byte_fallback and len(bytes_found) != 256:
            raise ValueError(f"byte_fallback with {len(bytes_found)} byte pieces, not 256")
        self._unk = unk
        self._user_defined = set(user_defined)
        self._longest_user_defined = max(map(len, user_defined), default=0)
        self._ids = {**self._normal_ids, **self._reserved_ids}  # reserved pieces win
        self._byte_ids = [self.piece_to_id(piece) for piece in _BYTE_PIECES]
        # Decoding looks an id's piece up again, as sentencepiece does.
        self._decode_ids = [self.piece_to_id(piece) for piece in self._pieces]

    # Vocabulary.

    @property
    def vocabulary_size(self) -> int:
        return len(self._pieces)

    def fingerprint(self) -> str:
        """sha256 of what decides the ids and the text: the normalizer's switches, then each
        piece, its type and its merge score, in id order (a bundle's model file records it:
        model_metadata.py; docs/bundle-format.md spells it out)."""
        digest = hashlib.sha256()
        switches = (
            self.add_dummy_prefix,
            self.remove_extra_whitespaces,
            self.escape_whitespaces,
            self.byte_fallback,
        )
        digest.update(bytes(switches) + self.unknown_surface.encode("utf-8") + b"\0")
        for index, piece in enumerate(self._pieces):
            kind = self._types[index]
            score = -self._scores[piece] if kind in _MERGEABLE else 0.0
            digest.update(piece.encode("utf-8") + struct.pack("<Bf", kind, score) + b"\0")
        return digest.hexdigest()

    def id_to_piece(self, index: int) -> str:
        return self._pieces[index]

    def piece_to_id(self, piece: str) -> int:
        """The piece's id, or the unknown id."""
        return self._ids.get(piece, self._unk)

    # Encoding.

    def encode_head(self, text: str, count: int) -> list[int]:
        """The first ``count`` ids of ``text`` (all of them if fewer), at the cost of a short
        text however long ``text`` is: only a head of the text ending before a space is
        tokenized, grown until it gives ``count`` ids. No piece spans a space (they start with
        one), so those are exactly the whole text's first ids; in a text with no space in the
        first ``64 * count`` characters (one enormous word) the head is cut inside the word
        and ``count + 32`` ids are asked of it, so the merges near the cut do not reach them.
        """
        window = max(256, 64 * count)
        while len(text) > window:
            cut = text.rfind(" ", 0, window)
            ids = self.encode(text[:cut] if cut > 0 else text[:window])
            if len(ids) >= (count if cut > 0 else count + 32):
                return ids[:count]
            window *= 4
        return self.encode(text)[:count]

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, without start or end ids."""
        ids: list[int] = []
        previous_unknown = False
        for piece in self._text_pieces(self._normalize(text)):
            index = self._ids.get(piece, self._unk)
            unknown = self._types[index] == UNKNOWN
            if unknown and self.byte_fallback:
                ids.extend(self._byte_ids[value] for value in piece.encode("utf-8"))
            elif not (unknown and previous_unknown):  # a run of unknowns is one <unk>
                ids.append(index)
            previous_unknown = unknown
        return ids

    def _units(self, text: str) -> list[str]:
        """Characters, with each user-defined symbol (longest match) as one unit."""
        if not self._user_defined:
            return list(text)
        units, position = [], 0
        while position < len(text):
            size = 1
            for length in range(min(self._longest_user_defined, len(text) - position), 0, -1):
                if text[position : position + length] in self._user_defined:
                    size = length
                    break
            units.append(text[position : position + size])
            position += size
        return units

    def _normalize(self, text: str) -> str:
        """``text`` as the identity normalizer writes it (whitespace handling only)."""
        units = self._units(text)
        start = 0
        if self.remove_extra_whitespaces:
            while start < len(units) and units[start] == " ":
                start += 1
        if start == len(units):
            return ""
        space = SPACE if self.escape_whitespaces else " "
        out = [space] if self.add_dummy_prefix else []
        previous_space = self.remove_extra_whitespaces
        for unit in units[start:]:
            if previous_space:
                unit = unit.lstrip(" ")
            if unit:
                out.append(unit.replace(" ", space))
                previous_space = unit[-1] == " "
            if not self.remove_extra_whitespaces:
                previous_space = False
        normalized = "".join(out)
        return normalized.rstrip(space) if self.remove_extra_whitespaces else normalized

    def _text_pieces(self, normalized: str) -> list[str]:
        """The BPE pieces of a normalized text, word by word where no piece spans a space."""
        if not self._words_apart:
            return self._merge(normalized)
        pieces: list[str] = []
        start = 0
        while start < len(normalized):
            end = normalized.find(self._space, start + 1)
            end = len(normalized) if end < 0 else end
            pieces += self._word_pieces(normalized[start:end])
            start = end
        return pieces

    def _merge(self, normalized: str) -> list[str]:
        """The BPE pieces of a normalized text (bpe_model.cc's merge order)."""
        if not normalized:
            return []
        symbols = self._units(normalized)
        frozen = (
            [symbol in self._user_defined for symbol in symbols] if self._user_defined else None
        )
        count = len(symbols)
        following = list(range(1, count + 1))
        following[-1] = -1
        preceding = list(range(-1, count - 1))
        scores, unused = self._scores, self._unused
        splits: dict[str, tuple[str, str]] = {}  # unused piece -> the pair it was made from
        heap: list[tuple[float, int, int, int]] = []

        def candidate(left: int, right: int) -> tuple[float, int, int, int] | None:
            if frozen is not None and (frozen[left] or frozen[right]):
                return None
            merged = symbols[left] + symbols[right]
            score = scores.get(merged)
            if score is None:
                return None
            if unused and merged in unused:
                splits[merged] = (symbols[left], symbols[right])
            return score, left, right, len(merged)

        for left in range(count - 1):
            pair = candidate(left, left + 1)
            if pair is not None:
                heap.append(pair)
        heapq.heapify(heap)  # (-score, left) orders the live pairs as sentencepiece's queue
        while heap:
            _, left, right, size = heapq.heappop(heap)
            a, b = symbols[left], symbols[right]
            if not a or not b or len(a) + len(b) != size:
                continue  # stale: one side was merged since
            symbols[left], symbols[right] = a + b, ""
            after = following[right]
            following[left] = after
            if after >= 0:
                preceding[after] = left
            for pair in (
                candidate(preceding[left], left) if preceding[left] >= 0 else None,
                candidate(left, after) if after >= 0 else None,
            ):
                if pair is not None:
                    heapq.heappush(heap, pair)
        pieces: list[str] = []
        index = 0
        while index >= 0:
            if splits:
                self._resegment(symbols[index], splits, pieces)
            else:
                pieces.append(symbols[index])
            index = following[index]
        return pieces

    def _resegment(self, piece: str, splits: dict[str, tuple[str, str]], out: list[str]) -> None:
        """An unused piece back into the pieces it was merged from (recursively)."""
        stack = [piece]
        while stack:
            piece = stack.pop()
            unused = self._types[self._ids.get(piece, self._unk)] == UNUSED
            if unused and piece in splits:
                left, right = splits[piece]
                stack += [right, left]
            else:
                out.append(piece)

    # Decoding.

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (any ints, numpy ones included), as sentencepiece decodes it."""
        parts: list[str] = []
        pending = bytearray()  # a run of byte pieces
        first, saw_space = True, False  # may a leading ▁ be dropped; was one dropped
        strip_space = self.add_dummy_prefix or self.remove_extra_whitespaces
        for value in ids:
            index = operator.index(value)
            if not 0 <= index < len(self._pieces):
                raise IndexError(f"id {index} is out of range [0, {len(self._pieces)})")
            index = self._decode_ids[index]
            kind, piece = self._types[index], self._pieces[index]
            if kind == BYTE:
                pending.append(_BYTE_PIECES[piece])
                continue
            if pending:
                parts.append(_decode_utf8(bytes(pending)))
                pending.clear()
            if saw_space or parts:
                first = False
            saw_space = False
            if kind == CONTROL:
                continue
            if kind == UNKNOWN:
                if self.unknown_surface:
                    parts.append(self.unknown_surface)
                continue
            if first and strip_space and piece.startswith(SPACE):
                piece = piece[1:]
                saw_space = not self.remove_extra_whitespaces
            if piece:
                parts.append(piece.replace(SPACE, " "))
        if pending:
            parts.append(_decode_utf8(bytes(pending)))
        return "".join(parts)
