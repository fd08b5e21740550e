"""Atomic file writes: an output is either the old file or the complete new one, never half of it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it over ``dest`` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(dest: str | Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(dest) as tmp:
        writer(tmp)
    return Path(dest)


def write_json(dest: str | Path, obj: Any) -> Path:
    return atomic_write(dest, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def write_text(dest: str | Path, text: str) -> Path:
    return atomic_write(dest, lambda p: p.write_text(text))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
