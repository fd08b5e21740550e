"""The one error type of the data sources and the prepared data, and the way out of a bad prepared file."""

from __future__ import annotations

from pipeline.errors import UserError, one_line

__all__ = ["REPREPARE", "DataError", "one_line"]

# The way out of every bad prepared file: prepare rewrites the whole folder.
REPREPARE = "rerun the prepare stage (dvc repro -f prepare)"


class DataError(UserError):
    """A data source or prepared file that cannot be read; the message names the file and the problem in
    one line.

    A :class:`~pipeline.errors.UserError`, so stage entry points (``pipeline.cli``) show it as one line.
    """
