"""The web page's speed on WebAssembly beside the Python runner, same machine, same run (headless Chromium via
Playwright; see tests/helpers/web.py and .ci/device_browser.sh for what it needs). On WebAssembly the page runs the
artifact's int8 graph (model.wasm.onnx) where it has one; the same page on the int4 decoder graph is the anchor.

    python benchmarks/web_bench.py ARTIFACT [--tokens 64] [--backend wasm] [--no-anchor]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.web import chromium, open_page, page_greedy, serving  # noqa: E402

PROMPT = "What does the assert statement do?"


def python_side(art: Path, ids: list[int], n: int, backend: str):
    from edgeqwen.runtime.runner import Runner, Sampling

    entry = json.loads((art / "web" / "config.json").read_text())["backends"][backend]
    r = Runner(art, providers="cpu", decoder_file=entry["model"])
    r.max_step_tokens = entry["max_step_tokens"]
    list(r.stream(ids, Sampling(max_new_tokens=4, ignore_eos=True)))  # warm
    return list(r.stream(ids, Sampling(max_new_tokens=n, ignore_eos=True)))[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--backend", default="wasm")
    ap.add_argument("--no-anchor", action="store_true", help="skip the page on the int4 decoder graph")
    args = ap.parse_args(argv)
    art = Path(args.artifact)
    from edgeqwen.runtime.runner import Runner

    r = Runner(art, providers="cpu")
    ids = r.encode(r.apply_chat_template([{"role": "user", "content": PROMPT}]))
    rows = []
    with serving(art) as url, chromium() as browser:
        for graph in ["auto"] + ([] if args.no_anchor else ["decoder"]):
            t0 = time.perf_counter()
            page = open_page(browser, url, args.backend, timeout_s=900, graph=graph)
            load_s = time.perf_counter() - t0
            name = page.evaluate("window.edgeqwenModel.graph")
            n = args.tokens if graph == "auto" else max(2, args.tokens // 8)  # the anchor is slow: fewer tokens
            page_greedy(page, ids, 2, logits=False)  # warm
            stats = page_greedy(page, ids, n, logits=False)["stats"]
            rows.append((name, load_s, n, stats))
            page.close()
    last = python_side(art, ids, args.tokens, args.backend)
    print(f"{art.name}: {len(ids)}-token prompt, page on {args.backend}, same run")
    print("| graph | load s | tokens | prefill tok/s | decode tok/s | decode vs the int4 graph |")
    print("|---|---|---|---|---|---|")
    anchor = rows[-1][3]["tokensPerSecond"] if len(rows) > 1 else None
    for name, load_s, n, st in rows:
        ratio = f"{st['tokensPerSecond'] / anchor:.1f}x" if anchor else ""
        print(f"| {name} | {load_s:.1f} | {n} | {st['prefillTokensPerSecond']:.1f} | {st['tokensPerSecond']:.2f} "
              f"| {ratio} |")
    print(f"Python runner (CPU EP) on {rows[0][0]}: prefill {last.prefill_tps:.1f} tok/s, decode "
          f"{last.decode_tps:.1f} tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
