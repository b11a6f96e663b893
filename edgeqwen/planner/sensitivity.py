"""Measured sensitivity of every decoder-layer matrix, the lm_head and the embedding table (the input of
`mixed_precision: auto`, planner/mixed.py).

On a few calibration sequences (never the eval text), the fp32 model runs once; each decoder layer's input is kept.
Then, one group at a time — a layer's qkv, o, gate, up or down projection — the group's weights are replaced by
what MatMulNBits would compute with at the base format (onnxruntime's own block quantizer and its exact inverse),
the model is rerun from that layer on, and the mean token KLD against the fp32 logits is recorded. Every other
format's cost is carried as the activation-weighted weight error Σ_j E[x_j²]·Σ_i (W_ij − Q(W)_ij)² (the diagonal
importance matrix llama.cpp's imatrix uses), from which planner/mixed.py scales the measured KLD.

Olive 0.13's SelectiveMixedPrecision (kld_gradient, after mlx-lm's dynamic_quant) scores the same units, but it loads
its calibration data from the hub with no way to pass a local file, so it cannot run offline; this measures KLD
directly instead of a gradient proxy.

Runs in a child process (`python -m edgeqwen.planner.sensitivity CONFIG.json`); the build caches its record per
weights × calibration text × settings × thread count.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# imported once by the warm zygote (edgeqwen/warm.py) before it forks this worker's jobs
PRELOAD = ("torch", "transformers")

BLOCKS = (16, 32, 64, 128, 256)


def _fake_quant(w_nk, bits: int, block: int, symmetric: bool):
    """torch [N, K] weight → the float weight MatMulNBits computes with at this format (same shape and dtype)."""
    import numpy as np
    import torch

    from ..quantize.graph_quant import ort_block_dequant, ort_block_quant

    w = np.ascontiguousarray(w_nk.detach().float().numpy().T)  # [K, N], blocks along K like the MatMul weight
    packed, scales, zps = ort_block_quant(w, bits, block, symmetric)
    return torch.from_numpy(ort_block_dequant(packed, scales, zps, bits, block, symmetric, w.shape[0]).T.copy())


def _local_errors(layer, h, kwargs, by_node: dict, originals: dict, resolution: str, quantize) -> dict[str, float]:
    """Per matrix kind: the squared error of this layer's output (the residual stream, after attention's softmax and
    the MLP's gate) with that one matrix quantized — how a unit's measured KLD is shared among its matrices."""
    import torch

    if resolution == "matrix":
        return {k: 1.0 for k in by_node}
    out = {}
    with torch.inference_mode():
        ref = layer(h, **kwargs)
        ref = ref[0] if isinstance(ref, tuple) else ref
        for kind, modules in by_node.items():
            for m in modules:
                layer.get_submodule(m).weight.data = quantize(originals[m])
            got = layer(h, **kwargs)
            got = got[0] if isinstance(got, tuple) else got
            out[kind] = float(((got - ref).double() ** 2).sum())
            for m in modules:
                layer.get_submodule(m).weight.data = originals[m]
    return out


def _kld(ref_logp, logits) -> float:
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean())


def _capture(model, body, layers, x, scored):
    """One fp32 forward over the calibration batch with hooks: every layer's input (and the first layer's keyword
    arguments), each linear's Σ x² per input column with its row count, the final norm's output, and the reference
    log-probabilities at the `scored` positions only (the head over every position, and its log-softmax, would hold
    two [tokens, vocab] fp32 tensors: 5 GB on the 3B shape, the stage's peak). Returns (inputs, kwargs, square sums,
    final hidden states, ref_logp)."""
    import torch

    inputs: dict[int, torch.Tensor] = {}
    kwargs: dict = {}
    sq: dict[str, list] = {}
    hooks = []

    def keep_input(i):
        def hook(_, args, kw):
            inputs[i] = args[0].detach()
            if i == 0:
                kwargs.update({k: v for k, v in kw.items() if k != "past_key_values"})
        return hook

    def square_sum(name):
        def hook(_, args):
            a = args[0].detach().float().reshape(-1, args[0].shape[-1])
            acc = sq.setdefault(name, [torch.zeros(a.shape[1]), 0])
            acc[0] += (a * a).sum(0)
            acc[1] += a.shape[0]
        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(keep_input(i), with_kwargs=True))
        for name, mod in layer.named_modules():
            if isinstance(mod, torch.nn.Linear):
                hooks.append(mod.register_forward_pre_hook(square_sum(f"{i}.{name}")))
    final: dict = {}
    hooks.append(body.norm.register_forward_hook(lambda _, __, out: final.setdefault("h", out.detach())))
    with torch.inference_mode():
        model.model(x, use_cache=False)  # the decoder without its head: the hooks keep what is measured
        ref_logp = torch.log_softmax(model.lm_head(final["h"][:, scored]).float(), dim=-1)
    for h in hooks:
        h.remove()
    return inputs, kwargs, sq, final["h"], ref_logp


def _format_errors(i: int, originals: dict, by_node: dict, grid: list, sq: dict, sym: bool) -> dict[str, dict]:
    """Per node kind of layer i, each format's activation-weighted weight error Σ_k E[x_k²]·Σ_n (W−Q(W))²: the formats
    asked for, and the blocks a whole-group quantizer fits to K."""
    from .sizes import fit_block

    err: dict[str, dict[str, float]] = {}
    for kind, modules in by_node.items():
        err[kind] = {}
        k = originals[modules[0]].shape[1]
        for bits, block in sorted({(b, f) for b, blk in grid for f in (blk, fit_block(k, blk, True) or 16)}):
            total = 0.0
            for module in modules:
                s, count = sq[f"{i}.{module}"]
                w = originals[module]
                stride = max(1, w.shape[0] // SAMPLED_ROWS)  # blocks run along K, so every stride-th row is a fair sample
                sample = w[::stride]
                diff = sample - _fake_quant(sample, bits, block, sym)  # [n, K]; E[x_k²] weighs column k
                scale = w.shape[0] / sample.shape[0]
                total += scale * float(((diff * diff).sum(0).double() * (s / max(count, 1)).double()).sum())
            err[kind][f"int{bits}/b{block}"] = total
    return err


SAMPLED_ROWS = 128  # output rows of a matrix whose weight error is computed (all of them up to twice that): the
# errors only rank formats against each other, and 128 rows × K columns is already 10⁵ samples or more


def measure(cfg: dict) -> dict:
    import torch

    from ..architectures import load_reference
    from ..quantize.calibration import calibration_ids

    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    x = calibration_ids(cfg["model"], cfg["calib_text"], cfg["samples"], cfg["seq_len"])
    model = load_reference(cfg["model"])  # a VL model's decoder is measured on text as the text models are
    body = getattr(model.model, "language_model", model.model)
    layers = body.layers
    scored = slice(x.shape[1] // 2, None, 2)  # every other position of each sequence's second half (the first half
    # is context): the 151936-wide head then costs a quarter of the whole batch, and neighbours add little information
    inputs, kwargs, sq, final_h, ref_logp = _capture(model, body, layers, x, scored)

    def rerun(start: int) -> float:
        with torch.inference_mode():
            h = inputs[start]
            for layer in layers[start:]:
                h = layer(h, **kwargs)
                h = h[0] if isinstance(h, tuple) else h
            return _kld(ref_logp, model.lm_head(body.norm(h[:, scored])))

    def full_run() -> float:
        with torch.inference_mode():
            return _kld(ref_logp, model.lm_head(model.model(x, use_cache=False).last_hidden_state[:, scored]))

    base_bits, base_block, sym = int(cfg["base_bits"]), int(cfg["base_block"]), bool(cfg["symmetric"])
    grid = [(int(b), int(s)) for b, s in cfg["grid"]]
    nodes_for = cfg["nodes_for"]  # HF module in a layer → the node that holds it (q/k/v share one)
    by_node: dict[str, list[str]] = {}
    for module, node in nodes_for.items():
        by_node.setdefault(node, []).append(module)
    config = model.config.get_text_config()
    budget = float(cfg.get("budget_tflop", BUDGET_TFLOP))
    resolution = choose_resolution(config, int(x.numel()), budget, cfg.get("resolution"))
    quant = lambda w: _fake_quant(w, base_bits, base_block, sym)  # noqa: E731
    layer_errors = _LayerErrors(layers, inputs, kwargs, by_node, nodes_for, grid, sq, sym, quant, (base_bits, base_block))
    timing: dict[str, float] = {"capture_s": round(time.perf_counter() - t0, 2)}
    if resolution == "proxy":
        costs = rerun_costs(config, int(x.numel()))
        groups, proxy = _measure_proxy(layer_errors, rerun, costs, lambda t: layer_tflop(config, t),
                                       budget * PROXY_SHARE, t0, timing)
    else:
        groups, proxy = _measure_reruns(layer_errors, rerun, resolution, t0, timing), None
    t1 = time.perf_counter()
    head = _head_and_table(model, body, cfg, final_h[:, scored], ref_logp, full_run)
    timing["head_s"] = round(time.perf_counter() - t1, 2)
    return {"version": 1, "resolution": resolution, "base_bits": base_bits, "base_block": base_block, "symmetric": sym,
            "samples": int(x.shape[0]), "seq_len": int(x.shape[1]), "threads": int(cfg["threads"]),
            "noise_floor_kld": rerun(len(layers) - 1), "groups": groups, **head, **({"proxy": proxy} if proxy else {}),
            "timing": timing, "wall_s": round(time.perf_counter() - t0, 2)}


class _LayerErrors:
    """One layer's weight errors at every format (and, where asked, its output error per matrix kind)."""

    def __init__(self, layers, inputs, kwargs, by_node, nodes_for, grid, sq, sym, quant, base: tuple[int, int]):
        self.layers, self.inputs, self.kwargs, self.by_node = layers, inputs, kwargs, by_node
        self.nodes_for, self.grid, self.sq, self.sym, self.quant, self.base = nodes_for, grid, sq, sym, quant, base

    def originals(self, i: int) -> dict:
        return {m: self.layers[i].get_submodule(m).weight.data.clone() for m in self.nodes_for}

    def formats(self, i: int, originals: dict) -> dict:
        return _format_errors(i, originals, self.by_node, self.grid, self.sq, self.sym)

    def local(self, i: int, originals: dict, resolution: str, sequences: int | None = None) -> dict:
        """Per matrix kind, the layer-output error with that kind quantized (on the first `sequences` sequences)."""
        h, kwargs = self.inputs[i], self.kwargs
        if sequences is not None and sequences < h.shape[0]:
            batch = h.shape[0]
            h = h[:sequences]
            kwargs = {k: v[:sequences] if hasattr(v, "shape") and v.dim() > 0 and v.shape[0] == batch else v
                      for k, v in kwargs.items()}
            kwargs = {k: tuple(t[:sequences] if hasattr(t, "shape") and t.shape[0] == batch else t for t in v)
                      if isinstance(v, tuple) else v for k, v in kwargs.items()}
        return _local_errors(self.layers[i], h, kwargs, self.by_node, originals, resolution, self.quant)

    def set_quantized(self, i: int, kinds, originals: dict, quantized: bool) -> None:
        for kind in kinds:
            for m in self.by_node[kind]:
                self.layers[i].get_submodule(m).weight.data = self.quant(originals[m]) if quantized else originals[m]

    def group(self, i: int, kind: str, kld: float, unit_kld: float, unit, err: dict, originals: dict) -> dict:
        return {"layer": i, "kind": kind, "modules": self.by_node[kind], "kld": kld, "unit_kld": unit_kld,
                "unit": list(unit), "err": err[kind], "shapes": [list(originals[m].T.shape) for m in self.by_node[kind]]}


