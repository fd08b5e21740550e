"""The project's user-error type: a problem with a stage's input that the user can fix.

A stage entry point (:mod:`pipeline.cli`) shows a :class:`UserError` as its one line and exits 2; any other
exception is a bug and keeps its traceback. A ValueError, so callers that validate with ``except ValueError``
keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input (a file, a param, the data); the message names it, the problem, and the way out."""


class StageError(UserError):
    """A stage's own check of its input failed (raised by stage bodies and the tuning worker)."""


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (tarfile, PIL and torch's unpickler spread some over several).

    Args:
        exc: Any exception.

    Returns:
        Its message with every run of whitespace as one space, or its type's name when it has none.
    """
    return " ".join(str(exc).split()) or type(exc).__name__


def described(exc: BaseException, limit: int = 160) -> str:
    """``<ExceptionType>: <its one-line message, at most limit characters>``, for the parenthesis of a
    one-line error: the type tells a damaged file (OverflowError, TokenError) from a missing one (OSError).

    Args:
        exc: Any exception.
        limit: The most characters of its message kept.

    Returns:
        The exception's type name, a colon and :func:`one_line` of it, cut to ``limit``.
    """
    return f"{type(exc).__name__}: {one_line(exc)[:limit]}"
