"""A bundle on disk: the model, the tokenizer and a manifest, checked before anything runs.

A bundle is a folder::

    model.tflite          the converted model, one signature per step (see edge/convert.py)
    sentencepiece.model   the tokenizer (SentencePiece BPE, read by sentencepiece_bpe.py)
    manifest.json         what the two are and how to drive them (schema below)

``manifest.json`` (``format_version`` 6; docs/bundle-format.md is the full specification)::

    format            "keras-transformer-edge-bundle"
    format_version    6 (this runtime also reads 5, whose decode_batch has one position for
                      every row; 4, without the decode length buckets; 3,
                      whose seq2seq decode carries one packed cache; 2, without the optional
                      decode_batch, encode_N and prefill_N signatures; and 1: ``index`` of
                      shape [] too)
    kind              "seq2seq" | "language_model" | "classifier" | "tagger"
    signatures        {name: {"inputs": {name: {"shape": [..], "dtype": "int32"}},
                              "outputs": {...}}}, as signatures.py fixes them per kind
    special_tokens    {"pad": 0, "start": 1, "end": 2, "unk": 3}: distinct ids of the vocabulary
    max_lengths       seq2seq {"source", "target"}; language_model {"context", "prefill"};
                      classifier and tagger {"tokens"}
    vocabulary_size   the model's token vocabulary (the tokenizer's size, checked)
    labels            class names (classifier) or tags (tagger), else null
    decoding          defaults for generation (DECODING below), e.g. {"beam_size": 4,
                      "length_penalty": 0.6, "max_length": null}
    quantization      "fp32", "float16", "dynamic_int8", ...
    versions          {"keras_transformer", "tensorflow", "keras", "ai_edge_litert", ...}
    extra             free-form (e.g. a parity report)
    files             {file name: {"sha256": hex, "bytes": size}} for every other file
    checksum          sha256 of this manifest without "checksum" (canonical JSON, see below)

:func:`load_bundle` reads the manifest, checks its schema and checksum, its values against
each other and the signatures against :mod:`~keras_transformer_edge.runtime.signatures`
(:mod:`~keras_transformer_edge.runtime.signature_checks`), then
the size and sha256 of every file, then the tokenizer against the manifest; only then may an
interpreter be made (the task then checks the interpreter's signatures against the
manifest's). Each failure is a one-line :class:`BundleError`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keras_transformer_edge.runtime.errors import BundleError
from keras_transformer_edge.runtime.model_metadata import NAME as METADATA_NAME
from keras_transformer_edge.runtime.model_metadata import bundle_facts
from keras_transformer_edge.runtime.sentencepiece_bpe import SentencePieceBPE
from keras_transformer_edge.runtime.signature_checks import SignatureMismatch, check_signatures

FORMAT_NAME, FORMAT_VERSION = "keras-transformer-edge-bundle", 6
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE = "manifest.json", "model.tflite", "sentencepiece.model"
SPECIAL_TOKENS = ("pad", "start", "end", "unk")
# The signatures each kind must have, and the max_lengths keys it must give.
KINDS = {
    "seq2seq": (("encode", "decode"), ("source", "target")),
    "language_model": (("prefill", "decode"), ("context", "prefill")),
    "classifier": (("classify",), ("tokens",)),
    "tagger": (("tag",), ("tokens",)),
}
# Key -> type; a missing key or a value of another type is an error naming the key.
SCHEMA: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "kind": str,
    "signatures": dict,
    "special_tokens": dict,
    "max_lengths": dict,
    "vocabulary_size": int,
    "labels": (list, type(None)),
    "decoding": dict,
    "quantization": str,
    "versions": dict,
    "extra": dict,
    "files": dict,
    "checksum": str,
}
# Decoding defaults a manifest may give, per kind: key -> (type, lowest, highest, may be null).
DECODING = {
    "seq2seq": {
        "beam_size": (int, 1, 64, False),
        "length_penalty": (float, 0.0, 10.0, False),
        "max_length": (int, 1, None, True),  # at most max_lengths.target
    },
    "language_model": {
        "sampler": (str, None, None, False),
        "top_k": (int, 1, None, True),
    },
    "classifier": {},
    "tagger": {},
}
SAMPLERS = ("greedy", "top_k")
# Manifest keys the model file records too (model_metadata.py); they must agree.
RECORDED_IN_MODEL = (
    "kind",
    "vocabulary_size",
    "special_tokens",
    "max_lengths",
    "labels",
    "decoding",
    "quantization",
)
_CHUNK = 1 << 20


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file, read in chunks (a model can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its ``checksum``, as sorted, compact, ASCII JSON.

    Catches a manifest edited by hand or damaged on the way; it is not a signature.
    """
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder, its manifest and its tokenizer.

    Args:
        path: the bundle's folder.
        manifest: the parsed ``manifest.json``.
        tokenizer: the bundle's SentencePiece BPE tokenizer.

    Example:
    >>> bundle = load_bundle("bundles/en-fr")  # doctest: +SKIP
    >>> bundle.kind, bundle.manifest["quantization"]  # doctest: +SKIP
    ('seq2seq', 'dynamic_int8')
    """

    path: Path
    manifest: dict[str, Any]
    tokenizer: SentencePieceBPE

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def special_tokens(self) -> dict[str, int]:
        return self.manifest["special_tokens"]

    @property
    def max_lengths(self) -> dict[str, int]:
        return self.manifest["max_lengths"]

    @property
    def labels(self) -> list[str] | None:
        return self.manifest["labels"]

    def signature(self, name: str) -> dict[str, Any]:
        return self.manifest["signatures"][name]


def load_bundle(path: str | Path, expected_kind: str | None = None) -> Bundle:
    """Read and verify the bundle in ``path``; raises :class:`BundleError` (one line)."""
    path = Path(path)
    try:
        return _load_bundle(path, expected_kind)
    except OSError as error:  # unreadable, a name too long, a folder where a file should be
        where = error.filename or path
        raise BundleError(f"{where}: cannot read it ({error.strerror or error})") from None


def _load_bundle(path: Path, expected_kind: str | None) -> Bundle:
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder")
    manifest = read_manifest(path)
    if expected_kind is not None and manifest["kind"] != expected_kind:
        raise BundleError(
            f"{path}: a {manifest['kind']} bundle, not {expected_kind} (manifest 'kind')"
        )
    verify_files(path, manifest)
    tokenizer = _tokenizer(path, manifest)
    _check_model_facts(path, manifest, tokenizer)
    return Bundle(path, manifest, tokenizer)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the bundle in ``path``, its schema and checksum checked."""
    where = path / MANIFEST_FILE
    if not where.is_file():
        raise BundleError(f"{where}: missing (not a bundle, or an incomplete copy)")
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: not a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{where}: format is {manifest.get('format')!r}, not {FORMAT_NAME!r}")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(
            f"{where}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this runtime reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    for key, kinds in SCHEMA.items():
        if key not in manifest:
            raise BundleError(f"{where}: key {key!r} is missing")
        if not isinstance(manifest[key], kinds) or isinstance(manifest[key], bool):
            raise BundleError(f"{where}: key {key!r} has the wrong type")
    if manifest_checksum(manifest) != manifest["checksum"]:
        raise BundleError(f"{where}: checksum mismatch (the manifest was altered)")
    _check_contents(where, manifest)
    return manifest


