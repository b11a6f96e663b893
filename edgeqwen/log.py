"""Staged progress on stderr through stdlib logging (logger "edgeqwen").

`edgeqwen -q` (or EDGEQWEN_QUIET=1) shows warnings and errors only, `-v` adds debug lines. Results a verb
prints (tables, paths, JSON) go to stdout and are not log lines.
"""

from __future__ import annotations

import logging
import os
import sys
import time

_T0 = time.perf_counter()
LOGGER = logging.getLogger("edgeqwen")


class _Elapsed(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"[{time.perf_counter() - _T0:7.1f}s] {prefix}{text}"


def setup(verbosity: int | None = None) -> None:
    """verbosity -1 quiet, 0 normal, 1 debug; None: from EDGEQWEN_QUIET. Safe to call more than once."""
    if verbosity is None:
        verbosity = -1 if os.environ.get("EDGEQWEN_QUIET") == "1" else 0
    if not any(getattr(h, "_edgeqwen", False) for h in LOGGER.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Elapsed("%(message)s"))
        handler._edgeqwen = True  # type: ignore[attr-defined]
        LOGGER.addHandler(handler)
        LOGGER.propagate = False
    LOGGER.setLevel({-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[max(-1, min(1, verbosity))])


def stage_log(message: str) -> None:
    if not LOGGER.handlers:
        setup()
    elif os.environ.get("EDGEQWEN_QUIET") == "1":  # set after setup (worker processes, tests)
        LOGGER.setLevel(logging.WARNING)
    LOGGER.info(message)
