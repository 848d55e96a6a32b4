"""An English -> X parallel corpus built offline from the machine's gettext catalogs.

Debian packages install message catalogs (``LC_MESSAGES/*.mo``) whose entries are real
English user-interface messages and their human translations. This module reads them with
Python's ``gettext``, keeps the entries that read as plain text (no format placeholders,
markup, keyboard accelerators or plural forms), removes duplicates, and splits the pairs into
train / valid / test by a hash of the English side, so a message never crosses splits and the
split does not depend on which catalogs a machine has.

    python -m keras_transformer_pipelines.gettext_corpus --language fr --output data/en-fr

The catalogs keep their packages' licences (mostly GPL/LGPL); nothing is shipped with this
project, the corpus is rebuilt from the machine it runs on.
"""

from __future__ import annotations

import argparse
import gettext
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from keras_transformer_pipelines import files, private_api

DEFAULT_LOCALE_DIRS = ("/usr/share/locale", "/usr/share/locale-langpack")
SPLITS = {"train": 0.9, "valid": 0.05, "test": 0.05}
PREFIX = "gettext:"  # a recipe's data.corpus: "gettext:<language code>"
# Debian's iso-codes package: ISO 639 language names, read when the machine has it.
ISO_639_FILES = (
    "/usr/share/iso-codes/json/iso_639-2.json",
    "/usr/share/iso-codes/json/iso_639-3.json",
)


def language_name(code: str) -> str:
    """``"fr"`` -> ``"French"`` from the machine's ISO 639 tables, else the code itself."""
    base = code.split("_")[0].split("@")[0].lower()
    for table in ISO_639_FILES:
        try:
            entries = next(iter(json.loads(Path(table).read_text(encoding="utf-8")).values()))
        except (OSError, ValueError, StopIteration):
            continue
        for entry in entries:
            if base in (entry.get("alpha_2"), entry.get("alpha_3")):
                return entry.get("common_name") or entry["name"].split(";")[0]
    return code


def language_pair(corpus: str | None) -> tuple[str, str] | None:
    """``("English", "French")`` for ``corpus="gettext:fr"``; None for other data."""
    if not corpus or not corpus.startswith(PREFIX):
        return None
    return "English", language_name(corpus[len(PREFIX) :])


# printf / Python / shell / brace placeholders, markup and entities, accelerators, escapes.
_PLACEHOLDER = re.compile(
    r"%(\(\w+\))?[-+ #0]*\d*(\.\d+)?[hlLqjzt]*[diouxXeEfgGcrsaAp%]"
    r"|\{[\w.:!]*\}|\$\{?\w+\}?|<[^>]+>|&\w+;|\\[nt]|[_&~][A-Za-z]|[\x00-\x1f]"
)
_WORDS = re.compile(r"[^\W\d_]+", re.UNICODE)


def is_clean_text(message: str, min_words: int = 2, max_chars: int = 200) -> bool:
    """Plain prose: a few words, no placeholders, markup, accelerators or line breaks."""
    if not message or len(message) > max_chars or message != message.strip():
        return False
    if _PLACEHOLDER.search(message) or "\n" in message or "\t" in message:
        return False
    if message.startswith(("-", "--", "/")) or "  " in message:
        return False  # command-line option help and column-aligned text
    return len(_WORDS.findall(message)) >= min_words


def catalog_pairs(path: str | Path) -> Iterator[tuple[str, str]]:
    """Singular, context-free, translated entries of one ``.mo`` file."""
    with open(path, "rb") as handle:
        catalog = gettext.GNUTranslations(handle)
    for source, target in private_api.gettext_entries(catalog).items():
        if not isinstance(source, str) or not source or "\x04" in source:
            continue  # the header, plural forms (tuple keys) and msgctxt entries
        if isinstance(target, str) and target and target != source:
            yield source, target


def find_catalogs(language: str, locale_dirs: Iterable[str] = DEFAULT_LOCALE_DIRS) -> list[Path]:
    """Every ``<dir>/<language>/LC_MESSAGES/*.mo`` on this machine, sorted."""
    found = []
    for directory in locale_dirs:
        found += Path(directory, language, "LC_MESSAGES").glob("*.mo")
    return sorted(found)


def split_of(source: str) -> str:
    """``train``, ``valid`` or ``test``, from a stable hash of the English text."""
    bucket = int.from_bytes(hashlib.sha256(source.encode("utf-8")).digest()[:8], "big") / 2**64
    cumulative = 0.0
    for name, share in SPLITS.items():
        cumulative += share
        if bucket < cumulative:
            return name
    return "test"


def build_corpus(catalogs: Iterable[str | Path]) -> dict[str, list[tuple[str, str]]]:
    """Clean, de-duplicated pairs per split; for a repeated English message the first
    catalog's translation (in sorted path order) is kept."""
    chosen: dict[str, str] = {}
    for path in catalogs:
        for source, target in catalog_pairs(path):
            if source not in chosen and is_clean_text(source) and is_clean_text(target):
                chosen[source] = target
    splits: dict[str, list[tuple[str, str]]] = {name: [] for name in SPLITS}
    for source in sorted(chosen):
        splits[split_of(source)].append((source, chosen[source]))
    return splits


def write_corpus(
    splits: dict[str, list[tuple[str, str]]],
    output: str | Path,
    catalogs: list[Path],
    language: str,
) -> dict:
    """Write ``<split>.tsv`` files and a ``manifest.json``; returns the manifest."""
    output = Path(output)
    for name, pairs in splits.items():
        files.write_text(output / f"{name}.tsv", "".join(f"{s}\t{t}\n" for s, t in pairs))
    manifest = {
        "source_language": "en",
        "target_language": language,
        "pairs": {name: len(pairs) for name, pairs in splits.items()},
        "catalogs": [str(path) for path in catalogs],
        "licence": "each pair keeps the licence of the package whose catalog it came from",
    }
    files.write_json(output / "manifest.json", manifest)  # last: the corpus is complete
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--language", default="fr")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    catalogs = find_catalogs(args.language)
    if not catalogs:
        raise SystemExit(f"error: no gettext catalogs for '{args.language}' on this machine")
    manifest = write_corpus(build_corpus(catalogs), args.output, catalogs, args.language)
    print(json.dumps(manifest["pairs"]))


if __name__ == "__main__":
    main()
