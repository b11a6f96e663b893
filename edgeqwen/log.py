"""Staged progress lines on stderr (quiet with EDGEQWEN_QUIET=1)."""

from __future__ import annotations

import os
import sys
import time

_T0 = time.perf_counter()


def stage_log(message: str) -> None:
    if os.environ.get("EDGEQWEN_QUIET") == "1":
        return
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)
