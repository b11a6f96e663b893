"""Warm child processes: a zygote that imports a worker's heavy modules once and forks each job from there.

A build runs its heavy steps (the exporter, GPTQ, sensitivity, AutoRound) as `python -m MODULE FILE` children, so
their memory never stays in the build process. Each such child used to spend 4-8 s importing torch, transformers,
onnxruntime-genai's builder or Olive before doing a fraction of a second of work on a small model; a process that
builds many artifacts (`build-all`, `tune`, a test run) paid that on every build. Here one zygote per parent process
imports the modules a worker names in its `PRELOAD` tuple the first time that worker runs, then forks every job: the
child starts with them imported, in its own session, with the job's environment, working folder and arguments, its
output in the job's log file, and exits with the worker's exit code. The zygote reports the child's pid, exit code and
peak RSS (wait4). It stays single-threaded (a fork of a threaded process is unsafe): if importing a worker's modules
starts a thread, it says so and the parent runs that worker as a plain child process instead.

Linux only; `EDGEQWEN_WARM_CHILDREN=0` turns it off. The zygote exits when its parent does (its stdin closes).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import threading
import traceback


def _child(job: dict) -> None:
    """In the forked child: become the worker (never returns)."""
    code = 1
    try:
        os.setsid()  # its own process group: an interrupted build kills the worker and what it started
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered: progress lines reach the log at once
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # fd 0 was the zygote's control pipe
        os.close(null)
        sys.stdin = open(0, closefd=False)
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        sys.argv = [job["module"], *job["args"]]
        sys.modules.pop(job["module"], None)  # runs afresh as __main__, as `python -m` would (its imports stay warm)
        try:
            runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - the worker's own failure, as a fresh interpreter would print it
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _preload(module: str, loaded: set[str]) -> str | None:
    """Import the worker and what it names in PRELOAD (once); an error string when forking it would be unsafe."""
    if module in loaded:
        return None
    try:
        mod = importlib.import_module(module)
        for name in getattr(mod, "PRELOAD", ()):
            importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - the child imports it again and reports the error in its log
        return f"preloading {module} failed: {exc}"
    if threading.active_count() > 1:
        return f"importing {module}'s modules started a thread; forking is unsafe"
    loaded.add(module)
    return None


def serve() -> int:
    """The zygote: one JSON job per stdin line; answers {"pid"} at fork, then {"pid", "rc", "maxrss_kb"} at exit,
    or {"refused": reason} when it cannot fork that worker safely."""
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing a preloaded module prints may reach the control pipe
    loaded: set[str] = set()
    for line in sys.stdin:
        job = json.loads(line)
        refused = _preload(job["module"], loaded)
        if refused:
            out.write(json.dumps({"refused": refused}) + "\n")
            out.flush()
            continue
        pid = os.fork()
        if pid == 0:
            _child(job)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status, usage = os.wait4(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        out.write(json.dumps({"pid": pid, "rc": rc, "maxrss_kb": usage.ru_maxrss}) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve())
