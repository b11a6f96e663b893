"""Where recipes and targets are read from: the user's folders first, then the ones shipped with edgeqwen.

Shipped: inside an installed wheel they are package data (`edgeqwen/_bundled/{recipes,targets}`, copied from the
repository's top-level folders at build time by setup.py); in a source checkout or an editable install they are the
repository's own `recipes/` and `targets/`. Users add theirs with `EDGEQWEN_RECIPES` / `EDGEQWEN_TARGETS` (folders,
separated by the OS path separator) or `edgeqwen --recipes DIR`; a user file with a shipped name wins.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import EdgeQwenError

KINDS = ("recipes", "targets")
_ENV = {"recipes": "EDGEQWEN_RECIPES", "targets": "EDGEQWEN_TARGETS"}
_LAYOUT = {"recipes": "<model>/<name>.yaml recipes", "targets": "<name>.yaml targets"}
_FROM_FLAG: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}  # absolute folder -> as given to --recipes DIR


def shipped_dir(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; known: {', '.join(KINDS)}")
    if os.environ.get("EDGEQWEN_HOME"):
        return Path(os.environ["EDGEQWEN_HOME"]) / kind
    bundled = resources.files("edgeqwen") / "_bundled" / kind
    if bundled.is_dir():
        return Path(str(bundled))
    return Path(__file__).resolve().parent.parent / kind


def search_dirs(kind: str) -> list[Path]:
    """User folders (in the order given) then the shipped one. A user folder that is missing or not a folder is an
    error naming it and where it came from (a typo would otherwise just list the shipped ones)."""
    given = [p for p in os.environ.get(_ENV[kind], "").split(os.pathsep) if p]
    for raw in given:
        if not Path(raw).expanduser().is_dir():
            _bad_user_dir(kind, raw)
    return [Path(p).expanduser() for p in given] + [shipped_dir(kind)]


def _bad_user_dir(kind: str, raw: str) -> None:
    state = "is not a folder" if Path(raw).expanduser().exists() else "does not exist"
    flag = _FROM_FLAG[kind].get(raw)
    if flag is not None:
        what, where, fix = flag, f"--{kind} {flag}", f"pass an existing folder to --{kind}, or leave the flag out"
    else:
        what, where, fix = raw, f"environment variable {_ENV[kind]}", f"correct {_ENV[kind]}, or unset it"
    raise EdgeQwenError(f"{kind[:-1]} search path {state}: {what}", where=where,
                        hint=f"{fix} (a {kind[:-1]} folder holds {_LAYOUT[kind]})")


def add_user_dir(kind: str, folder: str) -> None:
    """`--recipes DIR`: search DIR before everything else for the rest of this process (and its children). A folder
    that is missing is reported when recipes/targets are first looked up (search_dirs), naming the flag."""
    current = os.environ.get(_ENV[kind], "")
    absolute = str(Path(folder).expanduser().absolute())
    _FROM_FLAG[kind][absolute] = folder
    os.environ[_ENV[kind]] = os.pathsep.join([absolute] + ([current] if current else []))
