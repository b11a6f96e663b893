"""Streaming latency and throughput of `edgeqwen serve` now against the old `http.server` stack, same run, same artifact.

    python benchmarks/serve_compare.py ARTIFACT [--old-ref 7451e97] [--tokens 200] [--rounds 5] [--threads 2]

The old server is the package as it was at `--old-ref` (the last commit on http.server), unpacked with `git archive`
into a temporary folder and run from there; the new one is this checkout. Each runs as `edgeqwen serve` in its own
process; rounds alternate old/new. Per round: one stream (time to first token, tokens/s after it), then four
concurrent streams (mean time to first token, aggregate tokens/s; tokens from the usage chunk). Greedy, the same
prompt, `max_tokens` tokens.
Prints medians side by side and the new/old ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def start(tree: Path, artifact: str, threads: int):
    env = {**os.environ, "PYTHONPATH": str(tree), "EDGEQWEN_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgeqwen.cli", "serve", artifact, "--port", "0", "--threads",
                             str(threads), "--max-batch", "4"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env, cwd=tree)
    url = proc.stdout.readline().split(" at ")[1].split("/v1")[0]
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return proc, host, int(port)


def model_of(host, port) -> str:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/v1/models")
    return json.loads(conn.getresponse().read())["data"][0]["id"]


def stream(host, port, model, tokens) -> tuple[float, float, int]:
    """(time to first token, decode tokens/s after it, tokens) of one SSE completion, measured at the client."""
    conn = http.client.HTTPConnection(host, port, timeout=300)
    body = {"model": model, "prompt": "The history of the for statement", "max_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    first, n = None, 0
    for line in resp:
        if line.startswith(b"data: {"):
            if first is None:
                first = time.perf_counter()
            usage = json.loads(line[6:]).get("usage")
            n = usage["completion_tokens"] if usage else n  # tokens, not chunks (a token may add no text)
    end = time.perf_counter()
    conn.close()
    return first - t0, (n - 1) / max(end - first, 1e-9), n


def four(host, port, model, tokens) -> tuple[float, float]:
    """(mean time to first token, aggregate tokens/s) of four concurrent streams."""
    out = []
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lambda: out.append(stream(host, port, model, tokens))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return statistics.mean(o[0] for o in out), sum(o[2] for o in out) / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--old-ref", default="7451e97")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old_ref, "edgeqwen"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        servers = {"old (http.server)": start(old_tree, args.artifact, args.threads),
                   "new (uvicorn/h11)": start(REPO, args.artifact, args.threads)}
        try:
            results = {name: {"ttft1": [], "tps1": [], "ttft4": [], "tps4": []} for name in servers}
            for name, (_, host, port) in servers.items():  # warm-up: load the model, first sessions
                m = model_of(host, port)
                stream(host, port, m, 16)
            for _ in range(args.rounds):
                for name, (_, host, port) in servers.items():
                    m = model_of(host, port)
                    ttft, tps, _ = stream(host, port, m, args.tokens)
                    ttft4, tps4 = four(host, port, m, args.tokens)
                    r = results[name]
                    r["ttft1"].append(ttft), r["tps1"].append(tps), r["ttft4"].append(ttft4), r["tps4"].append(tps4)
        finally:
            for proc, _, _ in servers.values():
                proc.terminate()
                proc.wait(30)
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    old, new = med["old (http.server)"], med["new (uvicorn/h11)"]
    print(f"{args.artifact}: {args.tokens} tokens, {args.rounds} rounds, {args.threads} threads, medians")
    print(f"| metric | old (http.server) | new (uvicorn/h11) | new/old |\n|---|---|---|---|")
    for key, label, better in (("ttft1", "1 stream: time to first token (ms)", "lower"),
                               ("tps1", "1 stream: decode tok/s", "higher"),
                               ("ttft4", "4 streams: mean time to first token (ms)", "lower"),
                               ("tps4", "4 streams: aggregate tok/s", "higher")):
        scale = 1000 if key.startswith("ttft") else 1
        print(f"| {label} | {old[key] * scale:.1f} | {new[key] * scale:.1f} | {new[key] / old[key]:.3f} ({better} "
              "is better) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
