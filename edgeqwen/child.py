"""The one way edgeqwen runs heavy work in a child process (exporters, calibrated quantizers): `python -m MODULE
FILE`, its heavy state kept out of the build process, its log kept, its progress lines forwarded, its exit code
and peak memory reported."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
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
    """Run `python -m module arg` (forked warm from the zygote where it can, see warm.py); raise EdgeQwenError with
    the log's last lines when it fails."""
    full_env = dict(os.environ, **OFFLINE_ENV, **(env or {}))
    t0 = time.perf_counter()
    forked = _ZYGOTE.run(module, str(arg), log_path, full_env,
                         lambda text: any(p in text for p in progress) and stage_log(f"  {what}: {clean(text)}"))
    if forked is not None:
        rc, peak_mb = forked
        _fail_on(rc, log_path, what, hint)
        return ChildRun(time.perf_counter() - t0, peak_mb)
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
    _fail_on(rc, log_path, what, hint)
    return ChildRun(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def _fail_on(rc: int, log_path: Path, what: str, hint: str) -> None:
    if rc != 0:
        tail = "".join(Path(log_path).read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise EdgeQwenError(f"{what} failed (exit code {rc}); last lines of its log:\n{tail}", where=str(log_path),
                            hint=hint)


class _Zygote:
    """The parent's side of warm.py: starts the zygote on first use, sends one job at a time, tails the job's log for
    progress lines, kills the job's process group if the build is interrupted. `run` returns (exit code, peak RSS MB),
    or None when the job should run as a plain child instead (turned off, not Linux, busy, refused, broken)."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.broken = False

    def enabled(self) -> bool:
        return (sys.platform == "linux" and not self.broken
                and os.environ.get("EDGEQWEN_WARM_CHILDREN", "1").lower() not in ("0", "off", "false", "no"))

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgeqwen.warm"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
                                         env=dict(os.environ, **OFFLINE_ENV), start_new_session=True)
        return self.proc

    def run(self, module: str, arg: str, log_path: Path, env: dict, on_line) -> tuple[int, float] | None:
        if not self.enabled() or not self.lock.acquire(blocking=False):
            return None
        try:
            proc = self._start()
            job = {"module": module, "args": [arg], "log": str(log_path), "env": env, "cwd": os.getcwd()}
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            first = json.loads(proc.stdout.readline() or '{"refused": "the zygote exited"}')
            if "refused" in first:
                return None
            return self._follow(proc, first["pid"], Path(log_path), on_line)
        except (OSError, ValueError):
            self.broken = True  # a zygote that cannot be talked to: plain children from now on
            return None
        finally:
            self.lock.release()

    @staticmethod
    def _follow(proc: subprocess.Popen, pid: int, log_path: Path, on_line) -> tuple[int, float]:
        done: list[dict] = []
        reader = threading.Thread(target=lambda: done.append(json.loads(proc.stdout.readline() or '{"rc": -9}')),
                                  daemon=True)
        reader.start()
        pos, partial = 0, ""
        try:
            while True:
                finished = not reader.is_alive()
                if log_path.exists():
                    with open(log_path, errors="replace") as fh:
                        fh.seek(pos)
                        chunk = fh.read()
                        pos = fh.tell()
                    *lines, partial = (partial + chunk).split("\n")
                    for line in lines:
                        on_line(line.strip())
                if finished:
                    break
                reader.join(0.05)
        except BaseException:  # Ctrl-C, SIGTERM or an error here: never leave the worker running
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:  # not yet in its own group: the process alone
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            reader.join()
            raise
        if partial.strip():
            on_line(partial.strip())
        result = done[0] if done else {"rc": -9}
        return int(result["rc"]), result.get("maxrss_kb", 0) / 1024


_ZYGOTE = _Zygote()
