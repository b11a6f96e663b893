"""A stand-in worker for tests of edgeqwen.child: prints a progress line, records where and how it ran, exits with the
code its job file asks for."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PRELOAD = ("json",)


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    print("step: working", flush=True)
    Path(job["out"]).write_text(json.dumps({"ppid": os.getppid(), "cwd": os.getcwd(), "x": os.environ.get("ECHO_X"),
                                            "argv": sys.argv[1:]}))
    print("step: done", flush=True)
    return int(job.get("exit", 0))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
