"""The error every layer may raise for a problem the user can fix; the stage contract (:mod:`pipeline.cli`)
prints its message as one line and exits 2."""


class StageError(RuntimeError):
    """A problem with the stage's input that the user can fix; its message is the one line shown."""
