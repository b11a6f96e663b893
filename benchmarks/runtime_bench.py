"""Decode/prefill speed of an INT4 artifact: this runner vs onnxruntime-genai vs PyTorch eager, plus the
memory-bandwidth ceiling.

    python benchmarks/runtime_bench.py [--shape qwen2.5-0.5b] [--threads 2] [--prompt-len 128] [--gen-len 128]

Builds `qwen2.5-0.5b-instruct/cpu-x86_64-int4` on a random-weight checkpoint of that shape (cached),
runs `edgeqwen bench` (each engine in its own process, same token ids), and measures memory-read
bandwidth with numpy. Decode ceiling = bandwidth / bytes read per token, where bytes per
token = quantized weights (model.onnx.data) + the KV cache at mid-generation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import add_speed_args, ensure_artifact, write_results  # noqa: E402

from edgeqwen.bench import bench, format_bench  # noqa: E402


def read_bandwidth_gbs(threads: int, mb: int = 512, repeats: int = 5) -> float:
    """Aggregate read bandwidth with `threads` numpy reductions in parallel (numpy releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    arrays = [np.ones(mb * 1024 * 1024 // 8) for _ in range(threads)]
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.sum, arrays))
            best = max(best, sum(a.nbytes for a in arrays) / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    add_speed_args(ap)
    args = ap.parse_args()
    ckpt, art = ensure_artifact(args.shape, args.recipe)
    report = bench(art, args.prompt_len, args.gen_len, args.threads, reference=str(ckpt))
    cfg = json.loads((art / "genai_config.json").read_text())["model"]["decoder"]
    kv_bytes = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_size"] * 4 * (args.prompt_len + args.gen_len // 2)
    per_token = (art / "model.onnx.data").stat().st_size + kv_bytes
    bw = read_bandwidth_gbs(max(1, args.threads))
    ceiling = bw * 1e9 / per_token
    lines = [format_bench(report), "",
             f"memory-read bandwidth (numpy, {max(1, args.threads)} threads): {bw:.1f} GB/s; bytes read per decoded token: {per_token / 1e6:.0f} MB "
             f"(weights {(art / 'model.onnx.data').stat().st_size / 1e6:.0f} MB + KV {kv_bytes / 1e6:.1f} MB)",
             f"decode ceiling ≈ {ceiling:.1f} tok/s"]
    for engine, r in report["results"].items():
        if "decode_tps" in r:
            lines.append(f"  {engine}: {r['decode_tps']:.1f} tok/s = {r['decode_tps'] / ceiling * 100:.0f} % of the ceiling")
    write_results(args.out, f"runtime-{args.shape}", "\n".join(lines),
                  {**report, "bandwidth_gbs": bw, "bytes_per_token": per_token, "ceiling_tps": ceiling})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
