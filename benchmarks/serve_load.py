"""Load test of `edgeqwen serve`: N concurrent clients (real `openai` client) against one model, streaming or not.

    python benchmarks/serve_load.py ARTIFACT [--clients 8] [--max-tokens 64] [--no-stream] [--temperature 0]
                                    [--foundry-python PATH]

Checks that every client completes and that each output equals what the runner produces alone for the
same prompt and seed; reports streaming tokens/s through HTTP for a single client against the direct
runner (the anchor, same process, same prompt) as a ratio, and the aggregate under load. With
--foundry-python (a venv holding foundry-local-sdk) it also times Foundry Local's runtime on the artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import openai

from edgeqwen.runtime import Runner, Sampling
from edgeqwen.serve.server import make_server

REPO = Path(__file__).resolve().parent.parent


STREAM, TEMPERATURE = True, 0.8  # set from the command line


def stream_once(url, model, prompt, max_tokens, seed):
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
    t0 = time.perf_counter()
    if not STREAM:  # one response with the whole completion
        r = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=TEMPERATURE,
                                      seed=seed)
        end = time.perf_counter()
        n = r.usage.completion_tokens
        return r.choices[0].text, n, n / (end - t0) if n else 0.0, end - t0
    first = None
    pieces = []
    n = 0
    for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=TEMPERATURE,
                                           seed=seed, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].text:
            first = first or time.perf_counter()
            pieces.append(chunk.choices[0].text)
        if chunk.usage:
            n = chunk.usage.completion_tokens
    end = time.perf_counter()
    return "".join(pieces), n, n / (end - t0) if n else 0.0, end - t0  # request tokens/s, prefill included


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=4, help="compared with --max-batch 1 in the same run")
    ap.add_argument("--foundry-python", default=os.environ.get("EDGEQWEN_FOUNDRY_PYTHON"))
    ap.add_argument("--no-stream", action="store_true", help="whole responses instead of streams")
    ap.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    args = ap.parse_args()
    global STREAM, TEMPERATURE
    STREAM, TEMPERATURE = not args.no_stream, args.temperature
    art = Path(args.artifact)
    runner = Runner(art, threads=args.threads)
    prompts = [f"Request {i}: the statement" for i in range(args.clients)]
    runner.generate(prompts[0], Sampling(max_new_tokens=args.max_tokens))  # warm-up, as the server gets one
    expected = {}
    direct_tps = []
    for i, p in enumerate(prompts):  # the same sampling the server runs: the request's fields over the recipe's
        t0 = time.perf_counter()
        res = runner.generate(p, runner.default_sampling(max_new_tokens=args.max_tokens, temperature=args.temperature,
                                                         seed=i))
        expected[p] = res.text
        direct_tps.append(len(res.token_ids) / (time.perf_counter() - t0))
    del runner
    lines = [f"serve load test: {art.name}, {args.clients} concurrent {'streaming' if STREAM else 'non-streaming'} "
             f"clients, temperature {args.temperature}, {args.max_tokens} max tokens, {args.threads} threads"]
    aggregate, single_rate = {}, {}
    ok = True
    for batch in (1, args.max_batch):  # one request at a time (the anchor), then continuous batching, same run
        server = make_server(art, port=0, threads=args.threads, max_batch=batch)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        model = next(iter(server.cache.models))
        stream_once(server.url, model, "warm up", 4, 0)
        single = [stream_once(server.url, model, p, args.max_tokens, i) for i, p in enumerate(prompts[:3])]
        http_tps = sum(x[2] for x in single) / len(single)
        single_rate[batch] = http_tps
        anchor = sum(direct_tps[:3]) / 3
        results, errors = {}, []

        def worker(i, p):
            try:
                results[p] = stream_once(server.url, model, p, args.max_tokens, i)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i, p)) for i, p in enumerate(prompts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        server.shutdown()
        server.server_close()
        same = sum(results[p][0] == expected[p] for p in results)
        total = sum(r[1] for r in results.values())
        aggregate[batch] = total / wall
        slowest = max((r[3] for r in results.values()), default=0.0)
        ok = ok and not errors and same == len(results) == args.clients
        lines += [
            f"  --max-batch {batch}: completed {len(results)}/{args.clients}, errors {len(errors)}, outputs identical to "
            f"the runner alone: {same}/{len(results)}",
            f"    one client at a time through HTTP {http_tps:.1f} tok/s per request, prefill included (the direct "
            f"runner, the anchor: {anchor:.1f}; {http_tps / anchor:.3f}x; vs --max-batch 1: "
            f"{http_tps / single_rate[1]:.3f}x)",
            f"    {args.clients} clients at once: {total} tokens in {wall:.2f}s = {total / wall:.1f} tok/s aggregate "
            f"({aggregate[batch] / aggregate[1]:.2f}x --max-batch 1), slowest request {slowest:.2f}s",
        ]
    if args.foundry_python:
        proc = subprocess.run([args.foundry_python, "-m", "edgeqwen.interop.foundry_check", str(art),
                               "--max-tokens", str(args.max_tokens)], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
        fl = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"error": proc.stderr[-300:]}
        lines.append(f"  Foundry Local runtime on the same artifact (request wall, incl. prompt): "
                     f"{fl.get('tokens_per_s') or 0:.1f} tok/s {fl.get('error', '')}")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
