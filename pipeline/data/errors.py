"""The one error type of the data sources and the prepared data, and the way out of a bad prepared file.

Damaged files raise anything. Reading a truncated or byte-flipped file reaches corners of its parser that
no list of exceptions foresees, so the readers here (``np.load`` of prepared splits and shards, the CIFAR
unpickler; :mod:`pipeline.torch_files` for torch files) take every ``Exception`` of the read itself as
"this file cannot be read" and name its type in the one line. Found by fuzzing, each once a traceback:
``np.load(allow_pickle=False)`` on 6,000 damaged ``.npy``/``.npz`` files raised ``tokenize.TokenError`` (a
broken header), NotImplementedError (a flipped compression method) and RuntimeError (a flipped encryption
flag); 1,500 CIFAR archives with one member damaged raised OverflowError, MemoryError and LookupError.
"""

from __future__ import annotations

from pipeline.errors import UserError, described, one_line

__all__ = ["REPREPARE", "DataError", "described", "one_line"]

# The way out of every bad prepared file: prepare rewrites the whole folder.
REPREPARE = "rerun the prepare stage (dvc repro -f prepare)"


class DataError(UserError):
    """A data source or prepared file that cannot be read; the message names the file and the problem in
    one line.

    A :class:`~pipeline.errors.UserError`, so stage entry points (``pipeline.cli``) show it as one line.
    """
