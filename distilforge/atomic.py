"""The one way distilforge writes a file or a folder: into a temp sibling, then a rename.

Why: a run dir is read by the next stage and by a rerun after a crash. A half-written manifest,
dataset or model folder would be read as if it were whole; a rename is atomic on one filesystem,
so a reader sees the old version or the new one, never a torn one. Text written through here is
also scrubbed of live API keys (distilforge/secrets.py): nothing a run writes carries a key.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from distilforge.secrets import redact


def _tmp(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}{os.getpid()}")


@contextmanager
def atomic_path(path: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path`; write there. On success it replaces `path` (a folder is
    swapped: old moved aside, new renamed in, old removed); on an exception it is removed and
    `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path, "tmp")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if is_dir and path.exists():
        old = _tmp(path, "old")
        _remove(old)
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text (keys scrubbed: a key that slipped into a message never reaches the run dir)."""
    with atomic_path(path) as tmp:
        tmp.write_text(redact(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n")


def atomic_copy_dir(src: str | Path, dest: str | Path) -> None:
    with atomic_path(dest, is_dir=True) as tmp:
        shutil.copytree(src, tmp)