def _progress(what: str, done: int, total: int, t0: float, weights: list[float] | None = None) -> None:
    """A per-layer progress line with an ETA from the measured rate (weighted by each step's planned cost)."""
    elapsed = time.perf_counter() - t0
    w = weights or [1.0] * total
    left = sum(w[done:]) / max(sum(w[:done]), 1e-9) * elapsed
    print(f"sensitivity: {what} {done}/{total} measured ({elapsed:.0f}s, ETA {left:.0f}s)", flush=True)


def _measure_reruns(le: _LayerErrors, rerun, resolution: str, t0: float, timing: dict) -> list[dict]:
    """Every unit's KLD measured by rerunning the model from its layer with that unit quantized."""
    groups = []
    n = len(le.layers)
    for i in range(n):
        originals = le.originals(i)
        err = le.formats(i, originals)
        local = le.local(i, originals, resolution)
        for unit in units(list(le.by_node), resolution):
            le.set_quantized(i, unit, originals, True)
            kld = rerun(i)
            le.set_quantized(i, unit, originals, False)
            share_total = sum(local[k] for k in unit)
            for kind in unit:  # a unit's KLD split over its matrices by their share of the layer-output error
                share = local[kind] / share_total if share_total > 0 else 1 / len(unit)
                groups.append(le.group(i, kind, kld * share, kld, unit, err, originals))
        _progress("layer", i + 1, n, t0, [float(n - j) for j in range(n)])
    timing["layers_s"] = round(time.perf_counter() - t0 - timing["capture_s"], 2)
    return groups


