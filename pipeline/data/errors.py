"""The one error type of the data sources."""

from __future__ import annotations

from pipeline.errors import UserError


class DataError(UserError):
    """A data source that cannot be read; the message names the file and the problem in one line.

    A :class:`~pipeline.errors.UserError`, so stage entry points (``pipeline.cli``) show it as one line.
    """


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (tarfile and PIL sometimes spread theirs over several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
