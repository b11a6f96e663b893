"""What the sensitivity measurement (sensitivity.py) measures within its compute budget: the resolution (each
matrix, the attention/MLP block, the layer, or the bounded proxy), the layers the proxy reruns and the calibration
sequences its layer-output errors run on, each rerun's floating-point work (which planner/cost.py's time estimate
uses too), and the proxy's interpolation of the unmeasured layers. No torch: plain arithmetic on the config."""

from __future__ import annotations

BLOCKS = (16, 32, 64, 128, 256)  # the block sizes a format may take


def proxy_groups(kinds: list[str], errors: list[dict], local_errors: list[dict], measured_kld: dict[int, float],
                 base_key: str, group) -> tuple[list[dict], dict]:
    """Bounded cost for models whose per-layer reruns would not fit the budget: every matrix's activation-weighted
    weight error at the base format (no forward passes), and the KLD of the whole layer quantized measured on a
    few layers spread over the depth (as many as the budget pays for). A layer's KLD is its weight error times the
    KLD/error ratio interpolated (in log space) between the measured layers; the ratio's leave-one-out prediction of
    each measured layer is reported (`proxy.loo_log_corr`). Within a layer the KLD is shared by each matrix's
    layer-output error, measured on as many calibration sequences as half the budget pays for."""
    import math

    totals = [sum(e[base_key] for e in err.values()) for err in errors]
    ratio = {i: max(k, 1e-12) / max(totals[i], 1e-30) for i, k in measured_kld.items()}
    groups = []
    for i, err in enumerate(errors):
        layer_kld = interp_log(ratio, i) * totals[i]
        local_total = sum(local_errors[i].values())
        for kind in kinds:  # shared among the matrices by their layer-output error, as the per-layer reruns do
            share = local_errors[i][kind] / local_total if local_total > 0 else 1 / len(kinds)
            groups.append(group(i, kind, layer_kld * share, layer_kld, kinds))
    measured = sorted(measured_kld)
    loo = [(math.log(interp_log({m: r for m, r in ratio.items() if m != i}, i) * totals[i]),
            math.log(ratio[i] * totals[i])) for i in measured[1:-1]] if len(measured) >= 3 else []
    return groups, {"measured_layers": measured, "ratio": {str(i): r for i, r in ratio.items()},
                    "loo_log_corr": corr(loo) if len(loo) >= 3 else None,
                    "loo_abs_log_err": [round(abs(p - m), 3) for p, m in loo]}


def interp_log(points: dict[int, float], i: int) -> float:
    """points (layer → positive value) interpolated linearly in log space at layer i, held flat beyond the ends."""
    import math

    xs = sorted(points)
    if i <= xs[0]:
        return points[xs[0]]
    if i >= xs[-1]:
        return points[xs[-1]]
    hi = next(x for x in xs if x >= i)
    lo = max(x for x in xs if x <= i)
    if hi == lo:
        return points[lo]
    t = (i - lo) / (hi - lo)
    return math.exp((1 - t) * math.log(points[lo]) + t * math.log(points[hi]))


def corr(pairs: list[tuple[float, float]]) -> float:
    n = len(pairs)
    mx, my = sum(p for p, _ in pairs) / n, sum(m for _, m in pairs) / n
    sxy = sum((p - mx) * (m - my) for p, m in pairs)
    sxx, syy = sum((p - mx) ** 2 for p, _ in pairs), sum((m - my) ** 2 for _, m in pairs)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else 1.0


def local_error_sequences(config, kinds: int, batch: int, seq: int, budget: float) -> int:
    """Calibration sequences the proxy's layer-output errors run on: as many as a quarter of the budget pays for
    (each layer: one forward with nothing quantized and one per matrix kind), one at least."""
    per_sequence = config.num_hidden_layers * (kinds + 1) * layer_tflop(config, seq)
    return int(max(1, min(batch, budget * PROXY_SHARE / 2 / per_sequence)))


def pick_layers(costs: list[float], budget: float) -> list[int]:
    """The most layers, spread evenly over the depth, whose reruns fit the budget (TFLOP); the first and the last
    always (the ratio differs most between the ends of the depth: interpolating from one end alone misranks layers)."""
    n = len(costs)
    best = sorted({0, n - 1})
    for m in range(3, n + 1):
        picked = sorted({round(j * (n - 1) / (m - 1)) for j in range(m)})
        if sum(costs[i] for i in picked) > budget:
            break
        best = picked
    return best


BUDGET_TFLOP = 6  # reruns' floating-point work allowed (≈ a minute on 2 cores) before the measurement coarsens
PROXY_SHARE = 1 / 2  # of that budget, what the proxy spends on reruns (and half as much on layer-output errors)
RESOLUTIONS = ("matrix", "block", "layer", "proxy")


def units(kinds: list[str], resolution: str) -> list[tuple[str, ...]]:
    """What one rerun measures: each matrix, the attention / MLP block, or the whole layer."""
    if resolution == "matrix":
        return [(k,) for k in kinds]
    if resolution == "block":
        return [tuple(k for k in kinds if k.startswith(p)) for p in ("attn/", "mlp/") if any(k.startswith(p) for k in kinds)]
    return [tuple(kinds)]


def layer_tflop(config, tokens: int) -> float:
    """One decoder layer's forward over `tokens` tokens (TFLOP, 2 per multiply-add)."""
    h, inter = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    kvh = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or h // heads
    return 2 * tokens * (h * (heads + 2 * kvh) * hd + heads * hd * h + 3 * h * inter) / 1e12


def rerun_costs(config, tokens: int) -> list[float]:
    """TFLOP of a rerun from each layer: the layers after it over every calibration token, the lm_head over the
    scored half."""
    layers = config.num_hidden_layers
    head = 2 * (tokens // 2) * config.hidden_size * config.vocab_size / 1e12
    return [layer_tflop(config, tokens) * (layers - i) + head for i in range(layers)]


def choose_resolution(config, tokens: int, budget_tflop: float, forced: str | None = None) -> str:
    """The finest measurement whose reruns fit the budget: tiny models get every matrix, 0.5B-sized ones a rerun per
    layer; past that ("proxy") weight errors with a few measured layers, whatever the model's size."""
    if forced:
        return forced
    tail = sum(rerun_costs(config, tokens))
    for resolution, reruns in (("matrix", 5), ("block", 2), ("layer", 1)):
        if reruns * tail <= budget_tflop:
            return resolution
    return "proxy"


def grid_for(base: tuple[int, int], formats: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Every format the planner may put a group in: each bit width at each block up to the largest asked for (smaller
    blocks stand in where a quantizer needs whole groups and K is not a multiple of the block)."""
    top = max(s for _, s in [base, *formats])
    return [(b, s) for b in sorted({b for b, _ in [base, *formats]}) for s in BLOCKS if s <= top]
