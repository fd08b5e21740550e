"""What every stage entry point shares: argument parsing, params loading, and the error contract.

A stage that fails on bad input prints one readable line naming the problem and exits non-zero;
a traceback is for bugs, not for a missing archive.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.config import ConfigError, Params, load_params


class StageError(RuntimeError):
    """A problem with the stage's input that the user can fix; its message is the one line shown."""


# Errors whose message already names the file and the problem: shown as one line, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (StageError, ConfigError, FileNotFoundError, ValueError)


def stage_main(name: str, body: Callable[[Params, argparse.Namespace], None],
               add_args: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"stages/{name}.py", description=f"The {name} stage.")
    parser.add_argument("--params", default="params.yaml", type=Path, help="params file (default: params.yaml)")
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{name}: %(levelname)s: %(message)s")
    try:
        params = load_params(args.params)
        body(params, args)
    except USER_ERRORS as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return 0


def run(name: str, body: Callable[[Params, argparse.Namespace], None],
        add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    sys.exit(stage_main(name, body, add_args))
