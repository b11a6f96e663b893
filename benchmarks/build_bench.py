"""Build wall time, peak RSS and artifact size: edgeqwen recipes vs the builder's default int4.

    python benchmarks/build_bench.py [--shape qwen2.5-0.5b] [--modes normal,low-memory] [--skip-anchor]
    python benchmarks/build_bench.py --shape qwen2.5-3b-bf16 --modes low-memory --skip-anchor   # 3B in < 16 GB

Anchor (same machine, same run): `python -m onnxruntime_genai.models.builder -p int4 -e cpu` with its
defaults (block 32, fp32 embeddings, untied lm_head). Peak RSS comes from wait4() on each build
process, which includes the builder child process it runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import ensure_shape, write_results  # noqa: E402


def timed(cmd: list[str]) -> tuple[float, float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", EDGEQWEN_QUIET="1")
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: nobody reads while we wait4()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status != 0:
            log.seek(0)
            raise SystemExit(f"failed: {' '.join(cmd)}\n{log.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def calibration_s(artifact: Path) -> str:
    """The manifest's sensitivity measurement and calibrated quantizer wall times, with their thread count."""
    import json

    m = json.loads((artifact / "manifest.json").read_text())
    parts = []
    if "sensitivity" in m:
        parts.append(f"sensitivity {m['sensitivity']['wall_s']:.0f} s")
    for algo in ("gptq", "autoround"):
        if algo in m:
            parts.append(f"{algo} {m[algo]['wall_s']:.0f} s ({m[algo]['samples']} × {m[algo]['seq_len']} tokens, "
                         f"{m[algo].get('threads', 1)} threads)")
    return ", ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--recipes", default="cpu-x86_64-int4,cpu-x86_64-int8")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--modes", default="normal,low-memory",
                    help="edgeqwen build modes to time: normal, low-memory (comma-separated)")
    ap.add_argument("--skip-anchor", action="store_true")
    args = ap.parse_args()
    ckpt = ensure_shape(args.shape)
    model_dir = {"qwen2.5-0.5b": "qwen2.5-0.5b-instruct", "qwen2.5-1.5b": "qwen2.5-1.5b-instruct",
                 "qwen2.5-3b": "qwen2.5-3b-instruct", "qwen3-0.6b": "qwen3-0.6b"}[args.shape.removesuffix("-bf16")]
    work = Path(tempfile.mkdtemp(prefix="edgeqwen-bench-"))
    rows = []
    try:
        if not args.skip_anchor:
            anchor = work / "builder-default"
            wall, rss = timed([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt), "-o", str(anchor),
                               "-p", "int4", "-e", "cpu", "-c", str(work / "cache")])
            rows.append(("builder default int4 (anchor)", size_mb(anchor), wall, rss, ""))
            shutil.rmtree(anchor)
        for r in args.recipes.split(","):
            for flags in [[] if m == "normal" else ["--low-memory"] for m in args.modes.split(",")]:
                out = work / r
                wall, rss = timed([sys.executable, "-m", "edgeqwen.cli", "build", f"{model_dir}/{r}", "--model", str(ckpt),
                                   "-o", str(out), "--no-eval", *flags])
                rows.append((f"edgeqwen {model_dir}/{r} {' '.join(flags)}".rstrip(), size_mb(out), wall, rss,
                             calibration_s(out)))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a_size = rows[0][1]  # the anchor's size (or the first row's with --skip-anchor)
    lines = [f"Build benchmark: {args.shape} shape, random weights, {os.cpu_count()} cores",
             "| artifact | size MB | size vs anchor | build wall s | peak RSS MB | of which calibrated steps |",
             "|---|---|---|---|---|---|"]
    for name, size, wall, rss, calib in rows:
        lines.append(f"| {name} | {size:.0f} | {size / a_size:.2f}x | {wall:.1f} | {rss:.0f} | {calib} |")
    write_results(args.out, f"build-{args.shape}", "\n".join(lines),
                  [dict(zip(("name", "size_mb", "wall_s", "peak_rss_mb", "calibrated"), r)) for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
