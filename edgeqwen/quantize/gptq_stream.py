"""GPTQ one decoder layer at a time, streamed from the checkpoint: the build's `gptq` quantizer.

Only the embedding table, one decoder layer (in fp32) and the calibration activations are in memory at once, so a
3B checkpoint is quantized in a few GB. Each layer runs once on the calibration batch with hooks that accumulate
each distinct linear input's Hessian (q/k/v share one, gate/up share one), GPTQ quantizes its linears
(gptq_math.py), and the layer runs again with the quantized weights to give the next layer its input (the sequential
scheme of the reference implementation and of Olive's Gptq pass, which this matches to float rounding per matrix).
The output is Olive's checkpoint format (`quant_method: olive`), one safetensors file per layer, which
onnxruntime-genai's builder reads into MatMulNBits.

Usage (what `edgeqwen build` runs in a child process): python -m edgeqwen.quantize.gptq_stream CONFIG.json
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

# imported once by the warm zygote (edgeqwen/warm.py) before it forks this worker's jobs
PRELOAD = ("torch", "transformers", "safetensors")

CHUNK = 8  # calibration sequences per forward (bounds the MLP's activations on 3B shapes)


class Shards:
    """The checkpoint's tensors by name, read on demand from its safetensors files. Each read opens and closes its
    file: a file kept open keeps every page read so far mapped, which grows the process by the whole checkpoint."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.where: dict[str, Path] = {}
        for p in sorted(folder.glob("*.safetensors")):
            with safe_open(str(p), "pt") as f:
                self.where.update((name, p) for name in f.keys())

    def get(self, name: str):
        from safetensors import safe_open

        with safe_open(str(self.where[name]), "pt") as f:
            return f.get_tensor(name)

    def names(self, prefix: str = "") -> list[str]:
        return [n for n in self.where if n.startswith(prefix)]


def _skeleton(config, arch):
    """The model class with one decoder layer and uninitialized weights: it runs the embedding and gives the layers'
    keyword arguments (rotary position embeddings, the causal mask), and the decoder layer class."""
    import copy

    from transformers.modeling_utils import no_init_weights

    one = copy.deepcopy(config)
    one.num_hidden_layers = 1
    if hasattr(one, "layer_types") and one.layer_types:
        one.layer_types = one.layer_types[:1]
    with no_init_weights():
        cls = arch.transformers_class("torch")
        model = cls.from_config(one) if hasattr(cls, "from_config") else cls(one)  # an Auto class or a model class
    return model.eval()


def first_layer_input(model, layers, ids):
    """(hidden states, keyword arguments) the first decoder layer gets for `ids`: the model's own embedding, causal
    mask and rotary position embeddings, stopped there (the layers are run by the caller)."""
    import torch

    got: dict = {}

    class Stop(Exception):
        pass

    def hook(_, args, kwargs):
        got["h"] = args[0] if args else kwargs["hidden_states"]
        got["kw"] = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values", "use_cache")}
        raise Stop

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model(ids, use_cache=False)
    except Stop:
        pass
    finally:
        handle.remove()
    return got["h"], got["kw"]


def layer_inputs(model, embed, ids):
    """Per chunk of sequences: (hidden states, the layers' kwargs), from the embedding and the model's own mask and
    rotary code (a last, shorter chunk has its own mask)."""
    model.model.embed_tokens.weight.data = embed
    hs, kws = [], []
    for chunk in ids.split(CHUNK):
        h, kw = first_layer_input(model, model.model.layers, chunk)
        hs.append(h.clone())
        kws.append(kw)
    return hs, kws


