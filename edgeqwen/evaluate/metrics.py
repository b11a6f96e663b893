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


def summarize(ref_logits: np.ndarray, cand_logits: np.ndarray, targets: np.ndarray) -> dict:
    kld = token_kld(ref_logits, cand_logits)
    ppl_ref = perplexity(ref_logits, targets)
    ppl_cand = perplexity(cand_logits, targets)
    return {
        "tokens": int(len(targets)),
        "ppl_reference": ppl_ref,
        "ppl_candidate": ppl_cand,
        "ppl_ratio": ppl_cand / ppl_ref,
        "kld_mean": float(kld.mean()),
        "kld_p99": float(np.percentile(kld, 99)),
        "kld_max": float(kld.max()),
        "top1": top1_agreement(ref_logits, cand_logits),
    }
