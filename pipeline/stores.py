"""The project's stores are the project's wherever DVC runs a stage.

DVC runs ``dvc repro`` and ``dvc exp run`` in the workspace, but a queued experiment in
``<root>/.dvc/tmp/exps/tmpXXXX/`` and a ``--temp`` one in ``<root>/.dvc/tmp/exps/standalone/tmpXXXX/``,
copies it deletes afterwards; it tells every stage the project's root in ``DVC_ROOT``. A relative store
location (``sqlite:///mlflow.db``, ``mlartifacts``, ``sqlite:///optuna.db``, ``journal:optuna.journal``)
means "in the project": :func:`project_location` maps it there, so runs, studies and registered versions
outlive the copy. Servers (``http://``, ``postgresql://``, ``s3://``) and absolute paths are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePath

DVC_ROOT = "DVC_ROOT"  # set by DVC for every stage it runs: the workspace's root, also for temp copies
EXPS_TMP = (".dvc", "tmp", "exps")  # where DVC puts its temporary copies, under the project's root


def project_root(env: Mapping[str, str] | None = None, cwd: str | Path | None = None) -> Path:
    """The folder of the project the running stage belongs to (absolute).

    ``DVC_ROOT`` when DVC ran the stage; otherwise the root above a DVC temporary copy when the working
    folder is one (a stage started by hand inside it); otherwise the working folder.

    Args:
        env: The environment to read (default: ``os.environ``).
        cwd: The working folder (default: the process's).

    Returns:
        The project's root folder.
    """
    env = os.environ if env is None else env
    root = env.get(DVC_ROOT)
    if root and Path(root).is_dir():
        return Path(root).resolve()
    here = Path(cwd if cwd is not None else os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - len(EXPS_TMP), 0, -1):
        if parts[i:i + len(EXPS_TMP)] == EXPS_TMP:
            return Path(*parts[:i])
    return here


def _absolute(path: str, root: Path) -> str:
    p = PurePath(path)
    return path if p.is_absolute() else (root / p).as_posix()


def project_location(location: str, root: str | Path | None = None) -> str:
    """``location`` with a relative path in it made absolute under the project's root.

    Handles a bare path (``mlartifacts``), ``file:<path>``, ``sqlite:///<path>`` (three slashes: relative;
    four: absolute) and Optuna's ``journal:<path>``. Everything else (a server URL, an in-memory database,
    an absolute path) comes back unchanged.

    Args:
        location: A store location as params.yaml or an environment variable gives it.
        root: The project's root (default: :func:`project_root`).

    Returns:
        The location, anchored at the project's root.

    Example:
        ``project_location("sqlite:///mlflow.db", "/p")`` is ``"sqlite:////p/mlflow.db"``.
    """
    base = Path(root) if root is not None else project_root()
    if location.startswith("sqlite:///"):
        path = location[len("sqlite:///"):]
        if path in ("", ":memory:") or path.startswith("/"):
            return location
        return "sqlite:///" + _absolute(path, base)
    if location.startswith("journal:"):
        path = location[len("journal:"):]
        return "journal:" + _absolute(path, base) if path else location
    if location.startswith("file:") and not location.startswith("file://"):
        return "file:" + _absolute(location[len("file:"):], base)
    if "://" in location or location.startswith("file:") or ":" in location.split("/", 1)[0]:
        return location  # a server, a bucket, a file:// URI, or another scheme
    return _absolute(location, base)
