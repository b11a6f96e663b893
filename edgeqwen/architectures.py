"""The architecture registry: what edgeqwen knows about each model family it builds.

One `ArchitectureSpec` per Hugging Face class holds everything a family needs, and nothing else in the package
branches on architecture names: its family name, the exporters' node name for every quantized linear (so recipe
overrides are checked against the model before any work, and GPTQ's per-module settings map onto the same nodes),
the transformers classes of its config, of the PyTorch reference and (for image models) of the vision tower and
image processor, onnxruntime-genai's model type, the prompt format, chat template and thinking tokens, and how to
make a tiny fixture of it. Checkpoint inspection, the planner, GPTQ's override mapping, evaluation, sensitivity,
bench, packaging (Foundry Local's prompt template), the tiny-model factory and the CLI read it. Adding a family is
one `register(...)` here plus its test. Anything not mapped raises, naming what is known.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

# The decoder-layer linears of Qwen2/Qwen3 (HF module path inside `model.layers.N`) and the node each
# exporter gives them. onnxruntime-genai's builder fuses q/k/v into one MatMul.
_QWEN_BUILDER_NODES = {
    "self_attn.q_proj": "attn/qkv_proj", "self_attn.k_proj": "attn/qkv_proj", "self_attn.v_proj": "attn/qkv_proj",
    "self_attn.o_proj": "attn/o_proj", "mlp.gate_proj": "mlp/gate_proj", "mlp.up_proj": "mlp/up_proj",
    "mlp.down_proj": "mlp/down_proj",
}
_QWEN_PORTABLE_NODES = {m: m.replace(".", "/") for m in _QWEN_BUILDER_NODES}  # optimum keeps the module path
HEAD_NODE = "/lm_head/MatMul"


@dataclass(frozen=True)
class PromptFormat:
    """Foundry Local's per-role prompt pieces ({Content} is the slot); the full prompt comes from the chat template."""

    system: str
    user: str
    assistant: str = "{Content}"


CHATML = PromptFormat(system="<|im_start|>system\n{Content}<|im_end|>\n", user="<|im_start|>user\n{Content}<|im_end|>\n")


@dataclass(frozen=True)
class ArchitectureSpec:
    hf_class: str
    family: str  # short name: tiny fixtures, `edgeqwen tiny --family`
    module_nodes: dict[str, dict[str, str]]  # exporter → {HF module in a layer → node path in the layer}
    prompt_format: PromptFormat = CHATML
    think_tokens: tuple[str, str] | None = None  # (open, close) when the family reasons in-line
    qkv_bias: bool = False
    qk_norm: bool = False
    tied_by_default: bool = True  # tiny fixtures of this family
    config_class: str = ""  # transformers config class for tiny fixtures, e.g. "Qwen2Config"
    explicit_head_dim: bool = False  # the config carries head_dim (Qwen3) instead of hidden / heads
    vision: bool = False  # an image encoder before the decoder (Qwen2.5-VL): vision.onnx + embedding.onnx
    genai_type: str = ""  # onnxruntime-genai's `model.type` in genai_config.json for this class
    torch_class: str = "AutoModelForCausalLM"  # transformers class of the PyTorch fp32 reference
    chat_template: str = "qwen2.5.jinja"  # the family's published template (edgeqwen/data/templates/), tiny fixtures
    extra_tokens: tuple[str, ...] = ()  # special tokens a tiny fixture's tokenizer carries beyond Qwen's chat ones
    vision_tower: str = ""  # "module:Class" of the image encoder (vision exporter); vision families only
    image_processor: str = ""  # transformers class of the image preprocessing reference; vision families only
    tiny: dict = field(default_factory=dict)  # TinySpec fields of this family's test fixture (tiny.fixture_spec)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def transformers_class(self, which: str = "torch"):
        """The transformers class named by `torch_class` ("torch"), `config_class` ("config"), `image_processor`
        ("image") or `vision_tower` ("vision")."""
        name = {"torch": self.torch_class, "config": self.config_class, "image": self.image_processor,
                "vision": self.vision_tower}[which]
        if not name:
            raise KeyError(f"architecture {self.hf_class} has no {which} class")
        module, _, attr = name.rpartition(":")
        return getattr(importlib.import_module(module or "transformers"), attr)

    def load_reference(self, path: str | Path, dtype: str = "float32"):
        """The checkpoint as a PyTorch model in eval mode (offline: local files only); dtype "auto" keeps the
        checkpoint's own (bf16 for Qwen's published weights: half the memory of fp32)."""
        import torch

        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        return self.transformers_class("torch").from_pretrained(str(path), dtype=torch_dtype,
                                                                 local_files_only=True).eval()

    def layer_node(self, exporter: str, layer: int, module: str) -> str:
        return f"/model/layers.{layer}/{self.module_nodes[exporter][module]}/MatMul"

    def matmul_nodes(self, exporter: str, num_layers: int) -> list[str]:
        """Every quantizable MatMul the exporter writes for a model of `num_layers` layers (lm_head last)."""
        if exporter not in self.module_nodes:
            raise KeyError(f"architecture {self.hf_class} has no node map for exporter {exporter!r}; "
                           f"known: {', '.join(self.module_nodes)}")
        per_layer = list(dict.fromkeys(self.module_nodes[exporter].values()))
        return [f"/model/layers.{i}/{n}/MatMul" for i in range(num_layers) for n in per_layer] + [HEAD_NODE]

    def linear_shapes(self, config: dict, exporter: str) -> dict[str, tuple[int, int]]:
        """(K, N) of every quantizable MatMul the exporter writes, from the checkpoint's config alone."""
        h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
        heads = config["num_attention_heads"]
        kvh = config.get("num_key_value_heads") or heads
        hd = config.get("head_dim") or h // heads
        module_kn = {"self_attn.q_proj": (h, heads * hd), "self_attn.k_proj": (h, kvh * hd),
                     "self_attn.v_proj": (h, kvh * hd), "self_attn.o_proj": (heads * hd, h),
                     "mlp.gate_proj": (h, inter), "mlp.up_proj": (h, inter), "mlp.down_proj": (inter, h)}
        per_node: dict[str, tuple[int, int]] = {}
        for module, node in self.module_nodes[exporter].items():
            k, n = module_kn[module]
            per_node[node] = (k, per_node[node][1] + n) if node in per_node else (k, n)  # fused q/k/v add up
        shapes = {f"/model/layers.{i}/{node}/MatMul": kn for i in range(config["num_hidden_layers"])
                  for node, kn in per_node.items()}
        shapes[HEAD_NODE] = (h, vocab)
        return shapes

    def module_for_node(self, exporter: str, node_in_layer: str) -> list[str]:
        """HF modules that become one node (q/k/v → qkv_proj in the builder)."""
        mods = [m for m, n in self.module_nodes[exporter].items() if n == node_in_layer]
        if not mods:
            raise KeyError(f"node {node_in_layer!r} is not a decoder-layer linear of {self.hf_class} "
                           f"(known: {', '.join(dict.fromkeys(self.module_nodes[exporter].values()))})")
        return mods