def _measure_proxy(le: _LayerErrors, rerun, costs: list[float], layer_cost, budget: float, t0: float,
                   timing: dict) -> tuple[list[dict], dict]:
    """Bounded cost for models whose per-layer reruns would not fit the budget: every matrix's activation-weighted
    weight error at the base format (no forward passes), and the KLD of the whole layer quantized measured on a
    few layers spread over the depth (as many as the budget pays for). A layer's KLD is its weight error times the
    KLD/error ratio interpolated (in log space) between the measured layers; the ratio's leave-one-out prediction of
    each measured layer is reported (`proxy.loo_log_corr`). Within a layer the KLD is shared by each matrix's
    layer-output error, measured on as many calibration sequences as half the budget pays for."""
    import math

    n = len(le.layers)
    batch, seq = le.inputs[0].shape[:2]
    per_sequence = len(le.by_node) + 1  # layer forwards per layer for the local errors, per calibration sequence
    sequences = int(max(1, min(batch, budget / 2 / (n * per_sequence * layer_cost(seq)))))
    errs, locals_, totals = [], [], []
    for i in range(n):
        originals = le.originals(i)
        err = le.formats(i, originals)
        errs.append((err, originals))
        locals_.append(le.local(i, originals, "layer", sequences))
        totals.append(sum(e[_key(le, err)] for e in err.values()))
        _progress("errors of layer", i + 1, n, t0)
    t_err = time.perf_counter()
    measured = pick_layers(costs, budget)
    ratio = {}
    for j, i in enumerate(measured):
        originals = errs[i][1]
        le.set_quantized(i, list(le.by_node), originals, True)
        kld = rerun(i)
        le.set_quantized(i, list(le.by_node), originals, False)
        ratio[i] = max(kld, 1e-12) / max(totals[i], 1e-30)
        _progress("KLD of layer", j + 1, len(measured), t_err, [costs[m] for m in measured])
    groups = []
    for i in range(n):
        err, originals = errs[i]
        layer_kld = _interp_log(ratio, i) * totals[i]
        local_total = sum(locals_[i].values())
        for kind in le.by_node:  # shared among the matrices by their layer-output error, as the per-layer reruns do
            share = locals_[i][kind] / local_total if local_total > 0 else 1 / len(le.by_node)
            groups.append(le.group(i, kind, layer_kld * share, layer_kld, list(le.by_node), err, originals))
    timing.update(weight_errors_s=round(t_err - t0 - timing["capture_s"], 2),
                  reruns_s=round(time.perf_counter() - t_err, 2))
    loo = [(math.log(_interp_log({m: r for m, r in ratio.items() if m != i}, i) * totals[i]),
            math.log(ratio[i] * totals[i])) for i in measured[1:-1]] if len(measured) >= 3 else []
    return groups, {"measured_layers": measured, "local_error_sequences": sequences, "ratio": {str(i): r for i, r in ratio.items()},
                    "loo_log_corr": _corr(loo) if len(loo) >= 3 else None,
                    "loo_abs_log_err": [round(abs(p - m), 3) for p, m in loo]}


