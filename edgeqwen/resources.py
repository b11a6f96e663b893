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

KINDS = ("recipes", "targets")
_ENV = {"recipes": "EDGEQWEN_RECIPES", "targets": "EDGEQWEN_TARGETS"}


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
    """User folders (in the order given) then the shipped one."""
    user = [Path(p).expanduser() for p in os.environ.get(_ENV[kind], "").split(os.pathsep) if p]
    return user + [shipped_dir(kind)]


def add_user_dir(kind: str, folder: str) -> None:
    """`--recipes DIR`: search DIR before everything else for the rest of this process (and its children)."""
    current = os.environ.get(_ENV[kind], "")
    os.environ[_ENV[kind]] = os.pathsep.join([str(Path(folder).expanduser().absolute())] + ([current] if current else []))
