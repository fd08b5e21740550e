"""What every stage entry point shares: argument parsing, params loading, and the error contract.

A stage that fails on bad input prints one readable line naming the problem and exits non-zero;
a traceback is for bugs, not for a missing archive.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Params, load_params
from pipeline.errors import StageError, UserError

__all__ = ["StageError", "run", "stage_main"]

# The project's own user errors (ConfigError and DataError among them): their message already names the
# file and the problem, shown as one line, exit code 2. Any other exception (a ValueError from a bug
# included) keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)
# A file or folder the stage cannot read or write (an output under a read-only or misnamed folder, a full
# disk): the OS names the path; nothing is lost, as outputs are written to a temporary file and renamed.
_FS_HINTS = {
    PermissionError: "check the folder's owner and mode, or point the params key at a writable place",
    NotADirectoryError: "a part of the path is a file, not a folder; fix the path in params.yaml or move the file",
    IsADirectoryError: "a folder stands where a file is expected; fix the path or remove the folder",
    FileExistsError: "a file stands where a folder is expected; fix the path in params.yaml or move the file",
}


def _fs_error(exc: OSError) -> str:
    """``<path>: <the OS's reason>; <what to do>`` for an OSError that names its path."""
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
    hint = next((h for t, h in _FS_HINTS.items() if isinstance(exc, t)), "check the path and the disk")
    return f"{where}: {exc.strerror or type(exc).__name__}; {hint}"


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def _raised_in(exc: BaseException, package: str) -> bool:
    """Whether any exception of ``exc``'s chain passed through ``package``'s code."""
    for e in _chain(exc):
        tb = e.__traceback__
        while tb is not None:
            if f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
    return False


def _store_error(exc: BaseException, params: Params | None) -> str | None:
    """One line for a store that cannot be used (a garbage ``mlflow.db`` or ``optuna.db``, a tracking
    server that does not answer), or None when ``exc`` is something else: a bug keeps its traceback.

    Only looks at modules already imported: the stage contract must not import MLflow for a stage that
    never used it.
    """
    sa, mlflow_exc = sys.modules.get("sqlalchemy.exc"), sys.modules.get("mlflow.exceptions")
    chain = _chain(exc)
    db = next((e for e in chain if sa is not None and isinstance(e, sa.SQLAlchemyError)), None)
    # MLflow's REST client wraps a server it cannot reach as "API request to <url> failed ...".
    down = next((e for e in chain if mlflow_exc is not None and isinstance(e, mlflow_exc.MlflowException)
                 and "API request to" in str(e)), None)
    cause = db or down
    if cause is None:
        return None
    if db is not None and _raised_in(exc, "optuna"):
        what, env = "Optuna storage", "OPTUNA_STORAGE"
        uri = os.environ.get(env) or (params.tune.storage if params else "?")
    else:
        what, env = "MLflow tracking store", "MLFLOW_TRACKING_URI"
        uri = os.environ.get(env) or (params.tracking.tracking_uri if params else "?")
    uri = re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", uri)  # never print a password
    reason = " ".join(str(getattr(cause, "orig", None) or cause).split("\n")[0].split())[:200]
    if db is not None and uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        way_out = f"move it aside (mv {path} {path}.bad) to start a new one, or set {env} to a working one"
    else:
        way_out = f"check that it is reachable and healthy, or set {env} to a working one"
    return f"{what} {uri}: cannot be used ({type(cause).__name__}: {reason}); {way_out}"


def stage_main(name: str, body: Callable[[Params, argparse.Namespace], None],
               add_args: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: list[str] | None = None) -> int:
    """Run a stage's body with the stage contract: one line and exit code 2 for bad input, 130 on Ctrl-C.

    Args:
        name: The stage's name (the prefix of every line it prints).
        body: The stage's body, called with the params and the parsed arguments.
        add_args: Adds the stage's own arguments to the parser.
        argv: The arguments (default: the process's).

    Returns:
        The exit code: 0, 2 (bad input, an unusable store, a file that cannot be read or written) or 130.
    """
    parser = argparse.ArgumentParser(prog=f"stages/{name}.py", description=f"The {name} stage.")
    parser.add_argument("--params", default="params.yaml", type=Path, help="params file (default: params.yaml)")
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{name}: %(levelname)s: %(message)s")
    params: Params | None = None
    try:
        params = load_params(args.params, must_exist=True)
        body(params, args)
    except OSError as exc:
        # Our own FileNotFoundErrors carry a whole sentence; the OS's name a path and a reason.
        print(f"{name}: error: {_fs_error(exc) if exc.filename else ' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        line = _store_error(exc, params)
        if line is None:
            raise  # a bug: the traceback is wanted
        print(f"{name}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return 0


def run(name: str, body: Callable[[Params, argparse.Namespace], None],
        add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """A DVC stage's entry point: :func:`stage_main`, then exit with its code."""
    sys.exit(stage_main(name, body, add_args))
