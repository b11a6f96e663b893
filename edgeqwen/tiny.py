"""Small Qwen-architecture checkpoints made locally (no hub): tokenizer, config, weights.

Qwen2 flavour: QKV bias, tied embeddings (like Qwen2.5-0.5B). Qwen3 flavour: q/k RMSNorm, no QKV
bias, untied embeddings (so both layouts are exercised; Qwen3-0.6B/1.7B/4B themselves tie them, `tied=True`).
The tokenizer is a byte-level BPE trained on text that
ships with Python (``pydoc_data.topics``), with Qwen's special tokens and chat templates, saved
in the same files a real Qwen checkpoint has, so every downstream tool reads it the same way.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .architectures import DEFAULT_FAMILY, architectures, by_family
from .errors import EdgeQwenError

_TEMPLATES = Path(__file__).resolve().parent / "data" / "templates"


def chat_template(family: str) -> str:
    """The family's own published chat template (Qwen2.5-Instruct's, Qwen3's, Qwen2.5-VL's; tool calling and thinking
    included), named by its architecture entry, so fixtures render prompts, tool definitions, tool calls and tool
    results exactly as the real models do."""
    return (_TEMPLATES / by_family(family).chat_template).read_text(encoding="utf-8")


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# Qwen2.5-Coder's fill-in-the-middle and repository tokens (`TinySpec(fim=True)` fixtures carry them too)
FIM_TOKENS = ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny checkpoint. Defaults give a ~1 M-parameter model that trains in minutes."""

    family: str = DEFAULT_FAMILY  # a registered family (edgeqwen.architectures.families())
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    seed: int = 0
    tied: bool | None = None  # tie_word_embeddings; None: the family's default (qwen2 tied, qwen3 untied)
    fim: bool = False  # Qwen2.5-Coder's fill-in-the-middle tokens in the tokenizer

    def __post_init__(self):
        """Shapes a checkpoint can be made of and run with, each error naming the `edgeqwen tiny` flag."""
        try:
            arch = by_family(self.family)
        except KeyError as exc:
            raise EdgeQwenError(exc.args[0], where="--family") from None

        def bad(field: str, what: str, hint: str):
            raise EdgeQwenError(what, where=f"{_FLAGS[field]} ({field})" if field in _FLAGS else field, hint=hint)

        for field, example in (("num_hidden_layers", 4), ("hidden_size", 128), ("intermediate_size", 352),
                               ("num_attention_heads", 4), ("num_key_value_heads", 2),
                               ("max_position_embeddings", 2048)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(field, f"{_FLAGS.get(field, field)} must be a whole number >= 1, got {value!r}",
                    f"e.g. {_FLAGS[field]} {example}" if field in _FLAGS else f"e.g. {field}={example}")
        hidden, heads, kv = self.hidden_size, self.num_attention_heads, self.num_key_value_heads
        specials = len(SPECIAL_TOKENS) + (len(FIM_TOKENS) if self.fim else 0) + len(arch.extra_tokens)
        vocab = self.vocab_size
        if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 256 + specials:
            bad("vocab_size", f"vocab_size must be at least {256 + specials} (the tokenizer's 256 byte tokens and "
                f"{specials} special tokens), got {self.vocab_size!r}", "e.g. vocab_size=1024")
        if self.head_dim is not None and not arch.explicit_head_dim:
            carry = ", ".join(a.family for a in architectures() if a.explicit_head_dim)
            bad("head_dim", f"head_dim is set but a {self.family} config has none (its head size is hidden_size / "
                "heads)", f"leave head_dim out, or use a family whose config carries it ({carry})")
        if self.head_dim is None and hidden % heads:
            ok = [h for h in range(1, hidden + 1) if hidden % h == 0 and (hidden // h) % 2 == 0]
            bad("num_attention_heads", f"--heads {heads} does not divide --hidden-size {hidden}",
                f"--heads must divide --hidden-size into an even head size: one of {', '.join(map(str, ok[:12]))}")
        head_dim = self.head_dim if self.head_dim is not None else hidden // heads
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
            bad("head_dim" if self.head_dim is not None else "num_attention_heads",
                f"the head size ({'head_dim' if self.head_dim is not None else '--hidden-size / --heads'}) is "
                f"{head_dim!r}; rotary position embeddings need an even head size", "e.g. --hidden-size 128 --heads 4")
        if arch.vision and head_dim < 8:
            bad("num_attention_heads", f"the head size (--hidden-size / --heads) is {head_dim}; a {self.family} "
                "model's M-RoPE needs at least 8", "e.g. --hidden-size 128 --heads 4")
        if heads % kv:
            ok = [k for k in range(1, heads + 1) if heads % k == 0]
            bad("num_key_value_heads", f"--kv-heads {kv} does not divide --heads {heads} (each key/value head serves "
                "a whole group of query heads)", f"--kv-heads must be one of {', '.join(map(str, ok))}")


_FLAGS = {"num_hidden_layers": "--layers", "hidden_size": "--hidden-size", "intermediate_size": "--intermediate-size",
          "num_attention_heads": "--heads", "num_key_value_heads": "--kv-heads", "family": "--family"}


def fixture_spec(family: str, **overrides) -> TinySpec:
    """The family's test fixture shape (its architecture entry's `tiny` fields), with `overrides` on top."""
    return TinySpec(family=family, **{**by_family(family).tiny, **overrides})


def corpus_text(split: str = "train") -> str:
    """English technical prose that ships with CPython (the `help()` topics, ~460 kB).

    ``train`` is every topic but each tenth one; ``eval`` is the held-out tenth (~45 kB).
    """
    import pydoc_data.topics as topics

    keys = sorted(topics.topics)
    if split == "train":
        keys = [k for i, k in enumerate(keys) if i % 10 != 9]
    elif split == "eval":
        keys = [k for i, k in enumerate(keys) if i % 10 == 9]
    elif split != "all":
        raise ValueError(f"unknown split {split!r}")
    return "\n\n".join(topics.topics[k] for k in keys)


def train_tokenizer(vocab_size: int, specials: list[str] = SPECIAL_TOKENS):
    """Byte-level BPE with Qwen's pre-tokenizer regex and special tokens (deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = corpus_text()
    tok.train_from_iterator([text[i : i + 4096] for i in range(0, len(text), 4096)], trainer)
    tok.add_special_tokens(specials)
    return tok


def save_tokenizer(out: Path, family: str, vocab_size: int, fim: bool = False) -> dict[str, int]:
    from transformers import PreTrainedTokenizerFast

    extra = list(by_family(family).extra_tokens)  # e.g. Qwen2.5-VL's image and video tokens
    raw = train_tokenizer(vocab_size, SPECIAL_TOKENS + (FIM_TOKENS if fim else []) + extra)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=chat_template(family),
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg["split_special_tokens"] = False
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    ids = {t: raw.token_to_id(t) for t in SPECIAL_TOKENS + extra}
    if len(raw.get_vocab()) > vocab_size:
        raise RuntimeError(f"tokenizer has {len(raw.get_vocab())} tokens, more than vocab_size={vocab_size}")
    return ids


def make_config(spec: TinySpec, ids: dict[str, int]):
    import transformers

    common = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    arch = by_family(spec.family)  # raises for an unknown family, naming the known ones
    extra = {}
    if arch.explicit_head_dim:
        extra = dict(head_dim=spec.head_dim or spec.hidden_size // spec.num_attention_heads, attention_bias=arch.qkv_bias)
    config_class = getattr(transformers, arch.config_class)
    if arch.vision:  # Qwen2.5-VL: the decoder's settings nested, M-RoPE sections summing to head_dim / 2
        half = (spec.head_dim or spec.hidden_size // spec.num_attention_heads) // 2
        sections = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # 16/24/24 of 64, as Qwen2.5-VL
        tied = arch.tied_by_default if spec.tied is None else spec.tied
        text = dict(common, rope_scaling={"type": "mrope", "mrope_section": sections}, tie_word_embeddings=tied)
        vision = dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=spec.hidden_size,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1, 3])
        return config_class(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=tied,
                            architectures=[arch.hf_class])
    return config_class(tie_word_embeddings=arch.tied_by_default if spec.tied is None else spec.tied,
                        architectures=[arch.hf_class], **extra, **common)


def create_tiny_qwen(out: str | Path, spec: TinySpec = TinySpec(), state_dict=None, dtype: str = "float32",
                     force: bool = False) -> Path:
    """Write a complete HF checkpoint folder (config, safetensors, tokenizer, generation config).

    dtype "bfloat16" mirrors how Qwen checkpoints are published (weights initialised directly in bf16).
    `out` must be new or empty unless `force` (`edgeqwen tiny --force`): then the checkpoint's files in it are replaced
    and the user's other files are kept. A failed write removes only what it created.
    """
    out = Path(out)
    _check_output(out, force)
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)  # the top folder made here
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_checkpoint(out, spec, state_dict, dtype)
    except BaseException as exc:  # Ctrl-C too: no half-written checkpoint is left behind
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        elif not force:  # it was empty: nothing in it is the user's
            _empty(out)
        if isinstance(exc, OSError):
            path = exc.filename or out
            raise EdgeQwenError(f"cannot write the checkpoint to {out}: {exc.strerror or exc}", where=str(path),
                                hint="choose a folder you can write to, on a disk with free space") from None
        raise
    return out


def _check_output(out: Path, force: bool) -> None:
    """Refuse to write into a file, or into a folder holding anything, unless forced (like `edgeqwen build`)."""
    if out.exists() and not out.is_dir():
        raise EdgeQwenError(f"output path exists and is not a folder: {out}", where=str(out),
                            hint="choose a new or empty folder")
    try:
        held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as exc:
        raise EdgeQwenError(f"cannot read the output folder {out}: {exc.strerror or exc}", where=str(out),
                            hint="choose a folder you can read and write") from None
    if held and not force:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise EdgeQwenError(f"output folder already exists and is not empty: {out} (holds {shown})", where=str(out),
                            hint="choose a new or empty folder, or pass --force to write the checkpoint into this one "
                                 "(its checkpoint files are replaced, other files kept)")


def _empty(folder: Path) -> None:
    try:
        for p in folder.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    except OSError:
        pass  # best effort: the error being reported is the one that matters


def _write_checkpoint(out: Path, spec: TinySpec, state_dict, dtype: str) -> None:
    import torch
    from transformers import GenerationConfig

    ids = save_tokenizer(out, spec.family, spec.vocab_size, spec.fim)
    config = make_config(spec, ids)
    torch.manual_seed(spec.seed)
    arch = by_family(spec.family)
    model_class = arch.transformers_class("torch")
    make = model_class.from_config if hasattr(model_class, "from_config") else model_class._from_config
    model = make(config, dtype=getattr(torch, dtype))
    if arch.vision:
        arch.transformers_class("image")(patch_size=14, merge_size=2, temporal_patch_size=2).save_pretrained(out)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    ).save_pretrained(out)
