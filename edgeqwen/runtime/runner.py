"""Minimal onnxruntime runner for edgeqwen artifacts: one file, no torch/transformers/genai.

Needs only onnxruntime, numpy, tokenizers and jinja2 (vision artifacts: Pillow too, and the vision.py copied beside
this file). Copied into every artifact as runner.py:

    python runner.py --prompt "Why is the sky blue?"
    python runner.py --chat

Layers: Runner.step() (one forward pass, KV cache kept in place) → Runner.stream() (yields a
Record per emitted piece: text, token ids, timings, finish_reason) → Runner.generate().
For builder artifacts the KV cache is preallocated once at the artifact's max length and bound as both
past and present (GroupQueryAttention writes in place), so no token step copies the cache. Portable
artifacts (standard ONNX attention) return a present cache one step longer, fed back as the next past.
Static-shape NPU artifacts take one token per step over a fixed KV buffer whose unfilled slots are masked.
"""

from __future__ import annotations

import abc
import argparse
import bisect
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as _missing:  # `python runner.py` under a bare Python: say what to install, not a traceback
    if __name__ == "__main__":
        sys.exit(f"error: runner.py needs {_missing.name} (pip install onnxruntime numpy tokenizers jinja2)")
    raise

KV_BLOCK = 256  # the in-place KV cache grows in steps of this many positions
# a long prompt is fed this many tokens per forward pass: onnxruntime's CPU attention holds every head's scores over
# the fed tokens x the whole sequence at once (a 3000-token prompt on the Qwen2.5-0.5B shape: 950 MB peak in one pass,
# 647 MB in passes of 512, prefill speed equal); the batch engine feeds its prompts in its own chunks
PREFILL_CHUNK = 512

__all__ = ["RunnerError", "Sampling", "Record", "Result", "Runner", "main", "render_chat_template", "EXECUTION_PROVIDERS",
           "PromptLookup", "DraftModel", "DraftCost", "make_drafter"]


class RunnerError(Exception):
    """Bad artifact or bad request: the message says what and what to do."""


# ---- execution providers ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProviderInfo:
    key: str  # the name targets and genai_config.json use
    ort_name: str  # onnxruntime's provider name
    wheel: str  # the pip package whose onnxruntime carries it (each replaces plain onnxruntime)
    # KV buffers bound in place (one CPU buffer as both past and present). On a device provider onnxruntime copies a
    # bound CPU input and output into two device buffers, so GroupQueryAttention no longer sees one buffer: measured
    # wrong on onnxruntime-webgpu 1.27.0 (step 0 logits off by 1.2). Those providers get a KV that grows each step.
    kv_in_place: bool = True
    # most tokens per forward pass (None: any): onnxruntime-webgpu 1.27.0 over SwiftShader computes steps of 2+ tokens
    # wrongly from position 4 on (logits off by ~1; one token per step agrees with the CPU within 1e-5)
    max_step_tokens: int | None = None


# every execution provider an artifact can name; edgeqwen.targets reads the same table
EXECUTION_PROVIDERS = {p.key: p for p in (
    ProviderInfo("cpu", "CPUExecutionProvider", "onnxruntime"),
    ProviderInfo("webgpu", "WebGpuExecutionProvider", "onnxruntime-webgpu", kv_in_place=False, max_step_tokens=1),
    ProviderInfo("cuda", "CUDAExecutionProvider", "onnxruntime-gpu"),
    ProviderInfo("qnn", "QNNExecutionProvider", "onnxruntime-qnn"),
    ProviderInfo("dml", "DmlExecutionProvider", "onnxruntime-directml"),
    ProviderInfo("openvino", "OpenVINOExecutionProvider", "onnxruntime-openvino"),
)}
FALLBACK = "cpu"
# onnxruntime errors an execution provider raises at run time that have a known cause here, and what to do
KNOWN_RUN_FAILURES = {
    "requires f16 but the device does not support it": (
        "this artifact computes in fp16 and the WebGPU adapter has no shader-f16 feature; build the webgpu-fp32 "
        "target (fp32 activations, every adapter) or run with --provider cpu"),
}


def provider_info(name: str) -> ProviderInfo:
    """A provider by its short name ("webgpu") or onnxruntime's ("WebGpuExecutionProvider")."""
    for p in EXECUTION_PROVIDERS.values():
        if name.lower() in (p.key, p.ort_name.lower()):
            return p
    raise RunnerError(f"unknown execution provider {name!r}; known: {', '.join(EXECUTION_PROVIDERS)}")


def artifact_providers(manifest: dict, genai: dict) -> tuple[list[str], str | None]:
    """(providers the artifact was built for, its declared fallback): the manifest's `runtime` block, else its target's
    execution provider, else genai_config's provider_options; CPU when none says."""
    runtime = manifest.get("runtime") or {}
    if runtime.get("providers"):
        return list(runtime["providers"]), runtime.get("fallback")
    target = (manifest.get("target") or {}).get("execution_provider")
    options = genai["model"]["decoder"].get("session_options", {}).get("provider_options") or []
    named = [target] if target else [k for entry in options for k in entry]
    return (named or [FALLBACK]), FALLBACK


def choose_providers(wanted: list[str], fallback: str | None, explicit: bool) -> tuple[list[str], list[str]]:
    """onnxruntime provider names to open a session with, and notes on what could not be had. A provider the installed
    onnxruntime lacks is an error when asked for explicitly, else the declared fallback takes its place (noted)."""
    have = set(ort.get_available_providers())
    chosen, notes = [], []
    for p in map(provider_info, wanted):
        if p.ort_name in have:
            chosen.append(p.ort_name)
            continue
        missing = (f"{p.ort_name} is not in this onnxruntime {ort.__version__} (it has {', '.join(sorted(have))}): "
                   f"pip install {p.wheel} (in place of onnxruntime)")
        if explicit or fallback is None:
            raise RunnerError(missing)
        notes.append(f"{missing}; running on {provider_info(fallback).ort_name}, this artifact's declared fallback")
    cpu = provider_info(fallback or FALLBACK).ort_name
    if cpu not in chosen:
        chosen.append(cpu)  # nodes the first provider does not take run here (onnxruntime does this anyway)
    return chosen, notes


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in (str(v).split(".") + ["0", "0"])[:3])


def check_runtime(manifest: dict, wheel: str = "onnxruntime") -> None:
    """Refuse, with what to install, an onnxruntime older than the artifact's recorded floor (the manifest's
    runtime.min_onnxruntime, computed at build time from the operators and attributes its graphs use)."""
    runtime = manifest.get("runtime") or {}
    need = runtime.get("min_onnxruntime")
    if need and _vkey(ort.__version__) < _vkey(need):
        why = "; ".join(runtime.get("min_onnxruntime_why") or [])
        raise RunnerError(f"this artifact needs onnxruntime >= {need}; found {ort.__version__}"
                          + (f" ({why})" if why else "") + f": pip install -U '{wheel}>={need}'")


def provider_options(genai: dict, ort_names: list[str]) -> list:
    """(name, options) pairs: genai_config's provider_options for the providers it configures (string values)."""
    entries = genai["model"]["decoder"].get("session_options", {}).get("provider_options") or []
    given = {provider_info(k).ort_name: v for entry in entries for k, v in entry.items()
             if k.lower() in {q.key for q in EXECUTION_PROVIDERS.values()}}
    return [(n, {k: str(v) for k, v in given.get(n, {}).items()}) for n in ort_names]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def context_of(genai_config: dict) -> int:
    """The positions an artifact decodes: its genai_config's search.max_length, else its model's context_length."""
    return int(genai_config["search"].get("max_length") or genai_config["model"]["context_length"])


def entry_ok(info) -> bool:
    """A manifest entry `{"size": int, "sha256": 64 hex digits}` (verify reports any other as malformed)."""
    return (isinstance(info, dict) and isinstance(info.get("size"), int) and isinstance(info.get("sha256"), str)
            and len(info["sha256"]) == 64 and not info["sha256"].strip("0123456789abcdef"))


