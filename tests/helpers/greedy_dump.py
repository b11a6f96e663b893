"""Greedy continuations of an artifact through the artifact's OWN runner.py, with every step's logits, saved to an .npz.

Needs only what runner.py needs (onnxruntime, numpy, tokenizers, jinja2): it runs under foreign Pythons — an aarch64
one under qemu-user, a venv with onnxruntime-webgpu — and the x86 test compares the result with a CPU run.

    python greedy_dump.py ARTIFACT OUT.npz [--provider NAME] [--tokens N] [--prompts N]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

PROMPTS = ["What does the assert statement do?", "Explain the for loop."]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("out")
    ap.add_argument("--provider")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    args = ap.parse_args(argv)
    sys.path.insert(0, args.artifact)
    import numpy as np
    import onnxruntime as ort
    import runner  # the artifact's copy

    t0 = time.perf_counter()
    r = runner.Runner(args.artifact, providers=args.provider)
    load_s = time.perf_counter() - t0
    tokens, logits, texts = [], [], []
    t0 = time.perf_counter()
    for prompt in PROMPTS[:args.prompts]:
        ids = r.encode(r.apply_chat_template([{"role": "user", "content": prompt}]))
        s = runner.Sampling(max_new_tokens=args.tokens, ignore_eos=True, keep_logits=True)
        recs = list(r.stream(ids, s))
        tokens.append([t for rec in recs for t in rec.token_ids])
        logits.append(np.stack([rec.logits for rec in recs]))
        texts.append("".join(rec.text for rec in recs))
    meta = {"providers": r.providers, "notes": r.provider_notes, "onnxruntime": ort.__version__,
            "machine": platform.machine(), "load_s": load_s, "generate_s": time.perf_counter() - t0, "texts": texts}
    np.savez(args.out, tokens=np.array(tokens, dtype=np.int64), logits=np.stack(logits), meta=json.dumps(meta))
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