_REGISTRY: dict[str, ArchitectureSpec] = {}


def register(spec: ArchitectureSpec) -> ArchitectureSpec:
    if spec.hf_class in _REGISTRY or any(s.family == spec.family for s in _REGISTRY.values()):
        raise ValueError(f"architecture {spec.hf_class} / family {spec.family} is registered twice")
    _REGISTRY[spec.hf_class] = spec
    return spec


def architectures() -> list[ArchitectureSpec]:
    return list(_REGISTRY.values())


def get_architecture(hf_class: str) -> ArchitectureSpec:
    try:
        return _REGISTRY[hf_class]
    except KeyError:
        raise KeyError(f"unsupported architecture {hf_class!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def by_family(family: str) -> ArchitectureSpec:
    for spec in _REGISTRY.values():
        if spec.family == family:
            return spec
    raise KeyError(f"unknown family {family!r}; known: {', '.join(s.family for s in _REGISTRY.values())}")


def families() -> list[str]:
    return [s.family for s in _REGISTRY.values()]


DEFAULT_ARCHITECTURE = "Qwen2ForCausalLM"  # a config without `architectures` (config-only shapes) reads as Qwen2


def architecture_of(config: dict) -> ArchitectureSpec:
    """The registered spec for a checkpoint's config.json contents (its first registered `architectures` entry)."""
    archs = config.get("architectures") or [DEFAULT_ARCHITECTURE]
    known = next((a for a in archs if a in _REGISTRY), None)
    return get_architecture(known or archs[0])


def load_reference(path: str | Path, dtype: str = "float32"):
    """The PyTorch model of a checkpoint folder, through its architecture's registered torch class."""
    config = json.loads((Path(path) / "config.json").read_text())
    return architecture_of(config).load_reference(path, dtype)


_NODES = {"builder": _QWEN_BUILDER_NODES, "portable": _QWEN_PORTABLE_NODES}
register(ArchitectureSpec("Qwen2ForCausalLM", "qwen2", _NODES, qkv_bias=True, tied_by_default=True, config_class="Qwen2Config",
                          genai_type="qwen2", notes=("Qwen2 / Qwen2.5: QKV bias; 0.5B-3B tie embeddings to lm_head",)))
# onnxruntime-genai's Qwen2.5-VL decoder applies M-RoPE to q and k apart, so it keeps q/k/v as three MatMuls
_VL_BUILDER_NODES = {**_QWEN_BUILDER_NODES, "self_attn.q_proj": "attn/q_proj", "self_attn.k_proj": "attn/k_proj",
                     "self_attn.v_proj": "attn/v_proj"}
register(ArchitectureSpec("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl",
                          {"builder": _VL_BUILDER_NODES, "portable": _QWEN_PORTABLE_NODES}, qkv_bias=True,
                          tied_by_default=True, config_class="Qwen2_5_VLConfig", vision=True,
                          genai_type="qwen2_5_vl", chat_template="qwen2.5-vl.jinja",
                          # not an AutoModelForCausalLM class in transformers 4.57
                          torch_class="Qwen2_5_VLForConditionalGeneration",
                          extra_tokens=("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
                          vision_tower="transformers.models.qwen2_5_vl.modeling_qwen2_5_vl:"
                                       "Qwen2_5_VisionTransformerPretrainedModel",
                          image_processor="Qwen2VLImageProcessor",
                          notes=("Qwen2.5-VL: a Qwen2 decoder with 3-D (M-RoPE) positions after a windowed ViT; "
                                 "3B ties embeddings",)))
register(ArchitectureSpec("Qwen3ForCausalLM", "qwen3", _NODES, think_tokens=("<think>", "</think>"), qk_norm=True,
                          tied_by_default=False, config_class="Qwen3Config", explicit_head_dim=True,
                          genai_type="qwen3", chat_template="qwen3.jinja", tiny={"head_dim": 32},
                          notes=("Qwen3: q/k RMSNorm, no QKV bias, <think> reasoning; 0.6B-4B tie embeddings",)))

DEFAULT_FAMILY = get_architecture(DEFAULT_ARCHITECTURE).family  # `edgeqwen tiny` and TinySpec without a family
