"""Measured sensitivity of every decoder-layer matrix, the lm_head and the embedding table (the input of
`mixed_precision: auto`, planner/mixed.py).

On a few calibration sequences (never the eval text), the model is measured in one pass over its decoder layers,
one layer in fp32 at a time: the checkpoint is loaded in its own dtype (bf16 for Qwen's published weights), each
layer is taken to fp32 when the pass reaches it and dropped after, so a 3B checkpoint is measured in about half the
memory of its fp32 model (the pass's peak is the checkpoint, the fp32 embedding table and one fp32 layer). At each
layer the reference hidden states go through it once (with hooks that sum each linear input's squares), and every
rerun the measurement asks for is a stream of hidden states carried alongside: one starts at a layer with a group's
weights replaced by what MatMulNBits would compute with at the base format (quantize/fake_quant.py, bit-for-bit
onnxruntime's block quantizer and its inverse) and goes on through the fp32 layers after it; one starts at the
embedding with the table quantized. At the end each stream's mean token KLD against the fp32 logits is its
group's (or the table's, or the tied head's) cost. Every other format's cost is carried as the activation-weighted
weight error Σ_j E[x_j²]·Σ_i (W_ij − Q(W)_ij)² (the diagonal importance matrix llama.cpp's imatrix uses), from which
planner/mixed.py scales the measured KLD.

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

from .budget import (BUDGET_TFLOP, PROXY_SHARE, choose_resolution, local_error_sequences, pick_layers, proxy_groups,
                     rerun_costs, units)

# imported once by the warm zygote (edgeqwen/warm.py) before it forks this worker's jobs
PRELOAD = ("torch", "transformers")

HEAD_ROWS = 16384  # vocabulary rows of a quantized lm_head computed at a time (a whole fp32 copy is 1.2 GB on 3B)


def _fake_quant(w_nk, bits: int, block: int, symmetric: bool):
    """torch [N, K] weight → the fp32 weight MatMulNBits computes with at this format."""
    from ..quantize.fake_quant import block_fake_quant

    return block_fake_quant(w_nk, bits, block, symmetric)


def _out(y):
    return y[0] if isinstance(y, tuple) else y


def _local_errors(layer, h, kwargs, by_node: dict, originals: dict, quantized: dict, resolution: str) -> dict[str, float]:
    """Per matrix kind: the squared error of this layer's output (the residual stream, after attention's softmax and
    the MLP's gate) with that one matrix quantized — how a unit's measured KLD is shared among its matrices."""
    import torch

    if resolution == "matrix":
        return {k: 1.0 for k in by_node}
    out = {}
    with torch.inference_mode():
        ref = _out(layer(h, **kwargs))
        for kind, modules in by_node.items():
            _swap(layer, modules, quantized)
            out[kind] = float(((_out(layer(h, **kwargs)) - ref).double() ** 2).sum())
            _swap(layer, modules, originals)
    return out


def _swap(layer, modules, weights: dict) -> None:
    for m in modules:
        layer.get_submodule(m).weight.data = weights[m]


def _kld(ref_logp, logits) -> float:
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean())


def _forward_with_square_sums(layer, i: int, h, kwargs, sq: dict):
    """The reference forward of layer i, summing each linear input's squares per column (with its row count)."""
    import torch

    def square_sum(name):
        def hook(_, args):
            a = args[0].detach().float().reshape(-1, args[0].shape[-1])
            acc = sq.setdefault(name, [torch.zeros(a.shape[1]), 0])
            acc[0] += (a * a).sum(0)
            acc[1] += a.shape[0]
        return hook

    hooks = [mod.register_forward_pre_hook(square_sum(f"{i}.{name}")) for name, mod in layer.named_modules()
             if isinstance(mod, torch.nn.Linear)]
    try:
        with torch.inference_mode():
            return _out(layer(h, **kwargs))
    finally:
        for hk in hooks:
            hk.remove()


