"""Run a calibrated quantizer (Olive's GPTQ, AutoRound) in a child process: its torch state stays out of the
build process, its threads are pinned, its log is kept and its progress lines are forwarded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import EdgeQwenError
from ..log import stage_log


def run_child(module: str, config: dict, work: Path, log_path: Path, progress: tuple[str, ...], what: str,
              hint: str) -> float:
    """`python -m MODULE CONFIG.json`; returns wall seconds. Fails with the log's last lines."""
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / f"{module.rsplit('.', 1)[-1]}.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    # Float sums depend on the thread count: one thread by default, so a build is byte-identical on a
    # laptop, a process pool or a Ray worker. EDGEQWEN_GPTQ_THREADS=N trades that for speed.
    threads = os.environ.get("EDGEQWEN_GPTQ_THREADS", "1")
    env = dict(os.environ, OLIVE_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               EDGEQWEN_GPTQ_THREADS=threads)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, str(cfg_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if any(p in line for p in progress):
                stage_log(f"  {what}: " + line.strip().split("] ")[-1].replace("\x1b[0m", ""))
        rc = proc.wait()
    if rc != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise EdgeQwenError(f"{what} failed (exit code {rc}); last lines of its log:\n{tail}", where=str(log_path),
                            hint=hint)
    return time.perf_counter() - t0
