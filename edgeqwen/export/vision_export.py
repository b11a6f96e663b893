"""Qwen2.5-VL's vision encoder and its embedding merge as two ONNX graphs (the text decoder is the builder's).

onnxruntime-genai's builder exports only the decoder (`exclude_embeds`: it takes `inputs_embeds` and 3-D position
ids). The encoder's grid-dependent parts — rotary angles per patch, the window permutation, which patches attend to
which (`cu_seqlens`) — are data-dependent loops in transformers, so the graph here takes them as inputs (computed by
`runtime/vision.encoder_inputs` in numpy) and keeps only tensor math: patch embedding (the Conv3d as one MatMul), the
blocks with attention masked to each patch's segment, the patch merger, the inverse permutation. One graph then
serves every image size and any number of images.

    vision.onnx     pixel_values [N, C·T·P·P], rotary_cos/sin [N, D], window_index/reverse_index [N/4],
                    full_segments/window_segments [N]            → image_features [N/4, hidden]
    embedding.onnx  input_ids [B, S], image_features [M, hidden] → inputs_embeds [B, S, hidden]
                    (each image placeholder token's row replaced, in order, by one image feature row)
"""

from __future__ import annotations

from pathlib import Path

VISION_INPUTS = ("pixel_values", "rotary_cos", "rotary_sin", "window_index", "reverse_index", "full_segments",
                 "window_segments")


def _lin(mod, x):
    """nn.Linear as MatMul (+ Add): a 2-D Linear exports as Gemm, which the MatMul quantizers do not take."""
    import torch

    y = torch.matmul(x, mod.weight.t())
    return y if mod.bias is None else y + mod.bias


def _mlp(mlp, x):
    import torch

    return _lin(mlp.down_proj, mlp.act_fn(_lin(mlp.gate_proj, x)) * _lin(mlp.up_proj, x))


def vision_wrapper(visual):
    import torch

    class VisionEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.v = visual
            self.fullatt = set(visual.fullatt_block_indexes)
            self.unit = visual.spatial_merge_unit

        def _attention(self, blk, x, cos, sin, bias):
            attn = blk.attn
            n = x.shape[0]
            q, k, v = _lin(attn.qkv, x).reshape(n, 3, attn.num_heads, -1).permute(1, 2, 0, 3).unbind(0)  # [H, N, D]
            c, s = cos.unsqueeze(0), sin.unsqueeze(0)

            def rot(t):
                half = t.shape[-1] // 2
                return t * c + torch.cat((-t[..., half:], t[..., :half]), dim=-1) * s

            q, k = rot(q), rot(k)
            w = torch.matmul(q, k.transpose(1, 2)) * attn.scaling + bias
            out = torch.matmul(torch.softmax(w, dim=-1), v)  # [H, N, D]
            return _lin(attn.proj, out.transpose(0, 1).reshape(n, -1))

        def forward(self, pixel_values, rotary_cos, rotary_sin, window_index, reverse_index, full_segments,
                    window_segments):
            v = self.v
            pe = v.patch_embed
            weight = pe.proj.weight.reshape(pe.embed_dim, -1)  # Conv3d with kernel = stride = one patch: a MatMul
            x = torch.matmul(pixel_values, weight.t())
            n = x.shape[0]
            x = x.reshape(-1, self.unit, x.shape[-1])[window_index].reshape(n, -1)
            neg = torch.finfo(torch.float32).min
            full_bias = torch.where(full_segments[:, None] == full_segments[None, :], 0.0, neg)
            window_bias = torch.where(window_segments[:, None] == window_segments[None, :], 0.0, neg)
            for i, blk in enumerate(v.blocks):
                bias = full_bias if i in self.fullatt else window_bias
                x = x + self._attention(blk, blk.norm1(x), rotary_cos, rotary_sin, bias)
                x = x + _mlp(blk.mlp, blk.norm2(x))
            mg = v.merger
            x = mg.ln_q(x).reshape(-1, mg.hidden_size)
            x = _lin(mg.mlp[2], mg.mlp[1](_lin(mg.mlp[0], x)))
            return x[reverse_index]

    return VisionEncoder().eval()


