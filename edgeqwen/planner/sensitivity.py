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


def _capture(model, body, layers, x):
    """One fp32 forward over the calibration batch with hooks: every layer's input (and the first layer's keyword
    arguments), each linear's Σ x² per input column with its row count, the final norm's output, and the reference
    log-probabilities. Returns (inputs, kwargs, square sums, final hidden states, ref_logp)."""
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
        ref_logp = torch.log_softmax(model(x, use_cache=False).logits.float(), dim=-1)
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
                diff = w - _fake_quant(w, bits, block, sym)  # [N, K]; E[x_k²] weighs column k
                total += float(((diff * diff).sum(0).double() * (s / max(count, 1)).double()).sum())
            err[kind][f"int{bits}/b{block}"] = total
    return err


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
    inputs, kwargs, sq, final_h, ref_logp = _capture(model, body, layers, x)
    scored = slice(x.shape[1] // 2, None, 2)  # every other position of each sequence's second half (the first half
    # is context): the 151936-wide head then costs a quarter of the whole batch, and neighbours add little information
    ref_logp = ref_logp[:, scored].contiguous()

    def rerun(start: int) -> float:
        with torch.inference_mode():
            h = inputs[start]
            for layer in layers[start:]:
                h = layer(h, **kwargs)
                h = h[0] if isinstance(h, tuple) else h
            return _kld(ref_logp, model.lm_head(body.norm(h[:, scored])))

    def full_run() -> float:
        with torch.inference_mode():
            return _kld(ref_logp, model(x, use_cache=False).logits[:, scored])

    base_bits, base_block, sym = int(cfg["base_bits"]), int(cfg["base_block"]), bool(cfg["symmetric"])
    grid = [(int(b), int(s)) for b, s in cfg["grid"]]
    nodes_for = cfg["nodes_for"]  # HF module in a layer → the node that holds it (q/k/v share one)
    by_node: dict[str, list[str]] = {}
    for module, node in nodes_for.items():
        by_node.setdefault(node, []).append(module)
    resolution = choose_resolution(model.config.get_text_config(), int(x.numel()), int(cfg.get("budget_tflop", BUDGET_TFLOP)),
                                   cfg.get("resolution"))
    groups = []
    for i, layer in enumerate(layers):
        originals = {m: layer.get_submodule(m).weight.data.clone() for m in nodes_for}
        err = _format_errors(i, originals, by_node, grid, sq, sym)
        local = _local_errors(layer, inputs[i], kwargs, by_node, originals, resolution,
                              lambda w: _fake_quant(w, base_bits, base_block, sym))
        for unit in units(list(by_node), resolution):
            for kind in unit:
                for m in by_node[kind]:
                    layer.get_submodule(m).weight.data = _fake_quant(originals[m], base_bits, base_block, sym)
            kld = rerun(i)
            for kind in unit:
                for m in by_node[kind]:
                    layer.get_submodule(m).weight.data = originals[m]
            share_total = sum(local[k] for k in unit)
            for kind in unit:  # a unit's KLD split over its matrices by their share of the layer-output error
                share = local[kind] / share_total if share_total > 0 else 1 / len(unit)
                groups.append({"layer": i, "kind": kind, "modules": by_node[kind], "kld": kld * share,
                               "unit_kld": kld, "unit": list(unit), "err": err[kind],
                               "shapes": [list(originals[m].T.shape) for m in by_node[kind]]})
        print(f"sensitivity: layer {i + 1}/{len(layers)} measured ({time.perf_counter() - t0:.0f}s)", flush=True)
    head = _head_and_table(model, body, cfg, final_h[:, scored], ref_logp, full_run)
    return {"version": 1, "resolution": resolution, "base_bits": base_bits, "base_block": base_block, "symmetric": sym,
            "samples": int(x.shape[0]), "seq_len": int(x.shape[1]), "threads": int(cfg["threads"]),
            "noise_floor_kld": rerun(0), "groups": groups, **head, "wall_s": round(time.perf_counter() - t0, 2)}


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


BUDGET_TFLOP = 6  # reruns' multiply-adds allowed (≈ a minute on 2 cores) before the measurement coarsens
RESOLUTIONS = ("matrix", "block", "layer")


def units(kinds: list[str], resolution: str) -> list[tuple[str, ...]]:
    """What one rerun measures: each matrix, the attention / MLP block, or the whole layer."""
    if resolution == "matrix":
        return [(k,) for k in kinds]
    if resolution == "block":
        return [tuple(k for k in kinds if k.startswith(p)) for p in ("attn/", "mlp/") if any(k.startswith(p) for k in kinds)]
    return [tuple(kinds)]


def choose_resolution(config, tokens: int, budget_tflop: float, forced: str | None = None) -> str:
    """The finest measurement whose reruns fit the budget: a rerun from layer l costs the layers after it over every
    calibration token plus the lm_head over the scored half. Tiny models get every matrix, 0.5B+ coarser units."""
    if forced:
        return forced
    h, inter, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    heads = config.num_attention_heads
    kvh = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or h // heads
    per_layer = 2 * tokens * (h * (heads + 2 * kvh) * hd + heads * hd * h + 3 * h * inter)
    head = 2 * (tokens // 2) * h * vocab
    tail = sum(per_layer * (layers - i) + head for i in range(layers))
    for resolution, reruns in (("matrix", 5), ("block", 2), ("layer", 1)):
        if reruns * tail / 1e12 <= budget_tflop:
            return resolution
    return "layer"


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
                  what="sensitivity", env=calibrated_threads_env(),
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
