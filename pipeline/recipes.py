"""Published recipes as params fragments: ``recipes/<dataset>/common.yaml`` then ``<method>.yaml`` on top.

``python -m pipeline.recipes cifar10 byol`` prints the recipe as ``dvc exp run`` flags; with ``--run`` it
runs that experiment (``make cifar10 METHOD=byol``). README, "SSL methods", has the recipes' sources.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of params sections, got {type(data).__name__}")
    return data


def methods(dataset: str, root: Path = RECIPES) -> list[str]:
    """The methods that have a recipe for ``dataset``, sorted."""
    return sorted(p.stem for p in (root / dataset).glob("*.yaml") if p.stem != "common")


def load_recipe(dataset: str, method: str, root: Path = RECIPES) -> dict[str, Any]:
    """The recipe of ``method`` on ``dataset``: its common part with the method's own file on top.

    Args:
        dataset: a folder of ``root`` (``cifar10``).
        method: a file of that folder without ``.yaml``.
        root: where the recipes live.

    Returns:
        A nested params fragment, sections as in ``params.yaml``.

    Raises:
        ValueError: no such recipe (the message lists those there are).
    """
    path = root / dataset / f"{method}.yaml"
    if not path.is_file():
        known = ", ".join(methods(dataset, root)) or "none"
        raise ValueError(f"no {dataset} recipe for method {method!r}; there are: {known}")
    return _merge(_read(root / dataset / "common.yaml"), _read(path))


def apply_recipe(params: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """``params`` (a parsed ``params.yaml``) with the recipe's values in place of its own."""
    return _merge(params, recipe)


def dotted(recipe: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The recipe's leaves by dotted key (``pretrain.optim.lr``), as ``dvc exp run -S`` names them."""
    out: dict[str, Any] = {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _yaml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, float):
        # YAML 1.1 (PyYAML) reads 5e-05 as a string: give every exponent a mantissa with a dot.
        mantissa, e, exponent = repr(value).partition("e")
        return f"{mantissa if '.' in mantissa else mantissa + '.0'}{e}{exponent}"
    return json.dumps(value)


def dvc_flags(recipe: dict[str, Any]) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run``; values in YAML flow syntax (lists, true, null)."""
    flags: list[str] = []
    for key, value in dotted(recipe).items():
        flags += ["-S", f"{key}={_yaml_value(value)}"]
    return flags


def main(argv: list[str] | None = None) -> int:
    """The command line: print a recipe's flags, or run it (``--run``); an unknown recipe exits 2 with one line."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.recipes", description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("method")
    ap.add_argument("--run", action="store_true", help="run `dvc exp run` with the recipe")
    args = ap.parse_args(argv)
    try:
        flags = dvc_flags(load_recipe(args.dataset, args.method))
    except ValueError as exc:
        print(f"recipes: error: {exc}", file=sys.stderr)
        return 2
    if not args.run:
        print(" ".join(f"'{f}'" if f != "-S" else f for f in flags))
        return 0
    dvc = shutil.which("dvc") or "dvc"
    os.execvp(dvc, [dvc, "exp", "run", *flags])


if __name__ == "__main__":
    sys.exit(main())
