"""Files that survive a kill at any instant: whole or absent, never half-written.

Each file is written under a temporary name in its own folder, flushed and fsynced, then renamed
over its final name (``os.replace`` is atomic on POSIX and Windows), and the folder is fsynced
so the rename is on disk too. A reader finds the old file or the new one. A folder of files is
built the same way: in a temporary folder beside it, renamed into place when complete.

Temporary names start with a dot and contain ``.partial-``, so a run can tell (and remove)
what a kill left behind. They keep the final name's suffixes (``.keras``, ``.weights.h5``,
``.png``): libraries that write by path decide the format from them.

The standard library only: importing it costs nothing (edge's bundle writer uses it too).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARTIAL = ".partial-"


def temporary_name(path: Path) -> Path:
    """A unique hidden name beside ``path`` with the same suffixes."""
    stem, dot, suffixes = path.name.partition(".")
    return path.with_name(f".{stem}{PARTIAL}{uuid.uuid4().hex[:12]}{dot}{suffixes}")


def is_partial(path: Path) -> bool:
    """Whether ``path`` is a temporary file or folder of this module (a kill's leftover)."""
    return path.name.startswith(".") and PARTIAL in path.name


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
    fsync_path(path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path for a writer that takes a file name (``model.save``, ``savefig``).

    Whatever the block writes there is fsynced and renamed over ``path`` when the block ends
    without an error; on an error it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        yield temporary
        if not temporary.exists():
            raise FileNotFoundError(f"{temporary}: nothing was written for {path.name}")
        _fsync_tree(temporary)
        if temporary.is_dir() and path.is_dir():
            _replace_directory(temporary, path)
        else:
            os.replace(temporary, path)
        fsync_path(path.parent)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    """``value`` as UTF-8 JSON (non-ASCII kept), a newline at the end, atomically."""
    return write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A temporary folder that replaces ``path`` (a folder) as a whole when the block ends.

    An existing folder at ``path`` is moved aside first and removed after the rename, so at
    every instant ``path`` is the old folder, absent for the moment between two renames, or
    the new one; never a mix.
    """
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.mkdir()
        yield temporary


def _replace_directory(new: Path, path: Path) -> None:
    old = temporary_name(path)
    os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def remove_partials(folder: str | Path) -> list[Path]:
    """Remove what killed writes left in ``folder``; returns the removed paths."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for child in folder.iterdir():
        if is_partial(child):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed
