"""The web page's speed on WebAssembly beside the Python runner, same machine, same run (headless Chromium via
Playwright; see tests/helpers/web.py and .ci/device_browser.sh for what it needs).

    python benchmarks/web_bench.py ARTIFACT [--tokens 64] [--backend wasm]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.web import chromium, open_page, page_greedy, serving  # noqa: E402

PROMPT = "What does the assert statement do?"


def python_side(art: Path, ids: list[int], n: int):
    from edgeqwen.runtime.runner import Runner, Sampling

    r = Runner(art, providers="cpu")
    list(r.stream(ids, Sampling(max_new_tokens=4, ignore_eos=True)))  # warm
    return list(r.stream(ids, Sampling(max_new_tokens=n, ignore_eos=True)))[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--backend", default="wasm")
    args = ap.parse_args(argv)
    art = Path(args.artifact)
    from edgeqwen.runtime.runner import Runner

    r = Runner(art, providers="cpu")
    ids = r.encode(r.apply_chat_template([{"role": "user", "content": PROMPT}]))
    with serving(art) as url, chromium() as browser:
        t0 = time.perf_counter()
        page = open_page(browser, url, args.backend, timeout_s=900)
        load_s = time.perf_counter() - t0
        page_greedy(page, ids, 4, logits=False)  # warm
        stats = page_greedy(page, ids, args.tokens, logits=False)["stats"]
    last = python_side(art, ids, args.tokens)
    print(f"{art.name}: {len(ids)}-token prompt + {args.tokens} tokens; page {args.backend} (load {load_s:.1f} s) "
          f"prefill {stats['prefillTokensPerSecond']:.1f} tok/s, decode {stats['tokensPerSecond']:.1f} tok/s; "
          f"Python runner (CPU EP) prefill {last.prefill_tps:.1f} tok/s, decode {last.decode_tps:.1f} tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