def embedding_wrapper(embed_tokens, image_token_id: int, int8: bool = False):
    """`int8`: the table stored as int8 with one float scale per row (symmetric; Gather → Cast → Mul), a quarter
    of the float32 bytes (Qwen2.5-VL-3B: 311 MB instead of 1.24 GB)."""
    import torch

    weight = embed_tokens.weight.detach().float()
    scale = (weight.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-12)
    q = torch.round(weight / scale).clamp(-127, 127).to(torch.int8)

    class EmbeddingMerge(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = embed_tokens
            if int8:
                self.register_buffer("table_q", q)
                self.register_buffer("table_scale", scale)

        def forward(self, input_ids, image_features):
            if int8:
                emb = self.table_q[input_ids].to(torch.float32) * self.table_scale[input_ids]
            else:
                emb = self.table(input_ids)
            flat = emb.reshape(-1, emb.shape[-1])
            where = torch.nonzero(input_ids.reshape(-1) == image_token_id).reshape(-1)
            flat = flat.index_put((where,), image_features.to(flat.dtype))
            return flat.reshape(emb.shape)

    return EmbeddingMerge().eval()


def load_parts(checkpoint: Path):
    """The encoder and the embedding table alone, from the checkpoint's safetensors (the decoder's weights are never
    read: Qwen2.5-VL-3B in fp32 is 15 GB, its encoder 2.7 GB). Returns (config, visual, embed_tokens)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    from ..architectures import get_architecture

    config = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
    text = config.get_text_config()
    tower = get_architecture(config.architectures[0]).transformers_class("vision")
    visual = tower._from_config(config.vision_config, dtype=torch.float32).eval()
    embed = torch.nn.Embedding(text.vocab_size, text.hidden_size)
    want = {k: v for k, v in visual.state_dict().items()}
    vis_state, table = {}, None
    for f in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                # hub checkpoints: visual.*, model.embed_tokens; transformers >= 4.52 saves model.visual.*,
                # model.language_model.embed_tokens
                if key.startswith(("visual.", "model.visual.")):
                    vis_state[key.split("visual.", 1)[1]] = st.get_tensor(key).float()
                elif key.endswith("embed_tokens.weight"):
                    table = st.get_tensor(key).float()
    missing = sorted(set(want) - set(vis_state))
    if missing or table is None:
        raise ValueError(f"{checkpoint}: not a Qwen2.5-VL checkpoint with its vision tower "
                         f"(missing {', '.join(missing[:3]) or 'embed_tokens.weight'})")
    visual.load_state_dict(vis_state, strict=False)
    embed.weight.data.copy_(table)
    return config, visual, embed


def save_self_contained(model_path: Path, out: Path) -> None:
    """A scratch export into the artifact as graph + one weights file (.onnx.data), never pointing back into the
    scratch folder (torch.onnx writes one file per tensor past 2 GB). Weights in a separate file are memory-mapped by
    onnxruntime instead of parsed onto the heap: the 3B's int8 encoder loads at 976 MB resident instead of 1538 MB."""
    import onnx_ir as ir

    ir.save(ir.load(model_path), out, external_data=out.name + ".data")


def export_vision(checkpoint: Path, out_dir: Path, opset: int = 17, vision_bits: int | None = None,
                  int8_table: bool = False, max_pixels: int | None = None, block: int = 32) -> dict:
    """vision.onnx + embedding.onnx from a Qwen2.5-VL checkpoint, and the VisionConfig the runner reads.
    `vision_bits` 8 or 4: the encoder's linears (not the patch embedding) as MatMulNBits blocks of `block`;
    `max_pixels`: cap on the preprocessor's image area (the encoder's attention is O(patches²))."""
    import dataclasses
    import json
    import shutil
    import tempfile

    import torch

    from ..runtime.vision import encoder_inputs

    config, visual, embed = load_parts(Path(checkpoint))
    pre_path = Path(checkpoint) / "preprocessor_config.json"
    cfg = vision_config_for(config, json.loads(pre_path.read_text()) if pre_path.exists() else None)
    if max_pixels is not None and cfg.max_pixels > max_pixels:
        cfg = dataclasses.replace(cfg, max_pixels=max_pixels, min_pixels=min(cfg.min_pixels, max_pixels))
    grid = [1, 8, 8]  # any example grid: no shape is baked in
    n = grid[1] * grid[2]
    feeds = encoder_inputs([grid], cfg)
    example = (torch.zeros(n, visual.patch_embed.proj.weight[0].numel()),
               *(torch.from_numpy(feeds[k]) for k in VISION_INPUTS[1:]))
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".vision-export-", dir=out_dir.parent))
    dyn = {"pixel_values": {0: "patches"}, "rotary_cos": {0: "patches"}, "rotary_sin": {0: "patches"},
           "window_index": {0: "merged"}, "reverse_index": {0: "merged"}, "full_segments": {0: "patches"},
           "window_segments": {0: "patches"}, "image_features": {0: "merged"}}
    try:
        with torch.no_grad():
            torch.onnx.export(vision_wrapper(visual), example, str(scratch / "vision.onnx"),
                              input_names=list(VISION_INPUTS), output_names=["image_features"], dynamic_axes=dyn,
                              opset_version=opset, dynamo=False)
            ids = torch.tensor([[1, cfg.image_token_id, cfg.image_token_id, 2]])
            feats = torch.zeros(2, embed.weight.shape[1])
            torch.onnx.export(embedding_wrapper(embed, cfg.image_token_id, int8_table), (ids, feats),
                              str(scratch / "embedding.onnx"),
                              input_names=["input_ids", "image_features"], output_names=["inputs_embeds"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                            "image_features": {0: "images_tokens"},
                                            "inputs_embeds": {0: "batch", 1: "sequence"}},
                              opset_version=opset, dynamo=False)
        notes = [f"vision encoder exported ({len(visual.blocks)} blocks, grid inputs computed by the runner); "
                 f"images up to {cfg.max_pixels} pixels ({cfg.max_pixels // (cfg.patch_size * cfg.merge_size) ** 2} "
                 "image tokens)"]
        del visual, embed
        exported = scratch / "vision.onnx"
        if vision_bits:
            notes += quantize_vision(exported, vision_bits, block, out=scratch / "vision-q.onnx")
            exported = scratch / "vision-q.onnx"
        save_self_contained(exported, out_dir / "vision.onnx")
        save_self_contained(scratch / "embedding.onnx", out_dir / "embedding.onnx")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if int8_table:
        notes.append("embedding table int8 with a per-row scale in embedding.onnx (the decoder takes inputs_embeds)")
    (out_dir / "vision_config.json").write_text(json.dumps(cfg.to_json(), indent=2), encoding="utf-8")
    return {"vision": "vision.onnx", "embedding": "embedding.onnx", "config": "vision_config.json", "notes": notes}


