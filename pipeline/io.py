"""Atomic file writes: an output is either the old file or the complete new one, never half of it.

Outputs get the ordinary mode (0666 & ~umask, 0777 & ~umask for folders), as ``open`` would give them:
``mkstemp``/``mkdtemp`` make them 0600/0700, which a container's other user or a shared machine's team
could not read.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only swap it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # brief; a file another thread creates meanwhile gets 022
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def ordinary_mode(path: str | Path) -> None:
    """Give a file made by mkstemp (0600), or a folder made by mkdtemp (0700), the mode open/mkdir give."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it over ``dest`` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        ordinary_mode(tmp_path)  # before the writer: a writer that replaces the file keeps its own mode
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(dest: str | Path, writer: Callable[[Path], object]) -> Path:
    with atomic_path(dest) as tmp:
        writer(tmp)
    return Path(dest)


def write_json(dest: str | Path, obj: Any) -> Path:
    return atomic_write(dest, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def write_text(dest: str | Path, text: str) -> Path:
    return atomic_write(dest, lambda p: p.write_text(text))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


# Figures that change with every run and machine: they go to MLflow, never into the metrics files that
# `dvc metrics diff` compares between experiments.
VOLATILE_SUFFIXES = ("_seconds", "img_per_s")


def write_metrics(dest: str | Path, metrics: Mapping[str, float | str | None]) -> Path:
    """A DVC metrics file: the results in ``metrics``, without timings and throughputs."""
    return write_json(dest, {k: v for k, v in metrics.items() if not k.endswith(VOLATILE_SUFFIXES)})