def _key(le: _LayerErrors, err: dict) -> str:
    """The base format's key in a layer's error table."""
    return f"int{le.base[0]}/b{le.base[1]}"


def _interp_log(points: dict[int, float], i: int) -> float:
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


def _corr(pairs: list[tuple[float, float]]) -> float:
    n = len(pairs)
    mx, my = sum(p for p, _ in pairs) / n, sum(m for _, m in pairs) / n
    sxy = sum((p - mx) * (m - my) for p, m in pairs)
    sxx, syy = sum((p - mx) ** 2 for p, _ in pairs), sum((m - my) ** 2 for _, m in pairs)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else 1.0


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


def _head_and_table(model, body, cfg: dict, final_h, ref_logp, full_run) -> dict:
    """lm_head at each of its formats (on a tied model the same weights are the embedding table, so the whole model
    reruns), and an untied embedding table at each of its formats."""
    import torch

    tied = model.lm_head.weight is body.embed_tokens.weight
    sym = bool(cfg["symmetric"])
    out: dict = {"tied": tied, "head": {}, "table": {}}
    w = model.lm_head.weight.data.clone()
    for bits, block in cfg["head_formats"]:
        model.lm_head.weight.data = _fake_quant(w, bits, block, sym)
        with torch.inference_mode():
            out["head"][f"int{bits}/b{block}"] = full_run() if tied else _kld(ref_logp, model.lm_head(final_h))
        model.lm_head.weight.data = w
    if not tied:
        e = body.embed_tokens.weight.data.clone()
        for bits, block in cfg["table_formats"]:
            body.embed_tokens.weight.data = _fake_quant(e, bits, block, sym)
            out["table"][f"int{bits}/b{block}"] = full_run()
            body.embed_tokens.weight.data = e
    print("sensitivity: lm_head and embedding table measured", flush=True)
    return out


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