def quantize_vision(path: Path, bits: int, block: int, out: Path | None = None) -> list[str]:
    """The encoder's constant-weight MatMuls (all but the patch embedding) → MatMulNBits, symmetric RTN."""
    import onnx_ir as ir

    from ..quantize.graph_quant import quantize_in_place
    from ..quantize.request import QuantRequest

    every = QuantRequest(architecture="vision encoder", bits=bits, block_size=block, symmetric=True, accuracy_level=4)

    model = ir.load(path)
    patch = {n.name for n in model.graph if n.op_type == "MatMul" and n.inputs[0] is not None
             and n.inputs[0].name == "pixel_values"}
    notes = quantize_in_place(model, every, exclude=patch, shared_lm_head=False)
    ir.save(model, out or path)
    return [f"vision encoder int{bits} (block {block}, symmetric RTN; the patch embedding float): " + "; ".join(notes)]


def vision_config_for(config, preprocessor: dict | None = None):
    """VisionConfig from a Qwen2.5-VL config (and its preprocessor_config.json when the checkpoint has one)."""
    from ..runtime.vision import VisionConfig

    v = config.vision_config
    pre = preprocessor or {}
    size = pre.get("size") or {}
    extra = {k: tuple(pre[k]) for k in ("image_mean", "image_std") if k in pre}
    for key, alias in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        if key in pre or alias in size:
            extra[key] = int(pre.get(key) or size[alias])
    return VisionConfig(patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
                        window_size=v.window_size, head_dim=v.hidden_size // v.num_heads,
                        fullatt_blocks=tuple(v.fullatt_block_indexes), image_token_id=config.image_token_id,
                        vision_start_token_id=config.vision_start_token_id,
                        tokens_per_second=float(getattr(v, "tokens_per_second", 2.0)), **extra)


def reference_image_processor(cfg, architecture: str | None = None):
    """transformers' image processor of the architecture (the registered vision family's when not given) with an
    artifact's settings (`runtime.vision.VisionConfig`): the reference the runner's numpy preprocessing is held to
    (evaluation, bench)."""
    from ..architectures import architectures, get_architecture

    arch = get_architecture(architecture) if architecture else next(a for a in architectures() if a.vision)
    return arch.transformers_class("image")(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, patch_size=cfg.patch_size,
                                 merge_size=cfg.merge_size, temporal_patch_size=cfg.temporal_patch_size,
                                 image_mean=list(cfg.image_mean), image_std=list(cfg.image_std))