class Hessians:
    """Forward pre-hooks on a layer's linears: Σ xxᵀ per distinct input (modules fed the same tensor share one)."""

    def __init__(self, layer, names: list[str]):
        self.h: dict[str, object] = {}
        self.key: dict[str, str] = {}
        self.count = 0
        self._seen: dict[int, tuple[object, str]] = {}  # id → (the input, kept alive so no id is reused; its owner)
        self.handles = [layer.get_submodule(n).register_forward_pre_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(_, args):
            x = args[0]
            if id(x) in self._seen:  # this forward already accumulated this very input for another module
                self.key[name] = self._seen[id(x)][1]
                return
            self._seen[id(x)] = (x, name)
            self.key[name] = name
            if name not in self.h:
                from .gptq_math import GramAccumulator

                self.h[name] = GramAccumulator(x.shape[-1])
            self.h[name].add(x)
        return hook

    def new_batch(self, rows: int) -> None:
        self._seen.clear()
        self.count += rows

    def of(self, name: str):
        return self.h[self.key[name]].value() * (2 / self.count)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def run_layer(layer, hs, kws, hessians: Hessians | None = None):
    import torch

    out = []
    with torch.no_grad():
        for h, kw in zip(hs, kws):
            if hessians is not None:
                hessians.new_batch(h.shape[0] * h.shape[1])
            y = layer(h, **kw)
            out.append(y[0] if isinstance(y, tuple) else y)
    return out


def quantize_layer(layer, prefix: str, hs, kws, formats: dict, damp: float) -> tuple[dict, list, dict]:
    """GPTQ on one layer's linears: (tensors to save, next inputs, record)."""
    import torch

    from .gptq_math import gptq, inverse_hessian_factor, pack_uint8

    names = list(formats)
    t0 = time.perf_counter()
    hessians = Hessians(layer, names)
    ref = run_layer(layer, hs, kws, hessians)
    hessians.close()
    t1 = time.perf_counter()
    saved, losses, factors = {}, {}, {}
    for name in names:
        fmt, mod = formats[name], layer.get_submodule(name)
        h = hessians.of(name)
        key = hessians.key[name]
        if key not in factors:  # one factor per distinct input: q/k/v share one, gate/up share one
            factors[key] = inverse_hessian_factor(h, damp)
        r = gptq(mod.weight.data, h, fmt, damp, hinv=factors[key])
        mod.weight.data = r.dequantize(fmt.group_size)
        saved[f"{prefix}{name}.qweight"] = pack_uint8(r.q, fmt.bits)
        saved[f"{prefix}{name}.scales"] = r.scales.contiguous()
        # symmetric too (every zero point the middle level): onnxruntime-genai 0.14.1's builder packs q/k/v by
        # concatenating their zero points; post-export drops zero points that are all the default (zero_points.py)
        saved[f"{prefix}{name}.qzeros"] = pack_uint8(r.zeros, fmt.bits)
        if mod.bias is not None:
            saved[f"{prefix}{name}.bias"] = mod.bias.data.float().clone()
        losses[name] = r.loss
    t2 = time.perf_counter()
    nxt = run_layer(layer, hs, kws)
    num = sum(float(((a - b) ** 2).sum()) for a, b in zip(nxt, ref))
    den = sum(float(((b - h) ** 2).sum()) for b, h in zip(ref, hs))
    record = {"loss": losses, "output_rel_err": num / max(den, 1e-30),
              "time_s": {"forward_hessians": round(t1 - t0, 2), "gptq": round(t2 - t1, 2),
                         "forward_quantized": round(time.perf_counter() - t2, 2)}}
    return saved, nxt, record


def _formats(cfg: dict, layer: int, names: list[str]) -> dict:
    from .gptq_math import GroupFormat

    out = {}
    for name in names:
        o = cfg["overrides"].get(f"model.layers.{layer}.{name}", {})
        out[name] = GroupFormat(o.get("bits", cfg["bits"]), o.get("group_size", cfg["group_size"]),
                                o.get("symmetric", cfg["symmetric"]))
    return out


def quantize(cfg: dict) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from ..architectures import get_architecture
    from .calibration import calibration_ids

    torch.set_num_threads(int(cfg["threads"]))
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    src, out = Path(cfg["model"]), Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(str(src), local_files_only=True)
    config._attn_implementation = "sdpa"
    arch = get_architecture(config.architectures[0])
    shards = Shards(src)
    ids = calibration_ids(str(src), cfg["calib_text"], cfg["samples"], cfg["seq_len"], spread=cfg.get("spread", True))
    skeleton = _skeleton(config, arch)
    layer_cls = type(skeleton.model.layers[0])
    hs, kws = layer_inputs(skeleton, shards.get("model.embed_tokens.weight").float(), ids)
    del skeleton
    names = list(arch.module_nodes["builder"])  # every quantizable linear of a decoder layer
    records = []
    n_layers = config.num_hidden_layers
    for i in range(n_layers):
        prefix = f"model.layers.{i}."
        layer = _load_layer(layer_cls, config, i, shards, prefix)
        saved, hs, rec = quantize_layer(layer, prefix, hs, kws, _formats(cfg, i, names), float(cfg["damp_percent"]))
        for n in shards.names(prefix):  # the layer's norms (and any other float tensor) as they are
            if not any(n.startswith(prefix + m + ".") for m in names):
                saved[n] = shards.get(n).float()
        save_file(saved, str(out / f"model-layer-{i:03d}.safetensors"))
        records.append(rec)
        done = time.perf_counter() - t0
        print(f"gptq: layer {i + 1}/{n_layers} quantized ({done:.0f}s, ETA {done / (i + 1) * (n_layers - i - 1):.0f}s)",
              flush=True)
    rest = {n: shards.get(n).float() for n in shards.where if not n.startswith("model.layers.")}
    save_file(rest, str(out / "model-rest.safetensors"))
    _write_config(src, out, cfg)
    return {"layers": records, "wall_s": round(time.perf_counter() - t0, 2), "tokens": int(ids.numel())}


def _load_layer(layer_cls, config, i: int, shards: Shards, prefix: str):
    from transformers.modeling_utils import no_init_weights

    with no_init_weights():
        layer = layer_cls(config, layer_idx=i)
    state = {n[len(prefix):]: shards.get(n).float() for n in shards.names(prefix)}
    missing, unexpected = layer.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("rotary_emb.inv_freq")]:
        raise RuntimeError(f"layer {i}: checkpoint tensors do not match {layer_cls.__name__} "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return layer.float().eval()


def _write_config(src: Path, out: Path, cfg: dict) -> None:
    config = json.loads((src / "config.json").read_text())
    config["dtype"] = "float32"
    config.pop("torch_dtype", None)
    config["quantization_config"] = {
        "quant_method": "olive", "bits": cfg["bits"], "group_size": cfg["group_size"], "symmetric": cfg["symmetric"],
        "lm_head": False, "embeds": False, "modules_to_not_convert": None, "overrides": cfg["overrides"] or None,
        "tie_word_embeddings": False}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for p in src.iterdir():  # tokenizer, generation config, chat template
        if p.is_file() and p.suffix != ".safetensors" and p.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(p, out / p.name)


def main(argv: list[str]) -> int:
    cfg = json.loads(Path(argv[0]).read_text())
    record = quantize(cfg)
    Path(cfg["output_dir"], "gptq_record.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1:]))


def gptq_settings(req, samples: int, seq_len: int, damp_percent: float) -> dict:
    """Everything that shapes the result besides the weights and the text: the formats (per-module overrides in
    Olive's vocabulary), the calibration budget, the dampening and this code's own hash."""
    import hashlib

    from .olive_gptq import module_overrides

    here = Path(__file__).parent
    code = hashlib.sha256(b"".join((here / f).read_bytes() for f in ("gptq_math.py", "gptq_stream.py"))).hexdigest()[:12]
    return {"bits": req.bits, "group_size": req.block_size, "symmetric": req.symmetric,
            "overrides": module_overrides(req), "samples": samples, "seq_len": seq_len, "damp_percent": damp_percent,
            "spread": False,  # consecutive sequences from the text's start, as Olive's pass read them (on the trained
            # tiny models: KLD 0.0134 / 0.0186 against 0.0133 / 0.0187 spread, PPL ratio 1.004 / 1.012 against 1.009 / 1.025)
            "code": code}


def gptq_cache_key(model: Path, calib_text: Path, settings: dict) -> str:
    from .result_cache import cache_key

    return cache_key(model, calib_text, settings, "torch")


def quantize_checkpoint(job) -> tuple[Path, dict, list[tuple[str, str]]]:
    """The build's GPTQ step (a CheckpointRequest): check the calibration text, run this module in a child process
    (cached per weights × calibration text × settings × code × threads), return the quantized checkpoint folder."""
    from ..child import calibrated_threads_env, calibration_threads, run_child
    from ..log import stage_log
    from .calibration import prepare_calibration
    from .result_cache import cached

    work = job.work
    calib = prepare_calibration(job.calibration_text, job.model, work / "calibration.jsonl", job.samples, job.seq_len)
    stage_log(f"        calibration: {calib.samples} × {calib.seq_len} tokens from {calib.source} ({calib.tokens} tokens)")
    settings = gptq_settings(job.quant, calib.samples, calib.seq_len, job.damp_percent)
    overrides = settings["overrides"]
    key = gptq_cache_key(job.model, Path(calib.source), settings)

    def run() -> tuple[Path, float]:
        cfg = {**settings, "model": str(job.model), "calib_text": calib.source, "threads": calibration_threads(),
               "output_dir": str(work / "gptq")}
        (work / "gptq.json").write_text(json.dumps(cfg))
        child = run_child("edgeqwen.quantize.gptq_stream", work / "gptq.json", work / "gptq.log", progress=("gptq:",),
                          what="gptq", hint="try quantization.algorithm: rtn, or another calibration file",
                          env=calibrated_threads_env(), clean=lambda t: t.removeprefix("gptq: "))
        return work / "gptq", child.wall_s

    model_dir, wall = cached("gptq", key, "GPTQ", run)
    decisions = [("gptq.override", f"gptq {name}: override {o}") for name, o in overrides.items()]
    decisions.append(("gptq", f"gptq (edgeqwen, layer-streamed, damp {job.damp_percent}) on every decoder-layer "
                      f"linear: {calib.samples} calibration sequences × {calib.seq_len} tokens from "
                      f"{Path(calib.source).name}; lm_head and embeddings quantized by RTN in the builder"))
    record = json.loads((model_dir / "gptq_record.json").read_text()) if (model_dir / "gptq_record.json").exists() else {}
    info = {**calib.as_dict(), "wall_s": round(wall, 2), "threads": calibration_threads(), "olive_overrides": overrides,
            "cache_key": key, "implementation": "edgeqwen gptq_stream",
            "output_rel_err": [round(r["output_rel_err"], 6) for r in record.get("layers", [])]}
    return model_dir, info, decisions
