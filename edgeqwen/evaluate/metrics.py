"""Metric math in plain numpy, named as in llama.cpp's perplexity tool.

All functions take logits [N, V] for N scored positions and the next-token targets [N].
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each target token."""
    lp = log_softmax(logits)
    return -lp[np.arange(len(targets)), targets]


def perplexity(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(np.exp(token_nll(logits, targets).mean()))


def token_kld(ref_logits: np.ndarray, cand_logits: np.ndarray) -> np.ndarray:
    """KL(reference ‖ candidate) per position over the full vocabulary (nats)."""
    lp_ref = log_softmax(ref_logits)
    lp_cand = log_softmax(cand_logits)
    kld = (np.exp(lp_ref) * (lp_ref - lp_cand)).sum(axis=-1)
    return np.maximum(kld, 0.0)  # rounding can leave tiny negatives


def top1_agreement(ref_logits: np.ndarray, cand_logits: np.ndarray) -> float:
    return float((ref_logits.argmax(-1) == cand_logits.argmax(-1)).mean())


def greedy_match(ref_tokens: list[int], cand_tokens: list[int]) -> int:
    """Number of leading tokens identical in two greedy continuations."""
    n = 0
    for a, b in zip(ref_tokens, cand_tokens):
        if a != b:
            break
        n += 1
    return n


def token_stats(ref_logits: np.ndarray, cand_logits: np.ndarray, targets: np.ndarray,
                rows: int = 32) -> dict[str, np.ndarray]:
    """Per scored position: KLD, both NLLs and top-1 agreement — all `summarize_tokens` needs, so windows can be
    scored one at a time and their full-vocabulary logits dropped. `rows` positions at a time, each log-softmax
    computed once: float64 temporaries stay at a few × rows × vocab (40 MB each on Qwen's 151936)."""
    out: dict[str, list] = {"kld": [], "nll_ref": [], "nll_cand": [], "top1": []}
    for a in range(0, len(targets), rows):
        ref, cand, tgt = ref_logits[a:a + rows], cand_logits[a:a + rows], targets[a:a + rows]
        lp_ref, lp_cand = log_softmax(ref), log_softmax(cand)
        at = np.arange(len(tgt))
        out["kld"].append(np.maximum((np.exp(lp_ref) * (lp_ref - lp_cand)).sum(axis=-1), 0.0))
        out["nll_ref"].append(-lp_ref[at, tgt])
        out["nll_cand"].append(-lp_cand[at, tgt])
        out["top1"].append(ref.argmax(-1) == cand.argmax(-1))
    return {k: np.concatenate(v) for k, v in out.items()}


def shortlist_candidates(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A shortlist head's logits [N, V] (its K candidates finite, the rest its fill) → (argmax [N], candidates [N, K])."""
    return logits.argmax(-1), np.argpartition(-logits, k - 1, axis=-1)[:, :k]


def shortlist_stats(ref_logits: np.ndarray, full_logits: np.ndarray, top: np.ndarray, cand: np.ndarray,
                    rows: int = 32) -> dict[str, np.ndarray]:
    """Per scored position of a shortlist head (`shortlist_candidates`): whether its pick is the reference's top-1,
    whether the full head's top-1 is among its candidates (recall), and the reference probability mass they hold."""
    out: dict[str, list] = {"top1": [], "recall": [], "mass": []}
    for a in range(0, len(top), rows):
        ref, c = ref_logits[a:a + rows], cand[a:a + rows]
        p = np.exp(log_softmax(ref))
        out["top1"].append(ref.argmax(-1) == top[a:a + rows])
        out["recall"].append((c == full_logits[a:a + rows].argmax(-1)[:, None]).any(-1))
        out["mass"].append(np.take_along_axis(p, c, axis=-1).sum(-1))
    return {k: np.concatenate(v) for k, v in out.items()}


def summarize_tokens(t: dict[str, np.ndarray]) -> dict:
    kld = t["kld"]
    ppl_ref = float(np.exp(t["nll_ref"].mean()))
    ppl_cand = float(np.exp(t["nll_cand"].mean()))
    return {
        "tokens": int(len(kld)),
        "ppl_reference": ppl_ref,
        "ppl_candidate": ppl_cand,
        "ppl_ratio": ppl_cand / ppl_ref,
        "kld_mean": float(kld.mean()),
        "kld_p99": float(np.percentile(kld, 99)),
        "kld_max": float(kld.max()),
        "top1": float(t["top1"].mean()),
    }


def summarize(ref_logits: np.ndarray, cand_logits: np.ndarray, targets: np.ndarray) -> dict:
    return summarize_tokens(token_stats(ref_logits, cand_logits, targets))