def check_artifact(path: Path, full_hash: bool = True, hash_limit: int | None = None) -> dict:
    """Check the manifest: every listed file present, same size (and same sha256 when full_hash; with `hash_limit`,
    only files up to that many bytes: the cheap look `serve` takes at start, the weights hashed when they load)."""
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise RunnerError(f"{path}: no manifest.json; this is not an edgeqwen artifact (build one with `edgeqwen build`)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files = manifest.get("files", {})
        assert isinstance(files, dict)
    except (ValueError, AttributeError, AssertionError):
        raise RunnerError(f"{mpath}: not a valid edgeqwen manifest (JSON object with a 'files' mapping); "
                          "rebuild or re-copy the artifact") from None
    for rel, info in files.items():
        if not entry_ok(info):
            raise RunnerError(f"{mpath}: entry {rel!r} has no size/sha256; rebuild or re-copy the artifact")
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise RunnerError(f"{mpath}: entry {rel!r} points outside the artifact; refusing to read it")
        p = path / rel
        if not p.is_file():
            raise RunnerError(f"{path}: artifact file {rel} is missing; rebuild or re-copy the artifact")
        size = p.stat().st_size
        if size != info["size"]:
            raise RunnerError(f"{path}: artifact file {rel} is {size} bytes, manifest.json records {info['size']}; "
                              "rebuild or re-copy the artifact")
        hashed = full_hash and rel != "runner.py" and (hash_limit is None or size <= hash_limit)
        if hashed and sha256_file(p) != info["sha256"]:
            raise RunnerError(f"{path}: artifact file {rel} was modified (sha256 differs from manifest.json); "
                              "rebuild or re-copy the artifact")
    return manifest


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
    """Render a Hugging Face chat template as transformers' `apply_chat_template` does (a sandboxed, immutable
    Jinja environment with trim/lstrip blocks, loop controls, `tojson`, `raise_exception`, `strftime_now`), so the
    runner, the server and the build's Foundry metadata all render prompts the way the model was trained on."""
    import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise RunnerError(f"chat template: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **kwargs)
    except (jinja2.TemplateError, TypeError) as exc:  # TypeError: content of a shape the template cannot join
        raise RunnerError(f"chat template failed to render: {exc}") from None


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # benchmarks and greedy-match checks generate exactly max_new_tokens
    constraint: "GrammarConstraint | None" = None  # constrained decoding (JSON schema, forced tool calls)
    keep_logits: bool = False  # each Record carries the logits row its token came from (agreement checks)

    def validate(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise RunnerError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            if not math.isfinite(getattr(self, name)):  # NaN passes every `<=` test below by failing it
                raise RunnerError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not (self.temperature == 0.0 or 1e-4 <= self.temperature <= 5.0):
            raise RunnerError(f"temperature must be 0 (greedy) or in [0.0001, 5], got {self.temperature!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise RunnerError(f"seed must be an integer in [0, 2^63), got {self.seed!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise RunnerError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise RunnerError(f"top_k must be >= 0, got {self.top_k!r}")
        if self.repetition_penalty <= 0:
            raise RunnerError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")


@dataclass
class Record:
    """One streamed piece. `text` is answer text, `reasoning` text inside <think>…</think>."""

    text: str = ""
    reasoning: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # None while streaming, then "stop" or "length"
    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float = 0.0
    prefill_tps: float = 0.0
    decode_tps: float = 0.0
    logits: np.ndarray | None = None  # with Sampling(keep_logits=True): the row this token was chosen from


@dataclass
class Result:
    text: str
    reasoning: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    ttft_s: float
    prefill_tps: float
    decode_tps: float


JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MASKED = np.float32(-1e30)  # the logit of a token a constraint forbids (exp() of it is exactly 0)
SHORTLIST_META = "edgeqwen.shortlist_k"  # export/shortlist_head.py's names, written out: this file runs without the package
SHORTLIST_FILE = "lm_head.shortlist.onnx"
ROWS_FILE = "lm_head.rows.onnx"
ROWS_MAX = 4096  # a constrained step allowing at most this many tokens scores them alone (lm_head.rows.onnx)


class GrammarConstraint:
    """Constrained decoding: before each sampled token, every token the grammar cannot take next gets -inf, so the
    output always parses (llguidance — the grammar engine onnxruntime-genai and llama.cpp use — builds the mask from
    a Lark grammar or a JSON schema; `pip install llguidance`, a 3 MB wheel with no dependencies). Imported only
    when a constraint is asked for."""

    def __init__(self, runner: "Runner", grammar: str):
        import llguidance

        self.vocab = runner.vocab_size
        error = llguidance.LLMatcher.validate_grammar(grammar, runner.ll_tokenizer())
        if error:
            raise RunnerError(f"grammar refused: {error}")
        self.matcher = llguidance.LLMatcher(runner.ll_tokenizer(), grammar, log_level=0)

    @classmethod
    def json_schema(cls, runner: "Runner", schema: dict | str) -> "GrammarConstraint":
        import llguidance

        try:  # one canonical layout (no free whitespace): a small model cannot pad the output with blank space
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
        except ValueError as exc:
            raise RunnerError(f"JSON schema refused: {exc}") from None
        return cls(runner, grammar)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        n = min(bits.size, logits.size)
        out = np.full(logits.shape, MASKED, dtype=np.float32)  # finite: top-p's histogram stays defined
        keep = self.allowed = np.flatnonzero(bits[:n])  # kept: a shortlist head may score just these (Runner.full_row)
        out[keep] = logits[keep]
        return out

    def remask(self, logits: np.ndarray) -> np.ndarray:
        """Another row for the same step (the last `mask`'s allowed tokens; the grammar is not asked again)."""
        out = np.full(logits.shape, MASKED, dtype=np.float32)
        out[self.allowed] = logits[self.allowed]
        return out

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise RunnerError(f"constrained decoding failed: {self.matcher.get_error() or 'token refused'}")

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()


NUCLEUS_BINS = 2048  # top-p: probability mass histogram over the logit range (see sample_token)
NUCLEUS_SORT = 512  # top-p over at most this many tokens (a top-k pool): sorted outright


def top_k_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest logits (any order). The k-th largest of every 32nd logit is a floor at or under the
    true k-th largest, so the full top-k lies among the logits at or over it: a partial selection over those few.
    Where fewer than k lie over the floor, the k-th largest is the floor itself: those, and enough logits equal to it
    (a shortlist head's row is K candidates and 151,000 equal fill values: a selection among ties costs ~23 ms)."""
    if logits.size >= 64 * k:
        sample = logits[::32]
        floor = np.sort(sample)[-k]  # a sort, not a selection: introselect over a shortlist row's few distinct
        above = np.flatnonzero(logits > floor)  # fill values (penalized or not) costs 0.3 ms, the sort 0.02-0.06
        if above.size >= k:
            return above[np.argpartition(logits[above], above.size - k)[above.size - k:]]
        return np.concatenate([above, np.flatnonzero(logits == floor)[:k - above.size]])
    return np.argpartition(logits, logits.size - k)[logits.size - k:]


def nucleus(scaled: np.ndarray, probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest set of most probable tokens holding top_p of the mass (a full sort's nucleus, ties
    aside), without sorting the vocabulary. Tokens under (1 - top_p) * total / n carry less than 1 - top_p of the mass
    together, so they all lie past the nucleus and are dropped first (a weighted bincount over the whole vocabulary
    costs ~1.2 ms). The rest go into NUCLEUS_BINS bins by logit; the bin where the cumulative mass from the top crosses
    top_p is the only one sorted."""
    total = float(probs.sum(dtype=np.float64))
    want = top_p * total
    if probs.size <= NUCLEUS_SORT:  # a top-k pool: one small sort costs less than the histogram
        order = np.argsort(-probs, kind="stable")
        return order[:min(int(np.searchsorted(np.cumsum(probs[order], dtype=np.float64), want)) + 1, probs.size)]
    cand = np.flatnonzero(probs >= np.float32((1.0 - top_p) * total / probs.size))
    cs, cp = scaled[cand], probs[cand]
    span = float(-cs.min()) or 1.0
    bins = np.minimum((cs * np.float32(-NUCLEUS_BINS / span)).astype(np.intp), NUCLEUS_BINS - 1)
    # intp bins and float64 weights: bincount converts anything else element by element (6x slower)
    cum = np.cumsum(np.bincount(bins, weights=cp.astype(np.float64), minlength=NUCLEUS_BINS))
    edge_bin = min(int(np.searchsorted(cum, want)), NUCLEUS_BINS - 1)
    edge = np.flatnonzero(bins == edge_bin)
    edge = edge[np.argsort(-cp[edge], kind="stable")]
    above = cum[edge_bin - 1] if edge_bin else 0.0
    cut = min(int(np.searchsorted(above + np.cumsum(cp[edge], dtype=np.float64), want)) + 1, edge.size)
    return cand[np.concatenate([np.flatnonzero(bins < edge_bin), edge[:cut]])]


def _draw(weights: np.ndarray, u: float, block: int = 1024) -> int:
    """The index where u x total falls in the running sum of weights: block sums first, then one block's running sum
    (a float64 cumsum over a whole 151 936-wide row costs ~1.4 ms, block sums a tenth of that)."""
    if weights.size <= 4 * block:
        cdf = np.cumsum(weights, dtype=np.float64)
        return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), weights.size - 1)
    full = weights.size // block * block
    sums = weights[:full].reshape(-1, block).sum(axis=1, dtype=np.float64)
    if full < weights.size:
        sums = np.append(sums, weights[full:].sum(dtype=np.float64))
    cum = np.cumsum(sums)
    target = u * cum[-1]
    b = min(int(np.searchsorted(cum, target, side="right")), sums.size - 1)
    inner = np.cumsum(weights[b * block:(b + 1) * block], dtype=np.float64)
    rest = target - (cum[b - 1] if b else 0.0)
    return min(b * block + int(np.searchsorted(inner, rest, side="right")), weights.size - 1)


def penalized(logits: np.ndarray, s: Sampling, history=(), seen=None) -> np.ndarray:
    """The row with the repetition penalty applied to the tokens of `history` (`seen`: their distinct ids, if kept)."""
    logits = np.asarray(logits, dtype=np.float32)
    if s.repetition_penalty != 1.0 and len(history):
        logits = logits.copy()
        idx = np.unique(np.asarray(history)) if seen is None else seen
        vals = logits[idx]
        logits[idx] = np.where(vals > 0, vals / s.repetition_penalty, vals * s.repetition_penalty)
    return logits


def sample_token(logits: np.ndarray, s: Sampling, rng: np.random.Generator, history=(), seen=None) -> int:
    """One token from a logits row: repetition penalty, greedy, or temperature + top-k + top-p.

    No full-vocabulary sort (≈ 13 ms per token over Qwen's 151 936 logits): top-k is a partial selection over the
    few logits above a sampled floor (top_k_indices), top-p a histogram over the tokens that can reach the nucleus (nucleus);
    both keep exactly the set a full sort would (ties aside). `seen`: the distinct ids of `history`, if the caller keeps
    them (Decoding does, one insertion per new token)."""
    logits = penalized(logits, s, history, seen)
    if s.temperature == 0.0:
        return int(np.argmax(logits))
    n = logits.size
    pool = top_k_indices(logits, s.top_k) if 0 < s.top_k < n else None
    scaled = (logits if pool is None else logits[pool]) / np.float32(s.temperature)
    scaled -= scaled.max()
    probs = np.exp(scaled)
    keep = nucleus(scaled, probs, s.top_p) if s.top_p < 1.0 else None
    weights = probs if keep is None else probs[keep]
    j = _draw(weights, rng.random())
    choice = j if keep is None else int(keep[j])
    return int(choice if pool is None else pool[choice])


class Detokenizer:
    """Incremental decoding that never emits half a UTF-8 character."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prev = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        cur = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(cur) > len(prev) and not cur.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return cur[len(prev):]
        return ""


class Decoding:
    """One sequence's decoding after its prefill: from each step's logits, the next token (constraint mask, sampling)
    and the Record it streams (answer text held back while it could be a stop string, <think> text apart, the finish
    reason). `Runner.stream` drives one; the server's batcher drives several over one batched forward pass."""

    def __init__(self, runner: "Runner", prompt_ids: list[int], s: Sampling, budget: int, thinking_open: bool = False,
                 ttft: float = 0.0):
        self.s, self.budget, self.think_ids = s, budget, runner.think_ids
        self.rng = np.random.default_rng(s.seed)
        self.stops = set(s.stop_token_ids) | (set() if s.ignore_eos else runner.eos_ids)
        self.detok = Detokenizer(runner.tokenizer)
        self.in_think = thinking_open
        self.hold = max((len(x) for x in s.stop), default=1) - 1
        self.pending = ""  # answer text held back while it could still be the start of a stop string
        self.history = list(prompt_ids)
        self.seen: np.ndarray | None = None  # the history's distinct ids, sorted, kept while a penalty needs them
        self.prompt_tokens = len(prompt_ids)
        self.generated: list[int] = []
        self.ttft = ttft
        self.prefill_tps = len(prompt_ids) / ttft if ttft > 0 else 0.0
        self.t_dec = time.perf_counter()
        self.finish: str | None = None
        self.full_steps = 0  # constrained steps a shortlist head could not decide (the full head's row read instead)

    def _seen(self) -> np.ndarray | None:
        if self.seen is None and self.s.repetition_penalty != 1.0 and self.history:
            self.seen = np.unique(np.asarray(self.history, dtype=np.int64))
        return self.seen

    def _shortlist_decides(self, raw: np.ndarray, masked: np.ndarray) -> bool:
        """A shortlist head's row under a constraint: its own pick (greedy) or its top-k (sampling, k <= K) — after the
        repetition penalty — all allowed. Then the constrained choice is the unconstrained one: the full head's row
        would rank the same tokens first (the recall the accuracy stage gates)."""
        s = self.s
        pen = penalized(raw, s, self.history, self._seen())
        top = [int(np.argmax(pen))] if s.temperature == 0.0 else top_k_indices(pen, s.top_k)
        return bool((masked[top] > MASKED).all())

    def next(self, logits: np.ndarray, full=None) -> tuple[int, Record]:
        """`full(allowed)`: with a shortlist head and a constraint, this step's row with every allowed token scored
        (Runner.full_row), called only where the shortlist's own picks are not all allowed (`_shortlist_decides`)."""
        s = self.s
        raw = logits
        if s.constraint is not None:
            logits = s.constraint.mask(raw)
            if full is not None and not self._shortlist_decides(raw, logits):
                raw = full(s.constraint.allowed)
                logits = s.constraint.remask(raw)
                self.full_steps += 1
        tok = sample_token(logits, s, self.rng, self.history, self._seen())
        if s.constraint is not None:
            s.constraint.accept(tok)
        self.generated.append(tok)
        self.history.append(tok)
        if self.seen is not None:
            at = int(np.searchsorted(self.seen, tok))
            if at == self.seen.size or self.seen[at] != tok:
                self.seen = np.insert(self.seen, at, tok)
        rec = Record(token_ids=[tok], prompt_tokens=self.prompt_tokens, generated_tokens=len(self.generated),
                     ttft_s=self.ttft, prefill_tps=self.prefill_tps)
        if s.keep_logits:
            rec.logits = np.array(raw, dtype=np.float32)
        finish = None
        if tok in self.stops:
            finish = "stop"
        elif tok == self.think_ids[0]:
            self.in_think = True
        elif tok == self.think_ids[1]:
            self.in_think = False
        else:
            piece = self.detok.add(tok)
            if self.in_think:
                rec.reasoning = piece
            else:
                self.pending += piece
                hit = min((self.pending.find(x) for x in s.stop if x in self.pending), default=-1)
                if hit >= 0:
                    self.pending, finish = self.pending[:hit], "stop"
                    rec.text, self.pending = self.pending, ""
                elif len(self.pending) > self.hold:
                    cut = len(self.pending) - self.hold
                    rec.text, self.pending = self.pending[:cut], self.pending[cut:]
        if finish is None and len(self.generated) >= self.budget:
            finish = "length"
        if finish is not None:
            rec.text += self.pending
            rec.finish_reason = self.finish = finish
        elapsed = time.perf_counter() - self.t_dec
        n = len(self.generated)
        rec.decode_tps = (n - 1) / elapsed if n > 1 and elapsed > 0 else 0.0
        return tok, rec


@dataclass
class SpeculationStats:
    """One stream's speculative decoding: verify steps run, draft tokens proposed and accepted, tokens the verify steps
    emitted (every token after the prefill's first)."""

    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.emitted / self.steps if self.steps else 0.0

    def count(self, drafted: int, emitted: int) -> None:
        """One verify step that checked `drafted` draft tokens and emitted `emitted` tokens: all but the last emitted
        were draft tokens it kept (the last is the step's own pick, or a finish)."""
        self.steps += 1
        self.drafted += drafted
        self.accepted += emitted - 1
        self.emitted += emitted


class DraftCost:
    """How long a draft pays for itself on this machine: speculative decoding's draft length sized by measured cost.

    A verify step feeds the last token and k draft tokens. Where decoding is bound by reading the weights (AVX-512 with
    VNNI: a 4-token step of the 0.5B shape costs 2.3x a 1-token step) a long draft is nearly free; where the kernels are
    bound by their arithmetic (AVX2 without VNNI: 3.2x) it costs nearly k times one step, and a draft
    the acceptance rule alone would grow to 16 tokens runs slower than plain decoding even when 80 % of it is kept.

    `DraftCost` keeps, per stream, the wall time of verify steps by width and of drafting by draft length (moving
    averages), and moving acceptance rates: per draft token, and per position among the steps that reached it.
    `limit(k)` is the draft length in [0, k] with the best expected tokens per second — E(j) = 1 + the sum over i <= j
    of the product of the first i positions' rates (the per-token rate a where a position was never tried: then
    (1 - a^(j+1)) / (1 - a)) for the time of drafting j and verifying j + 1, against one plain step — and 0 where no
    length beats plain decoding by `margin`. Widths never timed are read off a line through the
    timed ones; before a 1-token step has been timed, a draft is allowed (lookup streams time one at every step without
    a match; a draft model's stream gets one plain step once other widths are timed). After `probe` steps held at 0 it
    lets one draft through, so a stream whose text turns repetitive is noticed; each probe that leaves the draft still
    not worth it doubles the wait before the next (up to `max_probe`: a drafter that rarely agrees — a draft model at
    11 % acceptance — stops paying a wide step and a catch-up every 16 tokens), and a draft worth taking resets it.
    The output never depends on k: only how many positions a step verifies.
    """

    def __init__(self, alpha: float = 0.3, margin: float = 1.03, probe: int = 16, max_probe: int = 128):
        self.alpha, self.margin, self.probe, self.max_probe = alpha, margin, probe, max_probe
        self.wait = probe  # held steps before the next probe
        self.probed = False  # the last draft allowed was a probe
        self.step_s: dict[int, float] = {}  # verify width -> seconds (moving average)
        self.draft_s: dict[int, float] = {}  # draft length -> seconds to propose it
        self.acceptance: float | None = None  # per draft token, moving average over steps that drafted
        # position m -> moving average of "the m-th draft token was kept", over steps that reached it (all before it
        # kept): acceptance comes in runs (a copied passage is kept whole, a new sentence not at all), which a single
        # per-token rate raised to the j-th power undercounts for long drafts
        self.accept_at: dict[int, float] = {}
        self.held = 0  # consecutive steps limited to no draft
        self.limited = 0  # steps whose draft length the cost cut below the acceptance rule's

    def _avg(self, table: dict[int, float], key: int, value: float) -> None:
        old = table.get(key)
        table[key] = value if old is None else old + self.alpha * (value - old)

    def record(self, drafted: int, kept: int, draft_s: float, step_s: float) -> None:
        """One verify step over 1 + `drafted` positions that kept `kept` draft tokens: its drafting and forward
        seconds."""
        self._avg(self.step_s, 1 + drafted, step_s)
        if drafted:
            self._avg(self.draft_s, drafted, draft_s)
            for m in range(1, min(kept + 1, drafted) + 1):  # the positions this step tried: up to the first rejected
                self._avg(self.accept_at, m, 1.0 if m <= kept else 0.0)
            rate = kept / drafted
            old = self.acceptance
            self.acceptance = rate if old is None else old + self.alpha * (rate - old)

    @staticmethod
    def _line(table: dict[int, float], xs: range) -> list[float] | None:
        """table[x] for each x, else read off the line between (or extended from) the nearest timed keys; None where
        one is needed and fewer than two keys are timed."""
        keys = sorted(table)
        out = []
        for x in xs:
            if x in table:
                out.append(table[x])
                continue
            if len(keys) < 2:
                return None
            i = bisect.bisect_left(keys, x)  # keys[i - 1] < x < keys[i]
            lo, hi = (keys[0], keys[1]) if i == 0 else (keys[-2], keys[-1]) if i == len(keys) else (keys[i - 1], keys[i])
            out.append(max(table[lo] + (table[hi] - table[lo]) / (hi - lo) * (x - lo), 0.0))
        return out

    def gains(self, k: int) -> list[float] | None:
        """Expected tokens per second with a draft of j = 1..k tokens, relative to plain decoding (one pass: this runs
        every step, and a tiny model's step is well under a millisecond); None where not yet known."""
        one = self.step_s.get(1)
        wide = self._line(self.step_s, range(2, k + 2))
        if one is None or wide is None or self.acceptance is None:
            return None
        draft = self._line(self.draft_s, range(1, k + 1))
        if draft is None:  # one length timed: in proportion to it; none: free
            key, t = next(iter(self.draft_s.items()), (1, 0.0))
            draft = [t * j / key for j in range(1, k + 1)]
        out = []
        for j, tokens in enumerate(self._expected(k), start=1):
            # a wider step never costs less than a plain one: timer noise can make a line through two timed widths
            # fall toward zero, and an instant drafter adds nothing
            seconds = max(wide[j - 1], one) + draft[j - 1]
            if seconds <= 0:
                return None
            out.append(tokens * one / seconds)
        return out

    def speedup(self, j: int) -> float | None:
        """Expected tokens per second with a draft of j tokens, relative to plain decoding; None where not yet known."""
        g = self.gains(j)
        return None if g is None else g[-1]

    def expected_tokens(self, j: int) -> float:
        """Tokens a step drafting j yields: 1 + the sum over i <= j of P(the first i draft tokens are all kept), from
        each position's own rate where it has been tried, the per-token rate beyond."""
        return self._expected(j)[-1] if j > 0 else 1.0

    def _expected(self, k: int) -> list[float]:
        """expected_tokens(j) for j = 1..k, in one pass."""
        a = min(self.acceptance or 0.0, 0.999)
        out, tokens, run = [], 1.0, 1.0
        for m in range(1, k + 1):
            run *= min(self.accept_at.get(m, a), 0.999)
            tokens += run
            out.append(tokens)
        return out

    def limit(self, k: int) -> int:
        """The draft length to ask for when the acceptance rule allows k."""
        if k <= 0:
            return 0
        if 0 < self.held < self.wait:  # inside a hold nothing that decided it moves but the plain step's time: skip the
            self.held += 1  # arithmetic (on a model whose step is 0.5 ms it is a tenth of the step)
            self.limited += 1
            return 0
        if 1 not in self.step_s:
            if len(self.step_s) >= 2:  # wider steps timed, a plain one never: time one
                return 0
            return k
        g = self.gains(k)
        if g is None:
            return k  # not enough timed yet: draft, and time it
        gains = dict(enumerate(g, start=1))
        best = max(gains, key=lambda j: gains[j])
        if gains[best] < self.margin:
            if self.probed:  # the probe did not make drafting worth it: look again less often
                self.wait, self.probed = min(2 * self.wait, self.max_probe), False
            self.held += 1
            if self.held > self.wait:  # look again now and then: acceptance and costs move with the text
                self.held, self.probed = 0, True
                return k
            self.limited += 1
            return 0
        self.held, self.wait, self.probed = 0, self.probe, False
        if best < k:
            self.limited += 1
        return best


def verify_draft(seq: "Decoding", rows: np.ndarray, draft: list[int], full=None):
    """A verify step's tokens: row i of its logits picks the token after position i exactly as plain decoding would
    (`Decoding.next`: same penalty, sampler, constraint and random draw). Yields (token, Record) while the picks agree
    with the draft, then the first pick that differs (or the one after the whole draft), stopping early at a finish.
    `full(i)`: the full head's row i, for a shortlist head under a constraint (see Decoding.next)."""
    for i in range(len(draft) + 1):
        tok, rec = seq.next(rows[i], None if full is None else (lambda allowed, i=i: full(i, allowed)))
        yield tok, rec
        if rec.finish_reason is not None or i == len(draft) or tok != draft[i]:
            return


class Drafter(abc.ABC):
    """What speculative decoding asks of a drafter: `propose(history, k)` → up to k tokens that may come next (the
    target verifies them all in one forward pass). `k` adapts per stream as Hugging Face's assisted generation does:
    +2 after a fully accepted draft, -1 after a rejection, within [1, max_k]; the draft asked for is then cut to what
    this machine's measured step costs pay for (`DraftCost`, kept in `cost` for the stream)."""

    name = "drafter"
    first_k = 4
    max_k = 8
    # proposing costs next to nothing (no model runs): propose first and size only a draft that exists; the cost's
    # arithmetic then runs on the steps that could draft, not on every step of text with no match
    cheap = False

    def start(self, target: "Runner", tokens: int) -> None:
        """A new stream of at most `tokens` positions begins on `target`."""

    def draft(self, history: list[int], k: int, room: int) -> list[int]:
        """This step's draft: what the acceptance rule allows (`k`), cut to what the measured costs pay for
        (`self.cost`, a `DraftCost`) and to `room` (the stream's KV slot and budget)."""
        if room <= 0:
            return []
        if self.cheap:
            draft = self.propose(history, min(k, room))
            return draft[:self.cost.limit(len(draft))] if draft else []
        n = min(room, self.cost.limit(k))
        return self.propose(history, n) if n > 0 else []

    @abc.abstractmethod
    def propose(self, history: list[int], k: int) -> list[int]:
        """Up to k tokens that may follow `history`."""

    def next_k(self, k: int, drafted: int, kept: int) -> int:
        """The next draft length after a verify step that kept `kept` of `drafted` tokens."""
        if not drafted:
            return k
        return min(k + 2, self.max_k) if kept == drafted else max(1, k - 1)


class PromptLookup(Drafter):
    """Prompt lookup decoding: the tokens that followed the latest earlier occurrence of the sequence's last n tokens
    (n from max_ngram down to min_ngram), in the prompt or the output so far. No model, only an n-gram index: strong
    where the answer repeats its input — code edits, RAG answers, summaries. A one-token match is weak evidence, so
    none is drafted from by default (on the copy-trained tiny pair: acceptance 39 % → 62 %, 1.1x → 1.6x with
    min_ngram 2)."""

    name = "lookup"
    first_k = 8
    max_k = 16
    cheap = True

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram:
            raise RunnerError(f"prompt lookup needs 1 <= min n-gram <= max n-gram (got {min_ngram}, {max_ngram})")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        # n -> {n-gram: the position after its latest occurrence that a token follows}, built as the history grows
        # (a stream's history only grows: rejected draft tokens never enter it), so a step looks up its tail in O(1)
        # however long the prompt — a RAG prompt of thousands of tokens costs what a short one does
        self._src: list[int] | None = None
        self._done, self._last = 0, None  # follower positions indexed, the last token indexed
        self._grams: dict[int, dict[tuple, int]] = {}

    def _index(self, history: list[int]) -> None:
        size = self._done
        if history is not self._src or len(history) < size or (size and history[size - 1] != self._last):
            self._src, size, self._grams = history, 0, {n: {} for n in range(self.min_ngram, self.max_ngram + 1)}
        for f in range(max(size, 1), len(history)):  # the n tokens before position f, followed by history[f]
            for n, grams in self._grams.items():
                if f >= n:
                    grams[tuple(history[f - n:f])] = f  # later occurrences overwrite: the latest wins
        self._done, self._last = len(history), history[-1] if history else None

    def propose(self, history: list[int], k: int) -> list[int]:
        self._index(history)
        size = len(history)
        for n in range(min(self.max_ngram, size - 1), self.min_ngram - 1, -1):
            at = self._grams[n].get(tuple(history[size - n:]))
            if at is not None:
                return list(history[at:at + k])
        return []


class DraftModel(Drafter):
    """A smaller artifact with the same tokenizer drafts greedily (e.g. Qwen2.5-0.5B for 1.5B or 3B). Its own KV cache
    follows the target's sequence: rolled back to the prefix both share, then fed what it has not seen. Open its
    Runner with `spin=False` (`make_drafter` does): a draft runs in bursts between the target's steps, and threads
    left spinning after it take the cores from the target (the copy-trained tiny pair, 2 cores: the target's own steps
    ran 10-40 % slower beside a spinning draft model, plain decoding too)."""

    name = "draft"
    first_k = 4
    max_k = 8

    def __init__(self, draft: "Runner"):
        self.runner = draft
        self._matched: "Runner | None" = None  # the target whose tokenizer was found equal (checked once, not per stream)

    def start(self, target: "Runner", tokens: int) -> None:
        d = self.runner
        if target is not self._matched and (d.vocab_size != target.vocab_size
                                            or d.tokenizer.to_str() != target.tokenizer.to_str()):
            raise RunnerError(f"the draft artifact {d.path} does not share the target's tokenizer ({d.vocab_size} vs "
                              f"{target.vocab_size} tokens): draft with a smaller model of the same family")
        if d.static_slots is not None:
            raise RunnerError(f"the draft artifact {d.path} takes one token per step (static shapes): use a CPU artifact")
        self._matched = target
        d.reset()
        d.reserve(min(tokens, d.context_length))

    def propose(self, history: list[int], k: int) -> list[int]:
        d = self.runner
        seen = np.asarray(d.ids[:len(history)], dtype=np.int64)
        differ = np.flatnonzero(seen != np.asarray(history[:seen.size], dtype=np.int64))
        common = int(differ[0]) if differ.size else seen.size
        common = min(common, len(history) - 1)  # the last token is fed again: its logits start the draft
        k = min(k, d.context_length - len(history))
        if k <= 0:
            return []
        d.rollback(common)
        logits = d.step(list(history[common:]))
        out = [int(np.argmax(logits))]
        while len(out) < k:
            out.append(int(np.argmax(d.step([out[-1]]))))
        return out


def make_drafter(spec: str, threads: int | None = None, providers=None) -> Drafter:
    """`lookup` (prompt lookup) or `draft=ARTIFACT` (a draft model): the --speculate flag's values."""
    if spec == "lookup":
        return PromptLookup()
    if spec.startswith("draft="):
        path = spec[len("draft="):]
        if not path:
            raise RunnerError("--speculate draft= needs an artifact folder: draft=PATH")
        return DraftModel(Runner(path, threads=threads, verify=False, providers=providers, spin=False))
    raise RunnerError(f"unknown --speculate {spec!r}: use `lookup` or `draft=ARTIFACT`")


class VisionPath:
    """A vision artifact's image side: preprocessing (numpy + Pillow, no torch), the encoder, the embedding merge and
    the decoder's 3-D positions (vision.py, next to this file, holds the model-specific arithmetic)."""

    def __init__(self, path: Path, model: dict, so):
        try:
            from . import vision as vision_lib
        except ImportError:  # runner.py run as a script from the artifact folder
            sys.path.insert(0, str(path))
            import vision as vision_lib
        self.lib = vision_lib
        v, e = model["vision"], model["embedding"]
        self.config = vision_lib.VisionConfig.load(path / v["config_filename"])
        self.processor = vision_lib.ImageProcessor(self.config)
        self.encoder = ort.InferenceSession(str(path / v["filename"]), so, providers=["CPUExecutionProvider"])
        self.embedder = ort.InferenceSession(str(path / e["filename"]), so, providers=["CPUExecutionProvider"])
        self.hidden = int(model["decoder"]["hidden_size"])
        self.encode_s = 0.0  # the last request's encoder time (seconds), for benchmarks
        self.patches = 0

    def check_text_only(self, prompt_ids) -> None:
        """A prompt without images must not hold image placeholder tokens (e.g. "<|image_pad|>" typed as text)."""
        n = sum(1 for t in prompt_ids if t == self.config.image_token_id)
        if n:
            raise RunnerError(f"the prompt holds {n} image placeholder token(s) (<|image_pad|>) but no image was given: "
                              "send the image, or remove the placeholder text")

    @staticmethod
    def text_positions(start: int, n: int) -> np.ndarray:
        """[3, n] M-RoPE positions of text: the three axes advance together from `start`."""
        return np.broadcast_to(np.arange(start, start + n, dtype=np.int64), (3, n))

    def embed_rows(self, ids: np.ndarray, features) -> np.ndarray:
        """[B, S] token ids → [B, S, hidden] embeddings, image placeholders (row-major order) taking `features`."""
        feats = features if features is not None else np.zeros((0, self.hidden), np.float32)
        return self.embedder.run(None, {"input_ids": np.asarray(ids, dtype=np.int64), "image_features": feats})[0]

    def encode(self, images) -> tuple[np.ndarray, list[np.ndarray]]:
        """Images → image features [Σ tokens, hidden] and each image's (t, h, w) patch grid."""
        t0 = time.perf_counter()
        pixels, grids = [], []
        for i, image in enumerate(images):
            try:
                p, g = self.processor.preprocess(image)
            except self.lib.ImageError as exc:
                raise RunnerError(f"image {i + 1}: {exc}") from None
            pixels.append(p)
            grids.append(g)
        feeds = {"pixel_values": np.concatenate(pixels), **self.lib.encoder_inputs(grids, self.config)}
        feats = self.encoder.run(None, feeds)[0]
        self.encode_s, self.patches = time.perf_counter() - t0, int(feeds["pixel_values"].shape[0])
        return feats, grids

    def prepare(self, prompt_ids: list[int], images) -> tuple[list[int], tuple[np.ndarray, np.ndarray]]:
        """Expand each image placeholder to the image's token count; encode; the prompt's M-RoPE positions."""
        pad = self.config.image_token_id
        slots = [i for i, t in enumerate(prompt_ids) if t == pad]
        if len(slots) != len(images):
            raise RunnerError(f"{len(images)} image(s) given but the prompt has {len(slots)} image placeholder(s) "
                              "(<|vision_start|><|image_pad|><|vision_end|>, one per image; the chat template writes "
                              "them for image content parts)")
        feats, grids = self.encode(images)
        ids: list[int] = []
        img = 0
        for t in prompt_ids:
            if t == pad:
                ids.extend([pad] * self.lib.image_token_count(grids[img], self.config))
                img += 1
            else:
                ids.append(t)
        try:
            positions, _ = self.lib.rope_index(ids, grids, self.config)
        except self.lib.ImageError as exc:
            raise RunnerError(str(exc)) from None
        return ids, (feats, positions)


class Runner:
    def __init__(self, path: str | Path, threads: int | None = None, verify: bool = True, providers=None,
                 decoder_file: str | None = None, spin: bool = True):
        """`decoder_file`: another decoder graph of the artifact than genai_config's (a web artifact's
        model.wasm.onnx, the graph its page runs on WebAssembly); its scoring head is lm_head.<rest of its name>.
        `spin=False`: onnxruntime's threads sleep as soon as a run ends instead of spinning for the next — for a model
        that runs in bursts beside another (a draft model: its spinning threads took the cores from the target's next
        step)."""
        from tokenizers import Tokenizer

        self.path = Path(path)
        if not (self.path / "genai_config.json").exists():
            raise RunnerError(f"{self.path}: no genai_config.json; pass an artifact folder made by `edgeqwen build`")
        self.manifest = check_artifact(self.path, full_hash=verify) if (self.path / "manifest.json").exists() or verify else {}
        cfg = json.loads((self.path / "genai_config.json").read_text())
        model = cfg["model"]
        dec = model["decoder"]
        self.context_length = context_of(cfg)
        eos = model["eos_token_id"]
        self.eos_ids = set([eos] if isinstance(eos, int) else eos)
        self.num_layers = dec["num_hidden_layers"]
        self.kv_heads = dec["num_key_value_heads"]
        self.head_size = dec["head_size"]
        self.vocab_size = model["vocab_size"]
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        tpl = self.path / "chat_template.jinja"
        self.chat_template = tpl.read_text() if tpl.exists() else None
        generation = ((self.manifest or {}).get("recipe") or {}).get("generation") or {}
        self.system_prompt = generation.get("system_prompt") or None
        self.think_ids = (self.tokenizer.token_to_id("<think>"), self.tokenizer.token_to_id("</think>"))
        so = ort.SessionOptions()
        threads = threads or dec.get("session_options", {}).get("intra_op_num_threads") or 0
        so.intra_op_num_threads = int(threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.decoder_file = decoder_file or dec["filename"]
        # another graph than genai_config's: a web artifact's int8 WebAssembly graph (DynamicQuantizeMatMul), exact on
        # x86 CPUs without VNNI too, whose u8s8 products can saturate (onnxruntime then takes such weights through its
        # u8u8 kernel). Not for the QDQ graphs: the option rewrites their per-axis DequantizeLinear, which then fails.
        self._int8_graph = self.decoder_file != dec["filename"]
        if self._int8_graph:
            so.add_session_config_entry("session.x64quantprecision", "1")
        if not (self.path / self.decoder_file).is_file():
            raise RunnerError(f"{self.path}: no decoder graph {self.decoder_file}")
        # export/scoring_head.head_file_for's rule, written out: this file runs on devices without the package
        self.head_file = "lm_head.onnx" if self.decoder_file == "model.onnx" else \
            "lm_head." + self.decoder_file.removeprefix("model.")
        self.session = self._open_session(self.path / self.decoder_file, so, cfg, providers)
        self.input_names = {i.name: i for i in self.session.get_inputs()}
        kv_type = self.input_names["past_key_values.0.key"].type
        self.kv_dtype = np.float16 if "float16" in kv_type else np.float32
        # genai_config's own switch: false for portable-exporter graphs, which concatenate past and new KV.
        on = provider_info(self.providers[0])
        self.growing_kv = not cfg["search"].get("past_present_share_buffer", True) or not on.kv_in_place
        self.max_step_tokens = on.max_step_tokens
        search = cfg["search"]  # the recipe's `generation:` block, as onnxruntime-genai reads it too
        self.generation = {"do_sample": bool(search.get("do_sample", False)),
                           "temperature": float(search.get("temperature", 1.0)), "top_p": float(search.get("top_p", 1.0)),
                           "top_k": int(search.get("top_k", 0)),
                           "repetition_penalty": float(search.get("repetition_penalty", 1.0))}
        # NPU graphs have every dimension fixed: one token per step over a KV of (slots) masked positions.
        past_len = self.input_names["past_key_values.0.key"].shape[2]
        self.static_slots = past_len if isinstance(past_len, int) else None
        if self.static_slots is not None:
            self.context_length = min(self.context_length, self.static_slots + 1)
        self._so = so
        self._init_heads(int(dec["hidden_size"]))
        self._ll_tokenizer = None
        self._kv = None
        self._io = None
        self._multi_io: dict = {}  # output name → an IOBinding for several-token steps over the in-place cache
        self.kv_capacity = 0
        self.pos = 0
        self.rope_pos = 0  # the next text position (M-RoPE models: an image's positions span fewer than its tokens)
        self.ids: list[int] = []
        # Qwen2.5-VL: an image encoder and an embedding merge before the decoder (which takes inputs_embeds)
        self.vision = VisionPath(self.path, model, so) if "vision" in model else None

    def _init_heads(self, hidden: int) -> None:
        """Which heads score what. A pruned head (last position only) scores every position through lm_head.onnx,
        over the same weight bytes. A shortlist head (export/shortlist_head.py): model.onnx's logits are exact for its
        K candidates only; the same shortlist scores several positions from lm_head.shortlist.onnx, the full head from
        lm_head.onnx over the step's hidden state."""
        self._out_index = {o.name: i for i, o in enumerate(self.session.get_outputs())}
        self._heads: dict[str, object] = {}  # head file -> its session, loaded on first use
        meta = self.session.get_modelmeta().custom_metadata_map
        self.shortlist_k = int(meta.get(SHORTLIST_META, 0)) if self.decoder_file == "model.onnx" else 0
        if self.shortlist_k and not (self.path / SHORTLIST_FILE).is_file():
            raise RunnerError(f"{self.path}: model.onnx has a shortlist head but {SHORTLIST_FILE} is missing; rebuild "
                              "the artifact with `edgeqwen build`")
        self._hidden_buf = np.empty((1, 1, hidden), np.float32) if self.shortlist_k else None
        self._last_hidden = None  # the last step's hidden states, where kept (full_row)
        self.full_rows = {"rows": 0, "full": 0}  # full_row calls: the allowed tokens' rows, the full head
        logits_shape = self.session.get_outputs()[self._out_index["logits"]].shape
        self.last_position_only = len(logits_shape) == 3 and logits_shape[1] == 1

    def _open_session(self, file: Path, so, genai: dict, providers):
        """The decoder's session on the providers the artifact names (or on `providers`, asked for explicitly, with no
        silent fallback). `self.providers`: what onnxruntime really gave it; `self.provider_notes`: why that differs
        from what the artifact names (printed to stderr)."""
        explicit = providers is not None
        if explicit:
            wanted, fallback = [providers] if isinstance(providers, str) else list(providers), FALLBACK
        else:
            wanted, fallback = artifact_providers(self.manifest or {}, genai)
        names, self.provider_notes = choose_providers(wanted, fallback, explicit)
        check_runtime(self.manifest or {}, provider_info(names[0]).wheel)
        session = ort.InferenceSession(str(file), so, providers=provider_options(genai, names))
        self.providers = session.get_providers()
        if names[0] not in self.providers:  # onnxruntime itself falls back with only a warning (no adapter/driver)
            why = (f"onnxruntime could not start {names[0]} (no adapter or driver?) and runs on "
                   f"{', '.join(self.providers)}")
            if explicit:
                raise RunnerError(why)
            self.provider_notes.append(why)
        for note in self.provider_notes:
            print(f"edgeqwen: {note}", file=sys.stderr)
        return session

    # ---- layer 1: one forward pass -------------------------------------------------------
    def reset(self) -> None:
        self.pos = 0
        self.rope_pos = 0
        self.ids = []
        if self.static_slots is not None:
            shape = (1, self.kv_heads, self.static_slots, self.head_size)
            self._kv = [(np.zeros(shape, self.kv_dtype), np.zeros(shape, self.kv_dtype)) for _ in range(self.num_layers)]
        elif self.growing_kv:
            empty = np.zeros((1, self.kv_heads, 0, self.head_size), self.kv_dtype)
            self._kv = [(empty, empty) for _ in range(self.num_layers)]
        elif self._kv is None:
            self.reserve(KV_BLOCK)

    def reserve(self, tokens: int) -> None:
        """KV sized to the work: the in-place cache (builder graphs) holds `tokens` positions, rounded up to
        KV_BLOCK and at most the artifact's context; it grows (×2, keeping what it holds) when a sequence needs more.
        A 128+128-token request on Qwen3-0.6B keeps 256 positions, not the recipe's 4096 (≈ 940 MB in fp32)."""
        if self.growing_kv or self.static_slots is not None:
            return
        have = self.kv_capacity
        if have >= tokens:
            return
        want = min(self.context_length, max(-(-tokens // KV_BLOCK) * KV_BLOCK, 2 * have))
        shape = (1, self.kv_heads, want, self.head_size)
        old = self._kv
        new = []
        for i in range(self.num_layers):
            pair = []
            for j in range(2):
                buf = np.zeros(shape, self.kv_dtype)
                if old is not None and self.pos:
                    buf[:, :, :self.pos] = old[i][j].numpy()[:, :, :self.pos]
                pair.append(ort.OrtValue.ortvalue_from_numpy(buf))
            new.append(tuple(pair))
        self._kv = new
        self._io = None  # the decode bindings hold the old buffers
        self._multi_io = {}
        self.kv_capacity = want

    def rollback(self, keep: int) -> None:
        """Forget every position from `keep` on (speculative decoding's rejected drafts). The in-place cache keeps its
        buffers: what lies past `keep` is masked out and overwritten by the next step; a growing cache is cut."""
        if not 0 <= keep <= self.pos:
            raise RunnerError(f"cannot roll back to position {keep}: the sequence holds {self.pos}")
        drop = self.pos - keep
        if drop == 0:
            return
        if self.growing_kv:
            self._kv = [(k[:, :, :keep], v[:, :, :keep]) for k, v in self._kv]
        self.pos, self.rope_pos = keep, self.rope_pos - drop
        del self.ids[keep:]

    def bind_inputs(self, io, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, features=None) -> None:
        """The decoder's inputs besides the KV cache, for [B, S] token ids: input_ids, or (vision artifacts) their
        embeddings with `features` merged at the image placeholders; the mask; the positions ([B, S], or [3, B, S]
        M-RoPE). Runner.step and the batch engine both feed the graph through this."""
        if self.vision is not None:
            io.bind_cpu_input("inputs_embeds", self.vision.embed_rows(ids, features))
        else:
            io.bind_cpu_input("input_ids", np.asarray(ids, dtype=np.int64))
        io.bind_cpu_input("attention_mask", mask)
        if "position_ids" in self.input_names:
            io.bind_cpu_input("position_ids", np.ascontiguousarray(positions))

    def full_head_for(self, s: Sampling) -> bool:
        """Whether decoding with `s` needs the full head's logits at every step, not the shortlist's K candidates:
        sampling without a top-k (or with one over K) reads the whole distribution, and kept logits are checked against
        other engines' full rows. (A constraint reads the full head only at the steps the shortlist cannot decide:
        `lazy_full_head`.)"""
        return bool(self.shortlist_k) and (s.keep_logits or (s.temperature > 0 and not 0 < s.top_k <= self.shortlist_k))

    def lazy_full_head(self, s: Sampling) -> bool:
        """A constrained request on a shortlist head: each step's full row is computed only where the shortlist's own
        picks are not all allowed (Decoding.next); the step's hidden states are kept for it (`full_row`)."""
        return bool(self.shortlist_k) and s.constraint is not None and not self.full_head_for(s)

    def full_row(self, i: int = -1, allowed: np.ndarray | None = None, hidden: np.ndarray | None = None) -> np.ndarray:
        """Logits ([V]) at position i of the last step's fed tokens (a shortlist graph) for every token, or for the
        `allowed` ones where they are at most ROWS_MAX: their exact rows (lm_head.rows.onnx, the candidates'
        arithmetic), every other token MASKED; else the full head's row (lm_head.onnx). `hidden`: other hidden states
        than the last step's (the batch engine's row)."""
        h = self._last_hidden if hidden is None else hidden
        i %= h.shape[1]
        if allowed is not None and 0 < allowed.size <= ROWS_MAX and (self.path / ROWS_FILE).is_file():
            vals = self._head_session(ROWS_FILE).run(None, {"hidden_states": h[:, i:i + 1],
                                                              "ids": allowed.astype(np.int64)[None, None]})[0]
            row = np.full(self.vocab_size, MASKED, np.float32)
            row[allowed] = vals[0, 0]
            self.full_rows["rows"] += 1
            return row
        self.full_rows["full"] += 1
        return self._head(h[:, i:i + 1], full=True)[0, 0]

    def step(self, token_ids, all_logits: bool = False, prepared=None, full_head: bool = False,
             keep_hidden: bool = False) -> np.ndarray:
        """Feed tokens after the current position; return logits of the last one ([V]) or all ([S, V]).
        `prepared` (vision artifacts): `VisionPath.prepare`'s (features, [3, S] positions) for these tokens.
        `full_head`: with a shortlist head, the full head's logits (lm_head.onnx) instead of the decode head's.
        `keep_hidden`: with a shortlist head, keep the fed positions' hidden states for `full_row`."""
        if self._kv is None:
            self.reset()
        n = len(token_ids)
        if n == 0:
            raise RunnerError("step() needs at least one token")
        if self.pos + n > self.context_length:
            raise RunnerError(f"sequence of {self.pos + n} tokens exceeds the artifact's context of {self.context_length}")
        if self.static_slots is not None:
            rows = [self._static_step(int(t)) for t in token_ids]
            return np.stack(rows) if all_logits else rows[-1]
        k = min(self.max_step_tokens or PREFILL_CHUNK, PREFILL_CHUNK)  # some providers take fewer (ProviderInfo)
        if n > k and prepared is None:
            rows, hidden = [], []
            for i in range(0, n, k):
                self._last_hidden = None
                rows.append(self.step(list(token_ids[i:i + k]), all_logits, full_head=full_head, keep_hidden=keep_hidden))
                hidden.append(self._last_hidden)
            if all(h is not None for h in hidden):  # the hidden states a pass kept, over every fed position
                self._last_hidden = np.concatenate(hidden, axis=1)
            return np.concatenate([r.reshape(-1, r.shape[-1]) for r in rows]) if all_logits else rows[-1]
        self.reserve(self.pos + n)
        one_token = n == 1 and not self.growing_kv
        every = self._logits_output(all_logits and n > 1, full_head or keep_hidden)
        if one_token:
            io = self._decode_binding()
        elif self.growing_kv:
            io = self.session.io_binding()
        else:  # several tokens over the in-place cache (prefill chunks, speculative verify steps): KV bound once
            io = self._multi_io.get(every)
            if io is None:
                io = self._multi_io[every] = self.session.io_binding()
                io.bind_output(every, "cpu")  # first, so get_outputs()[0] is it
                self._bind_kv_in_place(io)
            else:  # bound again, so this step's shape is allocated (onnxruntime keeps the last run's value otherwise)
                io.bind_output(every, "cpu")
        feats = None
        if self.vision is not None:
            feats, positions = prepared if prepared is not None else (None, self.vision.text_positions(self.rope_pos, n))
            self.rope_pos = int(positions.max()) + 1
            positions = positions[:, None, :]
        else:
            positions = np.arange(self.pos, self.pos + n, dtype=np.int64)[None]
        self.bind_inputs(io, np.asarray([token_ids], dtype=np.int64), np.ones((1, self.pos + n), dtype=np.int64),
                         positions, feats)
        if one_token:  # KV and logits stay bound between decode steps: only the three small inputs change
            self._run(io)
            self.pos += 1
            self.ids.append(int(token_ids[0]))
            self._last_hidden = self._hidden_buf
            if full_head and self.shortlist_k:
                logits = self._head(self._hidden_buf, full=True)[0]
            else:
                logits = self._logits_buf[0].copy()
            return logits if all_logits else logits[-1]
        if self.growing_kv:
            # first, so get_outputs()[0] is the logits (or, to score a pruned head, the hidden states lm_head.onnx reads)
            io.bind_output(every, "cpu")
            for i, (k, v) in enumerate(self._kv):
                io.bind_cpu_input(f"past_key_values.{i}.key", k)
                io.bind_cpu_input(f"past_key_values.{i}.value", v)
                io.bind_output(f"present.{i}.key", "cpu")
                io.bind_output(f"present.{i}.value", "cpu")
        self._run(io)
        outs = io.get_outputs()
        logits = outs[0].numpy()
        if every == "hidden_states":  # a head file scores them: every position of a pruned head, or the full head
            self._last_hidden = logits
            logits = self._head(logits if all_logits and n > 1 else logits[:, -1:], full=full_head)
        logits = logits[0]
        if self.growing_kv:
            self._kv = [(outs[1 + 2 * i].numpy(), outs[2 + 2 * i].numpy()) for i in range(self.num_layers)]
        self.pos += n
        self.ids.extend(int(t) for t in token_ids)
        return logits if all_logits else logits[-1]

    def _run(self, io) -> None:
        try:
            self.session.run_with_iobinding(io)
        except Exception as exc:  # noqa: BLE001 - a known provider failure becomes a RunnerError saying what to do
            hint = next((h for key, h in KNOWN_RUN_FAILURES.items() if key in str(exc)), None)
            if hint is None:
                raise
            raise RunnerError(f"{self.providers[0]}: {hint} ({str(exc).splitlines()[-1][-160:]})") from None

    def _decode_binding(self):
        """One IOBinding for one-token steps, made once per KV allocation: the in-place KV buffers bound as both past
        and present, the logits into a buffer of ours (no per-step allocation, no fetch of 2 x layers outputs)."""
        if self._io is None:
            io = self.session.io_binding()
            self._bind_kv_in_place(io)
            out = self.session.get_outputs()[self._out_index["logits"]]
            self._logits_buf = np.empty((1, 1, self.vocab_size), np.float16 if "float16" in out.type else np.float32)
            io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self._logits_buf))
            if self._hidden_buf is not None:  # a shortlist head: the full head reads the step's hidden state
                io.bind_ortvalue_output("hidden_states", ort.OrtValue.ortvalue_from_numpy(self._hidden_buf))
            self._io = io
        return self._io

    def _bind_kv_in_place(self, io) -> None:
        """The in-place KV cache: each layer's buffers are both its past input and its present output."""
        for i, (k, v) in enumerate(self._kv):
            io.bind_ortvalue_input(f"past_key_values.{i}.key", k)
            io.bind_ortvalue_input(f"past_key_values.{i}.value", v)
            io.bind_ortvalue_output(f"present.{i}.key", k)
            io.bind_ortvalue_output(f"present.{i}.value", v)

    def _logits_output(self, every_position: bool, hidden: bool = False) -> str:
        """The decoder output a step fetches: its logits, or the hidden states a head file scores (every position of
        a pruned head; `hidden`: a shortlist graph's full head, or its hidden states kept)."""
        if hidden and self.shortlist_k:
            return "hidden_states"
        if not every_position or not self.last_position_only:
            return "logits"
        if "logits_all" in self._out_index:  # artifacts built before lm_head.onnx: a second head inside the graph
            return "logits_all"
        if "hidden_states" not in self._out_index or not (self.path / self.head_file).exists():
            raise RunnerError(f"{self.path}: this graph computes logits for the last position only and the artifact "
                              f"has no {self.head_file} to score every position; rebuild it with `edgeqwen build`")
        return "hidden_states"

    @property
    def scoring_head_loaded(self) -> bool:
        """Whether lm_head.onnx (the every-position scoring head) has been loaded: only scoring loads it."""
        return self.head_file in self._heads

    def _head(self, hidden: np.ndarray, full: bool = False) -> np.ndarray:
        """Logits [B, S, V] of hidden states [B, S, H]: the decode head's (a shortlist graph's lm_head.shortlist.onnx)
        or, `full` or without a shortlist, lm_head.onnx's."""
        file = self.head_file if full or not self.shortlist_k else SHORTLIST_FILE
        return self._head_session(file).run(None, {"hidden_states": hidden})[0]

    def _head_session(self, file: str | None = None):
        """A head file (lm_head.onnx unless named), loaded on first use (its weights are the decoder's, read again).
        Its threads do not spin after a run: they would take the cores from the decoder's next run, which follows at
        once in a speculative verify step (0.5B shape, 2 cores: a 2-token verify 48 → 23 ms)."""
        file = file or self.head_file
        if file not in self._heads:
            so = ort.SessionOptions()
            so.intra_op_num_threads = self._so.intra_op_num_threads
            so.graph_optimization_level = self._so.graph_optimization_level
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if self._int8_graph:
                so.add_session_config_entry("session.x64quantprecision", "1")
            self._heads[file] = ort.InferenceSession(str(self.path / file), so, providers=self.providers)
        return self._heads[file]

    def _static_step(self, token: int) -> np.ndarray:
        """One token through a fixed-shape graph: mask the unfilled KV slots, then store the new KV in slot pos."""
        mask = np.zeros((1, self.static_slots + 1), dtype=np.int64)
        mask[0, :self.pos] = 1
        mask[0, -1] = 1
        feed = {"input_ids": np.array([[token]], dtype=np.int64), "attention_mask": mask,
                "position_ids": np.array([[self.pos]], dtype=np.int64)}
        for i, (k, v) in enumerate(self._kv):
            feed[f"past_key_values.{i}.key"] = k
            feed[f"past_key_values.{i}.value"] = v
        outs = self.session.run(None, feed)
        at = self._out_index
        if self.pos < self.static_slots:  # the context's last token needs no slot: nothing comes after it
            for i, (k, v) in enumerate(self._kv):
                k[:, :, self.pos] = outs[at[f"present.{i}.key"]][:, :, -1]
                v[:, :, self.pos] = outs[at[f"present.{i}.value"]][:, :, -1]
        self.pos += 1
        self.ids.append(token)
        return outs[at["logits"]][0, -1]

    def score(self, token_ids, chunk: int = 512, prepared=None, full_head: bool = True) -> np.ndarray:
        """Logits [S, V] for a fresh sequence (fed in chunks; with `prepared` image inputs, in one step): used by
        accuracy evaluation. `full_head=False`: a shortlist graph's decode head (what decoding picks from)."""
        self.reset()
        if prepared is not None:
            self.reserve(len(token_ids))
            return self.step(list(token_ids), all_logits=True, prepared=prepared, full_head=full_head).astype(np.float32)
        out = [self.step(list(token_ids[i:i + chunk]), all_logits=True, full_head=full_head)
               for i in range(0, len(token_ids), chunk)]
        return np.concatenate(out, axis=0).astype(np.float32)

    def score_heads(self, token_ids, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """A shortlist graph's two heads over one forward pass of a fresh sequence: (the full head's logits [S, V], the
        decode head's [S, V]) — `score` and `score(full_head=False)` without running the decoder twice."""
        self.reset()
        full, short = [], []
        for i in range(0, len(token_ids), chunk):
            full.append(self.step(list(token_ids[i:i + chunk]), all_logits=True, full_head=True).reshape(-1, self.vocab_size))
            short.append(self._head(self._last_hidden)[0])  # the step kept its hidden states
        return (np.concatenate(full, axis=0).astype(np.float32), np.concatenate(short, axis=0).astype(np.float32))

    def default_sampling(self, **given) -> Sampling:
        """A Sampling whose settings the caller left out (None or absent) come from this artifact, as onnxruntime-genai
        takes them: greedy unless the recipe samples (`do_sample`), then its temperature; its top-p, top-k and
        repetition penalty apply whenever a request samples, the repetition penalty always."""
        g = self.generation
        fields = {k: v for k, v in given.items() if v is not None}
        if "temperature" not in fields:
            fields["temperature"] = g["temperature"] if g["do_sample"] else 0.0
        for key in ("top_p", "top_k", "repetition_penalty"):
            fields.setdefault(key, g[key])
        return Sampling(**fields)

    def ll_tokenizer(self):
        """llguidance's view of this artifact's tokenizer (built once; ~1 s on Qwen's 151k vocabulary)."""
        if self._ll_tokenizer is None:
            import llguidance

            self._ll_tokenizer = llguidance.LLTokenizer(str(self.path / "tokenizer.json"), n_vocab=self.vocab_size,
                                                        eos_token=sorted(self.eos_ids))
        return self._ll_tokenizer

    # ---- text helpers ----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: from a JSON "\\ud800" or undecodable command-line bytes
            raise RunnerError(f"text is not valid Unicode at character {exc.start} (a lone surrogate or undecodable "
                              "bytes); send UTF-8 text") from None
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict], enable_thinking: bool | None = None, **kwargs) -> str:
        """The chat prompt; a conversation without a system message gets the recipe's `system_prompt` (e.g.
        Qwen2.5-Math's step-by-step instruction) when it has one, else the template's own default."""
        if not self.chat_template:
            raise RunnerError(f"{self.path}: the artifact has no chat_template.jinja")
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        if self.system_prompt and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return render_chat_template(self.chat_template, messages, add_generation_prompt=True, **kwargs)

    FIM = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")

    def fim_prompt(self, prefix: str, suffix: str) -> str:
        """Fill-in-the-middle (Qwen2.5-Coder): the model writes what goes between `prefix` and `suffix`."""
        missing = [t for t in self.FIM if self.tokenizer.token_to_id(t) is None]
        if missing:
            raise RunnerError(f"this model has no fill-in-the-middle tokens ({', '.join(missing)} not in its "
                              "tokenizer); FIM needs a Qwen2.5-Coder model")
        return f"{self.FIM[0]}{prefix}{self.FIM[1]}{suffix}{self.FIM[2]}"

    # ---- layer 2: streaming ---------------------------------------------------------------
    def check_prompt(self, prompt_ids: list[int], s: Sampling) -> int:
        """Validate a request; return its token budget (what fits in the context after the prompt)."""
        s.validate()
        if not prompt_ids:
            raise RunnerError("the prompt is empty: give at least one token of text")
        if len(prompt_ids) >= self.context_length:
            raise RunnerError(f"the prompt has {len(prompt_ids)} tokens; this artifact's context is {self.context_length} "
                              "(prompt + new tokens must fit): shorten the prompt")
        return min(s.max_new_tokens, self.context_length - len(prompt_ids))

    def stream(self, prompt_ids: list[int], sampling: Sampling | None = None, thinking_open: bool = False,
               images=(), prepared=None, speculate: Drafter | None = None):
        """Generate after `prompt_ids`. `images` (vision artifacts): one per image placeholder in the prompt, in order
        (data URIs, bytes, file paths or PIL images); each placeholder becomes the image's encoded patches.
        `prepared`: what `vision.prepare` already made of them (then `prompt_ids` is its expanded prompt).
        `speculate`: a drafter (`make_drafter`) whose tokens are verified several per forward pass; its `stats`
        count the stream's steps and acceptance."""
        s = sampling or Sampling()
        t0 = time.perf_counter()
        pending = prepared
        if images:
            if self.vision is None:
                raise RunnerError("this artifact has no vision encoder: images need a Qwen2.5-VL artifact")
            prompt_ids, pending = self.vision.prepare(list(prompt_ids), images)
        elif self.vision is not None and pending is None:
            self.vision.check_text_only(prompt_ids)
        budget = self.check_prompt(prompt_ids, s)
        self.reset()
        self.reserve(len(prompt_ids) + budget)  # the whole request at once: no growth while it streams
        if speculate is not None:
            if self.static_slots is not None:
                raise RunnerError("this artifact's graph takes one token per step (static NPU shapes): speculative "
                                  "decoding has nothing to verify in one pass; run without --speculate")
            speculate.start(self, len(prompt_ids) + budget)
        full, lazy = self.full_head_for(s), self.lazy_full_head(s)
        logits = self.step(list(prompt_ids), prepared=pending, full_head=full, keep_hidden=lazy)
        seq = Decoding(self, prompt_ids, s, budget, thinking_open, ttft=time.perf_counter() - t0)
        if speculate is not None:
            yield from self._speculative(seq, logits, speculate, full, lazy)
            return
        while True:
            tok, rec = seq.next(logits, (lambda allowed: self.full_row(-1, allowed)) if lazy else None)
            yield rec
            if rec.finish_reason is not None:
                return
            logits = self.step([tok], full_head=full)

    def _speculative(self, seq: "Decoding", logits: np.ndarray, drafter: Drafter, full_head: bool = False,
                     lazy: bool = False):
        """Draft, then verify the fed token and the draft in one step (`verify_draft`): the draft is kept while it
        agrees with plain decoding's picks and the first pick that differs is the step's own token. Greedy output
        equals plain decoding's; sampled output is drawn from the same distribution (for a drafter that proposes one
        token per position, keeping it when the target's own draw lands on it is the rejection rule), even the same
        tokens for a seed. The rejected positions are rolled back."""
        stats = drafter.stats = SpeculationStats()
        cost = drafter.cost = DraftCost()
        k = drafter.first_k
        tok, rec = seq.next(logits, (lambda allowed: self.full_row(-1, allowed)) if lazy else None)  # the prefill's
        yield rec
        if rec.finish_reason is not None:
            return
        while True:
            t0 = time.perf_counter()
            room = min(self.context_length - self.pos - 1, seq.budget - len(seq.generated) - 1)
            draft = drafter.draft(seq.history, k, room)
            t1 = time.perf_counter()
            rows = self.step([tok, *draft], all_logits=True, full_head=full_head).reshape(-1, self.vocab_size)
            t2 = time.perf_counter()
            emitted = 0
            for tok, rec in verify_draft(seq, rows, draft, self.full_row if lazy else None):
                emitted += 1
                yield rec
            stats.count(len(draft), emitted)
            if rec.finish_reason is not None:
                return
            kept = emitted - 1
            cost.record(len(draft), kept, t1 - t0, t2 - t1)
            self.rollback(self.pos - (len(draft) - kept))
            k = drafter.next_k(k, len(draft), kept)

    # ---- layer 3: convenience ---------------------------------------------------------------
    def generate(self, prompt: str | list[int], sampling: Sampling | None = None, chat: bool = False,
                 enable_thinking: bool | None = None, images=(), speculate: Drafter | None = None) -> Result:
        thinking_open = False
        if isinstance(prompt, str):
            if chat:
                content = prompt if not images else [*({"type": "image"} for _ in images), {"type": "text", "text": prompt}]
                prompt = self.apply_chat_template([{"role": "user", "content": content}], enable_thinking)
                thinking_open = prompt.rstrip().endswith("<think>")
            prompt = self.encode(prompt)
        text, reasoning, ids, last = [], [], [], None
        for rec in self.stream(prompt, sampling, thinking_open=thinking_open, images=images, speculate=speculate):
            text.append(rec.text)
            reasoning.append(rec.reasoning)
            ids.extend(rec.token_ids)
            last = rec
        return Result("".join(text), "".join(reasoning).strip(), ids, last.finish_reason, last.prompt_tokens,
                      last.ttft_s, last.prefill_tps, last.decode_tps)


def _schema_constraint(runner: Runner, path: Path) -> GrammarConstraint:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RunnerError(f"--json-schema {path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise RunnerError(f"--json-schema {path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    try:
        return GrammarConstraint.json_schema(runner, schema)
    except ImportError:
        raise RunnerError("--json-schema needs llguidance: pip install llguidance") from None


def _chat_loop(runner: "Runner", s: "Sampling", think, drafter: "Drafter | None" = None) -> int:
    """--chat: an interactive conversation on stdin/stdout until end of input."""
    history: list[dict] = []
    while True:
        try:
            user = input("> ")
        except EOFError:
            return 0
        history.append({"role": "user", "content": user})
        prompt = runner.apply_chat_template(history, think)
        answer = []
        for rec in runner.stream(runner.encode(prompt), s, thinking_open=prompt.rstrip().endswith("<think>"),
                                 speculate=drafter):
            sys.stdout.write(rec.text)
            sys.stdout.flush()
            answer.append(rec.text)
        print()
        history.append({"role": "assistant", "content": "".join(answer)})


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(prog=prog, description="Run an edgeqwen artifact with onnxruntime only.")
    ap.add_argument("artifact", nargs="?", default=str(here), help="artifact folder (default: this file's folder)")
    ap.add_argument("-p", "--prompt", help="prompt text (chat-formatted unless --raw)")
    ap.add_argument("--chat", action="store_true", help="interactive chat loop")
    ap.add_argument("--raw", action="store_true", help="do not apply the chat template")
    ap.add_argument("--suffix", help="fill in the middle (Qwen2.5-Coder): --prompt is the code before, this after")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    # sampling flags left out take the artifact's defaults (its recipe's generation block, as onnxruntime-genai does)
    ap.add_argument("--temperature", type=float, help="0 = greedy (default: the artifact's)")
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--repetition-penalty", type=float)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-think", action="store_true", help="Qwen3: switch thinking off")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--provider", help="execution provider to run on (webgpu, cuda, qnn, openvino, cpu, ...); default: "
                    "the artifact's own, with its declared CPU fallback when the installed onnxruntime lacks it")
    ap.add_argument("--json-schema", metavar="FILE", help="constrain the answer to JSON valid against this schema "
                    "(needs `pip install llguidance`)")
    ap.add_argument("--image", action="append", metavar="FILE", help="vision artifacts (Qwen2.5-VL): an image file the "
                    "prompt is about; repeat for several (needs Pillow)")
    ap.add_argument("--speculate", metavar="lookup|draft=ARTIFACT", help="speculative decoding, output unchanged: "
                    "`lookup` drafts from n-grams of the prompt and output, `draft=ARTIFACT` with a smaller artifact "
                    "of the same tokenizer; acceptance is printed at the end")
    return ap


def main(argv=None, prog: str | None = None) -> int:
    """`prog`: the command the usage and errors name (`edgeqwen run`, which takes the same flags)."""
    ap = _parser(prog)
    args = ap.parse_args(argv)
    try:
        runner = Runner(args.artifact, threads=args.threads, providers=args.provider)
        s = runner.default_sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                    top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
        s.validate()
        think = False if args.no_think else None
        if args.json_schema:
            if args.chat:
                ap.error("--json-schema constrains one answer: use it with --prompt, not --chat")
            s.constraint = _schema_constraint(runner, Path(args.json_schema))
            think = False if runner.think_ids[0] is not None else think  # a <think> block cannot be constrained
        drafter = make_drafter(args.speculate, args.threads, args.provider) if args.speculate else None
        if args.chat:
            return _chat_loop(runner, s, think, drafter)
        if args.prompt is None:
            ap.error("give --prompt TEXT or --chat")
        images = list(args.image or ())
        if images and (args.chat or args.raw or args.suffix is not None):
            ap.error("--image goes with a chat-formatted --prompt (not --chat, --raw or --suffix)")
        if images and runner.vision is None:
            raise RunnerError("this artifact has no vision encoder: --image needs a Qwen2.5-VL artifact")
        if args.suffix is not None:
            prompt = runner.fim_prompt(args.prompt, args.suffix)
        else:
            content = args.prompt if not images else [*({"type": "image"} for _ in images),
                                                      {"type": "text", "text": args.prompt}]
            prompt = args.prompt if args.raw else runner.apply_chat_template([{"role": "user", "content": content}],
                                                                              think)
        last = None
        for rec in runner.stream(runner.encode(prompt), s, thinking_open=prompt.rstrip().endswith("<think>"),
                                 images=images, speculate=drafter):
            if rec.reasoning:
                sys.stderr.write(rec.reasoning)
            sys.stdout.write(rec.text)
            sys.stdout.flush()
            last = rec
        print()
        print(f"[{last.prompt_tokens} prompt tokens, {last.generated_tokens} generated, finish={last.finish_reason}, "
              f"ttft {last.ttft_s * 1000:.0f} ms, prefill {last.prefill_tps:.1f} tok/s, decode {last.decode_tps:.1f} tok/s, "
              f"on {runner.providers[0]}]",
              file=sys.stderr)
        if drafter is not None:
            st = drafter.stats
            print(f"[speculate {drafter.name}: {st.steps} verify steps, {st.accepted}/{st.drafted} drafted tokens "
                  f"accepted ({st.acceptance * 100:.0f} %), {st.tokens_per_step:.2f} tokens per step, draft cut by "
                  f"its measured cost in {drafter.cost.limited} steps]", file=sys.stderr)
        if s.constraint is not None and last.finish_reason == "length":  # the schema's JSON never closed
            print(f"error: the answer was cut at --max-new-tokens {args.max_new_tokens} before its JSON closed: it is "
                  "not valid JSON. Raise --max-new-tokens, or bound the schema (additionalProperties: false, "
                  "maxItems, maxLength)", file=sys.stderr)
            return 1
        return 0
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
