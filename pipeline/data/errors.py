"""The one error type of the data sources and the prepared data, and the way out of a bad prepared file."""

from __future__ import annotations

# The way out of every bad prepared file: prepare rewrites the whole folder.
REPREPARE = "rerun the prepare stage (dvc repro -f prepare)"


class DataError(ValueError):
    """A data source or prepared file that cannot be read; the message names the file and the problem in
    one line.

    A ValueError so that stage entry points (``pipeline.cli``) show it as one line and exit 2.
    """


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (tarfile and PIL sometimes spread theirs over several).

    Args:
        exc: Any exception.

    Returns:
        Its message with every run of whitespace as one space, or its type's name when it has none.
    """
    return " ".join(str(exc).split()) or type(exc).__name__