def sensitivity_for(plan, resolved, ckpt, work: Path, calib_path: Path | None) -> dict:
    """The build's measurement for `plan` (made without it): run in a child process, cached per weights ×
    calibration text × settings × threads."""
    from ..architectures import get_architecture
    from ..child import calibrated_threads_env, calibration_threads, run_child
    from ..log import stage_log
    from ..quantize.calibration import read_calibration_text
    from ..quantize.result_cache import cache_key, cached_json
    from .sizes import fit_block

    mp = resolved.recipe.quantization.mixed_precision
    _, source = read_calibration_text(calib_path)
    base = (plan.matmul_bits, plan.block_size)
    formats = [(f.bits, f.block_size) for f in mp.formats]
    hidden = ckpt.config["hidden_size"]
    table_block = fit_block(hidden, plan.table.block_size or plan.block_size, True) or 16
    threads = calibration_threads()
    settings = {"samples": mp.samples, "seq_len": mp.seq_len, "base_bits": base[0], "base_block": base[1],
                "symmetric": plan.symmetric, "grid": sorted({base, *formats}),
                "nodes_for": get_architecture(plan.architecture).module_nodes["builder"],
                "head_formats": sorted({(8, fit_block(hidden, 128, True) or 16), (4, base[1])}),
                "table_formats": [(8, table_block), (4, table_block)], "threads": int(threads)}
    key = cache_key(ckpt.path, Path(source), settings, "onnxruntime")

    def run() -> dict:
        cfg_path, out = work / "sensitivity.json", work / "sensitivity.out.json"
        cfg_path.write_text(json.dumps({**settings, "model": str(ckpt.path), "calib_text": source, "output": str(out)}))
        run_child("edgeqwen.planner.sensitivity", cfg_path, work / "sensitivity.log", progress=("sensitivity:",),
                  what="sensitivity", env=calibrated_threads_env(), clean=lambda t: t.removeprefix("sensitivity: "),
                  hint="set quantization.mixed_precision: off, or give another calibration file")
        return json.loads(out.read_text())

    stage_log(f"        sensitivity: {mp.samples} × {mp.seq_len} calibration tokens from {Path(source).name}, "
              f"each decoder-layer matrix at int{base[0]}/b{base[1]}")
    record = cached_json("sensitivity", key, "sensitivity", run)
    return {**record, "source": source, "cache_key": key}


def main(argv: list[str]) -> int:
    cfg = json.loads(Path(argv[0]).read_text())
    record = measure(cfg)
    Path(cfg["output"]).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1:]))
