"""The one way edgeqwen runs heavy work in a child process (exporters, calibrated quantizers): `python -m MODULE
FILE`, its heavy state kept out of the build process, its log kept, its progress lines forwarded, its exit code
and peak memory reported."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgeQwenError
from .log import stage_log

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "OLIVE_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class ChildRun:
    wall_s: float
    peak_rss_mb: float  # the largest child's peak so far in this process (getrusage), an upper bound for this one


CALIB_THREADS = 2  # the default thread count of every calibrated step (GPTQ, AutoRound, sensitivity)


def calibration_threads() -> int:
    """Float sums depend on the thread count, so calibrated work runs on a fixed number of threads (recorded in the
    manifest and in every cache key): the same build is byte-identical on a laptop, a process pool or a Ray worker.
    2 by default (GPTQ on the Qwen2.5-0.5B shape: ~2x faster than 1); EDGEQWEN_CALIB_THREADS=N changes it
    (EDGEQWEN_GPTQ_THREADS is the older name)."""
    raw = os.environ.get("EDGEQWEN_CALIB_THREADS") or os.environ.get("EDGEQWEN_GPTQ_THREADS") or str(CALIB_THREADS)
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise EdgeQwenError(f"EDGEQWEN_CALIB_THREADS={raw!r} is not a positive thread count", where="environment",
                            hint=f"unset it (default {CALIB_THREADS}) or give e.g. 1, 2, 4")
    return threads


def calibrated_threads_env() -> dict[str, str]:
    threads = str(calibration_threads())
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "EDGEQWEN_CALIB_THREADS": threads}


def run_child(module: str, arg: Path, log_path: Path, *, progress: tuple[str, ...], what: str, hint: str,
              env: dict[str, str] | None = None, clean=lambda line: line) -> ChildRun:
    """Run `python -m module arg`; raise EdgeQwenError with the log's last lines when it fails."""
    full_env = dict(os.environ, **OFFLINE_ENV, **(env or {}))
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        # its own process group, so an interrupted build ends the worker and anything the worker started
        proc = subprocess.Popen([sys.executable, "-m", module, str(arg)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=full_env, text=True, bufsize=1, start_new_session=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                text = line.strip()
                if any(p in text for p in progress):
                    stage_log(f"  {what}: {clean(text)}")
            rc = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM or an error here: never leave the worker running
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = "".join(Path(log_path).read_text().splitlines(keepends=True)[-15:])
        raise EdgeQwenError(f"{what} failed (exit code {rc}); last lines of its log:\n{tail}", where=str(log_path),
                            hint=hint)
    return ChildRun(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