def _format_errors(i: int, originals: dict, by_node: dict, grid: list, sq: dict, sym: bool,
                   zero_points: bool = False) -> dict[str, dict]:
    """Per node kind of layer i, each format's activation-weighted weight error Σ_k E[x_k²]·Σ_n (W−Q(W))²: the formats
    asked for, and the blocks a whole-group quantizer fits to K. `zero_points` (a symmetric base): each format with a
    zero point per block too, as "int4/b128+zp"."""
    from .sizes import fit_block

    err: dict[str, dict[str, float]] = {}
    for kind, modules in by_node.items():
        err[kind] = {}
        k = originals[modules[0]].shape[1]
        for bits, block in sorted({(b, f) for b, blk in grid for f in (blk, fit_block(k, blk, True) or 16)}):
            for zp in (False, True) if zero_points and sym else (False,):
                total = 0.0
                for module in modules:
                    s, count = sq[f"{i}.{module}"]
                    w = originals[module]
                    stride = max(1, w.shape[0] // SAMPLED_ROWS)  # blocks run along K: every stride-th row is a fair sample
                    sample = w[::stride]
                    diff = sample - _fake_quant(sample, bits, block, sym and not zp)  # [n, K]; E[x_k²] weighs column k
                    scale = w.shape[0] / sample.shape[0]
                    total += scale * float(((diff * diff).sum(0).double() * (s / max(count, 1)).double()).sum())
                err[kind][f"int{bits}/b{block}{'+zp' if zp else ''}"] = total
    return err


SAMPLED_ROWS = 128  # output rows of a matrix whose weight error is computed (all of them up to twice that): the
# errors only rank formats against each other, and 128 rows × K columns is already 10⁵ samples or more


class _Stream:
    """Hidden states on their way to the head: what `name` measures, and the lm_head format it ends with (None: fp32)."""

    __slots__ = ("name", "h", "head")

    def __init__(self, name: tuple, h, head: tuple[int, int] | None = None):
        self.name, self.h, self.head = name, h, head


def _subset(h, kwargs: dict, sequences: int | None):
    """The first `sequences` calibration sequences of a layer's input and keyword arguments."""
    batch = h.shape[0]
    if sequences is None or sequences >= batch:
        return h, kwargs

    def cut(v):
        if isinstance(v, tuple):
            return tuple(cut(t) for t in v)
        return v[:sequences] if hasattr(v, "shape") and v.dim() > 0 and v.shape[0] == batch else v

    return h[:sequences], {k: cut(v) for k, v in kwargs.items()}


def _embedding_streams(body, x, tied: bool, cfg: dict) -> list[_Stream]:
    """Streams from the embedding with the table quantized: on a tied model at each lm_head format (the same weights
    are the head, quantized at the end too), on an untied one at each table format. Each table row is its own
    quantization blocks, so only the rows the calibration text uses are quantized."""
    import torch

    sym = bool(cfg["symmetric"])
    table = body.embed_tokens.weight.data
    ids, where = torch.unique(x, return_inverse=True)
    out = []
    for bits, block in (cfg["head_formats"] if tied else cfg["table_formats"]):
        rows = _fake_quant(table[ids], int(bits), int(block), sym)
        fmt = f"int{bits}/b{block}"
        out.append(_Stream(("head" if tied else "table", fmt), rows[where], (int(bits), int(block)) if tied else None))
    return out


def _head_logits(model, final, head: tuple[int, int] | None, sym: bool):
    """lm_head over `final` with its weights as they are (None) or at a format, a slice of the vocabulary at a time."""
    import torch

    if head is None:
        return model.lm_head(final)
    w = model.lm_head.weight.data
    return torch.cat([torch.nn.functional.linear(final, _fake_quant(w[a:a + HEAD_ROWS], head[0], head[1], sym))
                      for a in range(0, w.shape[0], HEAD_ROWS)], dim=-1)


def measure(cfg: dict) -> dict:
    import torch

    from ..architectures import load_reference
    from ..quantize.calibration import calibration_ids
    from ..quantize.gptq_stream import first_layer_input

    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    x = calibration_ids(cfg["model"], cfg["calib_text"], cfg["samples"], cfg["seq_len"])
    model = load_reference(cfg["model"], dtype="auto")  # each layer goes to fp32 when the pass reaches it
    body = getattr(model.model, "language_model", model.model)  # a VL model's decoder is measured on text
    layers = body.layers
    for module in (body.embed_tokens, model.lm_head, body.norm):
        module.float()  # in place: a tied head stays the table
    tied = model.lm_head.weight is body.embed_tokens.weight
    scored = slice(x.shape[1] // 2, None, 2)  # every other position of each sequence's second half (the first half
    # is context): the 151936-wide head then costs a quarter of the whole batch, and neighbours add little information
    h, kwargs = first_layer_input(model, layers, x)
    run = _Pass(cfg, model.config.get_text_config(), len(layers), *x.shape)
    streams = _embedding_streams(body, x, tied, cfg)
    timing: dict[str, float] = {"load_s": round(time.perf_counter() - t0, 2)}
    t1 = time.perf_counter()
    weights = run.eta_weights(len(streams))
    for i in range(len(layers)):
        h = run.step(layers[i].float(), i, h, kwargs, streams)
        layers[i] = torch.nn.Identity()  # measured: its memory goes back before the next layer is taken to fp32
        _progress("layer", i + 1, len(layers), t1, weights)
    timing["layers_s"] = round(time.perf_counter() - t1, 2)

    t2 = time.perf_counter()
    with torch.inference_mode():
        final = body.norm(h[:, scored])
        ref_logp = torch.log_softmax(model.lm_head(final).float(), dim=-1)
        kld = {s.name: _kld(ref_logp, _head_logits(model, body.norm(s.h[:, scored]), s.head, run.sym)) for s in streams}
        head = {f"int{b}/b{blk}": kld[("head", f"int{b}/b{blk}")] if tied else
                _kld(ref_logp, _head_logits(model, final, (int(b), int(blk)), run.sym)) for b, blk in cfg["head_formats"]}
    timing["head_s"] = round(time.perf_counter() - t2, 2)
    print("sensitivity: lm_head and embedding table measured", flush=True)
    groups, proxy = run.groups(kld)
    return {"version": 1, "resolution": run.resolution, "base_bits": run.base[0], "base_block": run.base[1],
            "symmetric": run.sym, **({"zero_points": True} if run.zero_points and run.sym else {}), "samples": int(x.shape[0]), "seq_len": int(x.shape[1]), "threads": int(cfg["threads"]),
            "noise_floor_kld": kld[("floor",)], "groups": groups, "tied": tied, "head": head,
            "table": {name[1]: v for name, v in kld.items() if name[0] == "table"},
            **({"proxy": proxy} if proxy else {}), "timing": timing, "wall_s": round(time.perf_counter() - t0, 2)}


class _Pass:
    """What the pass measures at each layer (the resolution's units, or the proxy's layers), and what each layer gave:
    its weight errors at every format, its layer-output errors per matrix kind, its matrices' shapes."""

    def __init__(self, cfg: dict, config, n: int, batch: int, seq: int):
        self.base, self.sym = (int(cfg["base_bits"]), int(cfg["base_block"])), bool(cfg["symmetric"])
        self.zero_points = bool(cfg.get("zero_points"))  # the "+zp" formats too (mixed_precision.zero_points: auto)
        self.grid = [(int(b), int(s)) for b, s in cfg["grid"]]
        self.nodes_for = cfg["nodes_for"]  # HF module in a layer → the node that holds it (q/k/v share one)
        self.by_node: dict[str, list[str]] = {}
        for module, node in self.nodes_for.items():
            self.by_node.setdefault(node, []).append(module)
        self.kinds = list(self.by_node)
        budget = float(cfg.get("budget_tflop", BUDGET_TFLOP))
        self.n, self.batch = n, batch
        self.resolution = choose_resolution(config, batch * seq, budget, cfg.get("resolution"))
        if self.resolution == "proxy":
            self.measured = pick_layers(rerun_costs(config, batch * seq), budget * PROXY_SHARE)
            self.starts = {i: [tuple(self.kinds)] for i in self.measured}
            self.sequences: int | None = local_error_sequences(config, len(self.kinds), batch, seq, budget)
        else:
            self.measured, self.sequences = [], None
            self.starts = {i: units(self.kinds, self.resolution) for i in range(n)}
        self.errors, self.local_errors, self.shapes, self.sq = [], [], [], {}

    def eta_weights(self, streams: int) -> list[float]:
        """Each layer's share of the pass in full-batch layer forwards: the reference, the streams alive, the ones
        starting there and the layer-output errors."""
        local = 0 if self.resolution == "matrix" else (len(self.kinds) + 1) * (self.sequences or self.batch) / self.batch
        weights = []
        for i in range(self.n):
            weights.append(1 + streams + len(self.starts.get(i, ())) + local)
            streams += len(self.starts.get(i, ()))
        return weights

    def step(self, layer, i: int, h, kwargs: dict, streams: list[_Stream]):
        """Layer i (in fp32): the reference forward (summing squares), the weight and layer-output errors, every
        stream carried through it and the streams that start at it. Returns the reference output."""
        import torch

        originals = {m: layer.get_submodule(m).weight.data for m in self.nodes_for}
        quantized = {m: _fake_quant(w, *self.base, self.sym) for m, w in originals.items()}
        h_in, h = h, _forward_with_square_sums(layer, i, h, kwargs, self.sq)
        self.errors.append(_format_errors(i, originals, self.by_node, self.grid, self.sq, self.sym, self.zero_points))
        self.local_errors.append(_local_errors(layer, *_subset(h_in, kwargs, self.sequences), self.by_node, originals,
                                               quantized, "layer" if self.resolution == "proxy" else self.resolution))
        self.shapes.append({kind: [list(originals[m].T.shape) for m in self.by_node[kind]] for kind in self.kinds})
        with torch.inference_mode():
            for s in streams:
                s.h = _out(layer(s.h, **kwargs))
            for unit in self.starts.get(i, ()):
                modules = [m for kind in unit for m in self.by_node[kind]]
                _swap(layer, modules, quantized)
                streams.append(_Stream(("unit", i, unit), _out(layer(h_in, **kwargs))))
                _swap(layer, modules, originals)
            if i == self.n - 1:  # the noise floor: the last layer rerun with nothing quantized
                streams.append(_Stream(("floor",), _out(layer(h_in, **kwargs))))
        return h

    def _group(self, i: int, kind: str, kld: float, unit_kld: float, unit) -> dict:
        return {"layer": i, "kind": kind, "modules": self.by_node[kind], "kld": kld, "unit_kld": unit_kld,
                "unit": list(unit), "err": self.errors[i][kind], "shapes": self.shapes[i][kind]}

    def groups(self, kld: dict) -> tuple[list[dict], dict | None]:
        """Every matrix's KLD from the streams' (the proxy: carried to every layer by weight error)."""
        if self.resolution == "proxy":
            groups, proxy = proxy_groups(self.kinds, self.errors, self.local_errors,
                                          {i: kld[("unit", i, tuple(self.kinds))] for i in self.measured},
                                          f"int{self.base[0]}/b{self.base[1]}", self._group)
            return groups, {**proxy, "local_error_sequences": self.sequences}
        groups = []
        for i in range(self.n):
            for unit in self.starts[i]:
                unit_kld = kld[("unit", i, unit)]
                share_total = sum(self.local_errors[i][k] for k in unit)
                for kind in unit:  # a unit's KLD split over its matrices by their share of the layer-output error
                    share = self.local_errors[i][kind] / share_total if share_total > 0 else 1 / len(unit)
                    groups.append(self._group(i, kind, unit_kld * share, unit_kld, unit))
        return groups, None


def _progress(what: str, done: int, total: int, t0: float, weights: list[float] | None = None) -> None:
    """A per-layer progress line with an ETA from the measured rate (weighted by each step's planned cost)."""
    elapsed = time.perf_counter() - t0
    w = weights or [1.0] * total
    left = sum(w[done:]) / max(sum(w[:done]), 1e-9) * elapsed
    print(f"sensitivity: {what} {done}/{total} measured ({elapsed:.0f}s, ETA {left:.0f}s)", flush=True)


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
    if plan.mixed.zero_point_cost is not None:  # each format with zero points too (mixed_precision.zero_points: auto)
        settings["zero_points"] = True
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
