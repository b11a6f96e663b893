"""A shortlist artifact's decode head on this machine's kernels, through the artifact's OWN runner.py: over one text,
how often the full head's top-1 is among the candidates (recall), how far the candidates' logits are from the full
head's, and the greedy tokens. Printed as JSON; runs under foreign Pythons (an aarch64 one under qemu-user).

    python shortlist_check.py ARTIFACT [--tokens N]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

TEXT = ("The assert statement is a convenient way to insert debugging assertions into a program. The for statement "
        "iterates over the items of any sequence, a list or a string, in the order that they appear in the sequence.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args(argv)
    sys.path.insert(0, args.artifact)
    import numpy as np
    import runner  # the artifact's copy

    r = runner.Runner(args.artifact)
    ids = r.encode(TEXT)
    full, short = r.score(ids), r.score(ids, full_head=False)
    kept = short > -1e29
    greedy = r.generate(ids[:12], runner.Sampling(max_new_tokens=args.tokens, ignore_eos=True)).token_ids
    print(json.dumps({"machine": platform.machine(), "k": r.shortlist_k, "positions": len(ids),
                      "candidates": sorted(set(kept.sum(-1).tolist())),
                      "recall": float(kept[np.arange(len(ids)), full.argmax(-1)].mean()),
                      "max_diff": float(np.abs(np.where(kept, short - full, 0)).max()),
                      "max_logit": float(np.abs(full).max()), "greedy": greedy}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