def _check_contents(where: Path, manifest: dict[str, Any]) -> None:
    kind = manifest["kind"]
    if kind not in KINDS:
        raise BundleError(f"{where}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    signatures, lengths = KINDS[kind]
    for name in signatures:
        if name not in manifest["signatures"]:
            raise BundleError(f"{where}: a {kind} bundle needs a {name!r} signature")
    for name in lengths:
        if not isinstance(manifest["max_lengths"].get(name), int):
            raise BundleError(f"{where}: max_lengths.{name} is missing")
    for name in (MODEL_FILE, TOKENIZER_FILE):
        if name not in manifest["files"]:
            raise BundleError(f"{where}: files has no entry for {name}")
    vocabulary = manifest["vocabulary_size"]
    if vocabulary < 1:
        raise BundleError(f"{where}: vocabulary_size {vocabulary} is not positive")
    for name in lengths:
        if not _is_int(manifest["max_lengths"][name]) or manifest["max_lengths"][name] < 1:
            raise BundleError(f"{where}: max_lengths.{name} must be a positive integer")
    _check_special_tokens(where, manifest["special_tokens"], vocabulary)
    labels = manifest["labels"]
    if labels is not None and (
        not labels or not all(isinstance(label, str) and label for label in labels)
    ):
        raise BundleError(f"{where}: labels must be a non-empty list of non-empty strings")
    if labels is not None and len(set(labels)) != len(labels):
        raise BundleError(f"{where}: labels are not distinct")
    if kind in ("seq2seq", "language_model") and labels is not None:
        raise BundleError(f"{where}: a {kind} bundle has no labels")
    sizes = dict(manifest["max_lengths"])
    if kind in ("seq2seq", "language_model"):
        sizes["vocabulary"] = vocabulary
    elif labels is not None:
        sizes["classes"] = len(labels)
    try:
        check_signatures(kind, manifest["signatures"], sizes, manifest["format_version"])
    except SignatureMismatch as error:
        raise BundleError(f"{where}: {error}") from None
    _check_decoding(where, kind, manifest["decoding"], manifest["max_lengths"])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_special_tokens(where: Path, special: dict[str, Any], vocabulary: int) -> None:
    for name in SPECIAL_TOKENS:
        value = special.get(name)
        if not _is_int(value):
            raise BundleError(f"{where}: special_tokens.{name} is missing or not an integer")
        if not 0 <= value < vocabulary:
            raise BundleError(
                f"{where}: special_tokens.{name} is {value}, outside the vocabulary [0, "
                f"{vocabulary})"
            )
    ids = [special[name] for name in SPECIAL_TOKENS]
    if len(set(ids)) != len(ids):
        raise BundleError(f"{where}: special_tokens are not distinct: {special}")


def _check_decoding(where: Path, kind: str, decoding: dict[str, Any], lengths: dict) -> None:
    """Each decoding default known, of its type, finite and in range."""
    rules = DECODING[kind]
    for key, value in decoding.items():
        if key not in rules:
            raise BundleError(f"{where}: decoding.{key} is not a {kind} decoding option")
        kind_of, low, high, nullable = rules[key]
        if value is None and nullable:
            continue
        number = kind_of is float and _is_int(value)  # 1 reads as 1.0
        if not (isinstance(value, kind_of) and not isinstance(value, bool)) and not number:
            raise BundleError(f"{where}: decoding.{key} is {value!r}, not a {kind_of.__name__}")
        if kind_of is float and not math.isfinite(value):
            raise BundleError(f"{where}: decoding.{key} is {value!r}, not a finite number")
        if key == "max_length":
            high = lengths["target"]
        if (low is not None and value < low) or (high is not None and value > high):
            raise BundleError(
                f"{where}: decoding.{key} is {value!r}, outside [{low}, {high or 'inf'}]"
            )
    if kind == "language_model" and decoding.get("sampler", "greedy") not in SAMPLERS:
        raise BundleError(f"{where}: decoding.sampler must be one of {', '.join(SAMPLERS)}")


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """Every listed file exists with its size and sha256 (the size first: it is free)."""
    for name, entry in sorted(manifest["files"].items()):
        if Path(name).name != name or name == MANIFEST_FILE:
            raise BundleError(f"{path / MANIFEST_FILE}: bad file name {name!r} in files")
        file = path / name
        if not file.is_file():
            raise BundleError(f"{file}: missing (listed in the manifest)")
        if not isinstance(entry, dict) or not {"sha256", "bytes"} <= set(entry):
            raise BundleError(f"{path / MANIFEST_FILE}: files.{name} needs sha256 and bytes")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(
                f"{file}: {size} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
            )
        if sha256_of(file) != entry["sha256"]:
            raise BundleError(f"{file}: sha256 mismatch (the file is corrupted or was replaced)")


def _check_model_facts(path: Path, manifest: dict[str, Any], tokenizer: SentencePieceBPE) -> None:
    """What the model file itself records (format 2) agrees with the manifest and tokenizer."""
    model = path / MODEL_FILE
    try:
        facts = bundle_facts(model)
    except ValueError as error:
        raise BundleError(str(error)) from None
    if facts is None:
        if manifest["format_version"] >= 2:
            raise BundleError(f"{model}: no {METADATA_NAME!r} metadata (not made as a bundle)")
        return
    for key in RECORDED_IN_MODEL:
        if facts.get(key) != manifest[key]:
            raise BundleError(
                f"{model}: made with {key} {_short(facts.get(key))}, the manifest says "
                f"{_short(manifest[key])}"
            )
    if facts.get("tokenizer_sha256") != tokenizer.fingerprint():
        raise BundleError(
            f"{path / TOKENIZER_FILE}: not the tokenizer this model was made with (its "
            "fingerprint differs from the one recorded in model.tflite)"
        )


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"


def _tokenizer(path: Path, manifest: dict[str, Any]) -> SentencePieceBPE:
    file = path / TOKENIZER_FILE
    try:
        tokenizer = SentencePieceBPE.load(file)
    except (OSError, ValueError) as error:
        raise BundleError(str(error)) from None
    size = tokenizer.vocabulary_size
    if size != manifest["vocabulary_size"]:
        raise BundleError(
            f"{file}: {size} pieces, the model's vocabulary has {manifest['vocabulary_size']}"
        )
    found = {
        "pad": tokenizer.pad_id,
        "start": tokenizer.start_id,
        "end": tokenizer.end_id,
        "unk": tokenizer.unk_id,
    }
    for name in SPECIAL_TOKENS:
        if found[name] != manifest["special_tokens"][name]:
            raise BundleError(
                f"{file}: the {name} token is id {found[name]}, the manifest says "
                f"{manifest['special_tokens'][name]}"
            )
    return tokenizer
