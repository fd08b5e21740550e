"""The one error type of the data sources and the prepared data, and the way out of a bad prepared file."""

from __future__ import annotations

from pipeline.errors import UserError

# The way out of every bad prepared file: prepare rewrites the whole folder.
REPREPARE = "rerun the prepare stage (dvc repro -f prepare)"


class DataError(UserError):
    """A data source or prepared file that cannot be read; the message names the file and the problem in
    one line.

    A :class:`~pipeline.errors.UserError`, so stage entry points (``pipeline.cli``) show it as one line.
    """


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (tarfile and PIL sometimes spread theirs over several).

    Args:
        exc: Any exception.

    Returns:
        Its message with every run of whitespace as one space, or its type's name when it has none.
    """
    return " ".join(str(exc).split()) or type(exc).__name__
