"""Run reference (PyTorch fp32) and candidate (artifact via onnxruntime) on the same token windows."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgeQwenError
from ..log import stage_log
from . import metrics

DEFAULT_EVAL_TEXT = Path(__file__).resolve().parent.parent / "data" / "eval.txt"
GREEDY_PROMPTS = 4
GREEDY_TOKENS = 32


@dataclass(frozen=True)
class EvalConfig:
    window: int = 512
    max_windows: int = 8
    eval_text: Path | None = None
    low_memory: bool | None = None  # the reference in its checkpoint's dtype, a layer at a time in fp32; None: when
    # the fp32 model would not fit the memory available

    def __post_init__(self):
        if self.window < 16 or self.max_windows < 1:
            raise EdgeQwenError(f"an accuracy check needs window >= 16 tokens and at least 1 window (got window "
                                f"{self.window}, max windows {self.max_windows})", where="--window / --max-windows",
                                hint="e.g. --window 512 --max-windows 8")


def load_eval_text(path: Path | None) -> str:
    path = Path(path) if path else DEFAULT_EVAL_TEXT
    if not path.exists():
        raise EdgeQwenError(f"eval text not found: {path}", where="--eval-text", hint="pass an existing UTF-8 text file")
    if not path.is_file():
        raise EdgeQwenError(f"eval text is not a file: {path}", where="--eval-text", hint="pass a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise EdgeQwenError(f"eval text is not UTF-8 (byte {exc.start}): {path}", where="--eval-text",
                            hint="convert it to UTF-8, e.g. iconv -t utf-8") from None
    if not text.strip():
        raise EdgeQwenError(f"eval text is empty: {path}", where="--eval-text", hint="pass a file with a few thousand words of text")
    return text


def _check_reference(reference: Path, artifact: dict) -> None:
    """From the reference's config alone (before any model is run): `artifact` holds the artifact's vocab_size,
    num_layers and kv_heads, as its runner read them."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(reference), local_files_only=True).get_text_config()
    if cfg.vocab_size != artifact["vocab_size"]:
        raise EdgeQwenError(
            f"reference vocabulary ({cfg.vocab_size}) does not match the artifact's ({artifact['vocab_size']})",
            where="--reference", hint="pass the checkpoint the artifact was built from",
        )
    if cfg.num_hidden_layers != artifact["num_layers"] or cfg.num_key_value_heads != artifact["kv_heads"]:
        raise EdgeQwenError(
            f"reference architecture ({cfg.num_hidden_layers} layers, {cfg.num_key_value_heads} KV heads) does not match "
            f"the artifact ({artifact['num_layers']} layers, {artifact['kv_heads']} KV heads)",
            where="--reference", hint="pass the checkpoint the artifact was built from",
        )


def load_reference(path: Path, low_memory: bool = False):
    """The fp32 PyTorch reference. Low-memory: loaded in the checkpoint's own dtype, every decoder layer given fp32
    copies of its weights for its forward (exact: the values came from that dtype) and its own tensors back after it,
    everything else in fp32 — the same arithmetic as the fp32 model in about half its memory for a bf16 checkpoint,
    at a cast per layer per forward."""
    import torch

    from ..architectures import load_reference as load

    torch.manual_seed(0)
    if not low_memory:
        return load(path)
    model = load(path, "auto")
    body = getattr(model.model, "language_model", model.model)
    layer_params = {id(p) for p in body.layers.parameters()}
    for p in model.parameters():  # the embedding, head, norms (a VL model's vision tower): fp32 for good
        if id(p) not in layer_params:
            p.data = p.data.float()
    for layer in body.layers:
        if next(layer.parameters()).dtype != torch.float32:
            layer.register_forward_pre_hook(_to_fp32)
            layer.register_forward_hook(_back)
    return model


_KEPT: dict[int, list] = {}  # a layer in fp32 for its forward → its parameters' own tensors


def _to_fp32(layer, args) -> None:
    params = list(layer.parameters())
    _KEPT[id(layer)] = [p.data for p in params]
    for p in params:
        p.data = p.data.float()


def _back(layer, args, out) -> None:
    for p, kept in zip(layer.parameters(), _KEPT.pop(id(layer))):
        p.data = kept  # the checkpoint's own tensor again: no cast back, the fp32 copy freed


def reference_fits(reference: Path, window: int, windows: int, graphs: int = 1) -> tuple[bool, str]:
    """Whether the fp32 reference fits the memory available now, and why not (for the log)."""
    from ..checkpoint import inspect_checkpoint
    from ..memory import available_mb, evaluate_peaks_mb

    config = inspect_checkpoint(Path(reference)).config  # a VL model's decoder settings brought up from text_config
    (need, low), have = evaluate_peaks_mb(config, window, windows, graphs), available_mb()
    if need <= 0.9 * have or low >= need:
        return True, ""
    return False, (f"the fp32 reference needs about {need:.0f} MB, {have:.0f} MB are available: loaded in the "
                   f"checkpoint's dtype, each layer in fp32 as it runs (about {low:.0f} MB, same numbers, slower)")


def reference_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float().numpy()


def reference_greedy(model, prompts: list[list[int]], n: int) -> list[tuple[list[int], list[float]]]:
    """Per prompt, n greedy tokens after it and the top-2 logit margin each was chosen by. Prompts of one length go
    as one batch (a step per token for all of them: the low-memory reference casts every layer once per step)."""
    import torch

    if len({len(p) for p in prompts}) > 1:
        return [reference_greedy(model, [p], n)[0] for p in prompts]
    tokens: list[list[int]] = [[] for _ in prompts]
    margins: list[list[float]] = [[] for _ in prompts]
    with torch.inference_mode():
        out = model(torch.tensor(prompts), use_cache=True)
        for _ in range(n):
            top = out.logits[:, -1].float().topk(2, dim=-1)
            for row in range(len(prompts)):
                tokens[row].append(int(top.indices[row, 0]))
                margins[row].append(float(top.values[row, 0] - top.values[row, 1]))
            out = model(torch.tensor([[t[-1]] for t in tokens]), past_key_values=out.past_key_values, use_cache=True)
    return list(zip(tokens, margins))


def _eta(t0: float, done: int, total: int) -> str:
    elapsed = time.perf_counter() - t0
    return f"({elapsed:.0f}s, ETA {elapsed / done * (total - done):.0f}s)"


def _score_graph(artifact: Path, graph: str, per_pass: int, chunks: list, half: int, prompts: list) -> tuple:
    """Another decoder graph of the artifact on the evaluation's windows and prompts, fed `per_pass` tokens per pass
    as its users feed it: (its scored half of each window, its greedy continuations)."""
    import gc

    from ..runtime.runner import Runner, Sampling

    other = Runner(artifact, verify=False, providers=["cpu"], decoder_file=graph)
    other.max_step_tokens = per_pass
    t0, scored = time.perf_counter(), []
    for w, chunk in enumerate(chunks):
        scored.append(other.score(chunk)[half - 1:-1].copy())
        stage_log(f"        {graph}: window {w + 1}/{len(chunks)} scored {_eta(t0, w + 1, len(chunks))}")
    greedy = [other.generate(p, Sampling(max_new_tokens=GREEDY_TOKENS, ignore_eos=True)).token_ids for p in prompts]
    del other
    gc.collect()
    return scored, greedy


def _graph_summary(stats: list, wanted: list, greedy: list, per_pass: int) -> dict:
    t = {k: np.concatenate([s[k] for s in stats]) for k in stats[0]}
    got = [metrics.greedy_match(want, cand) for (want, _), cand in zip(wanted, greedy)]
    return {**metrics.summarize_tokens(t), "greedy_match": float(np.mean(got) / GREEDY_TOKENS),
            "greedy_match_tokens": got, "tokens_per_pass": per_pass}


def _score_artifact(runner, chunks: list, half: int) -> tuple[list, list]:
    """The artifact's scored half of each window (the full head's logits) and, for a shortlist head
    (export/shortlist_head.py), what decoding picks from there: its argmax and candidates."""
    t0, cand_all, short_all = time.perf_counter(), [], []
    for w, chunk in enumerate(chunks):
        if runner.shortlist_k:  # both heads over one forward pass
            full, short = runner.score_heads(chunk)
            cand_all.append(full[half - 1:-1].copy())
            short_all.append(metrics.shortlist_candidates(short[half - 1:-1], runner.shortlist_k))
        else:
            cand_all.append(runner.score(chunk)[half - 1:-1].copy())
        stage_log(f"        artifact: window {w + 1}/{len(chunks)} scored {_eta(t0, w + 1, len(chunks))}")
    return cand_all, short_all


def _shortlist_summary(stats: list, k: int, artifact: Path) -> dict:
    import onnx

    from ..export.shortlist_head import ranking_bits

    t = {name: np.concatenate([s[name] for s in stats]) for name in stats[0]}
    bits = ranking_bits(onnx.load(str(artifact / "model.onnx"), load_external_data=False))
    return {"k": k, "ranking_bits": bits, "top1": float(t["top1"].mean()), "recall": float(t["recall"].mean()),
            "mass_mean": float(t["mass"].mean()), "mass_p1": float(np.percentile(t["mass"], 1))}


def evaluate(artifact: Path, reference: Path, cfg: EvalConfig, graphs: dict[str, int] | None = None) -> dict:
    """The artifact's logits first (kept: one window's scored half per window), then the artifact is closed and the
    reference loaded, scoring window by window. One model at a time and one window's full-vocabulary arithmetic at a
    time: on the 3B shape the fp32 reference alone is 12.4 GB. `graphs`: the artifact's other decoder graphs (a web
    artifact's model.wasm.onnx) → the most tokens per pass its users feed it, scored on the same windows and prompts
    against the same reference, that many tokens per pass; each one's numbers under summary["graphs"][file]."""
    import gc

    from ..runtime.runner import Runner, Sampling

    text = load_eval_text(cfg.eval_text)
    runner = Runner(artifact, verify=False, providers=["cpu"])  # the accuracy gate runs on the CPU EP here
    ids = runner.encode(text)
    window = min(cfg.window, runner.context_length)
    if len(ids) < window:
        raise EdgeQwenError(
            f"eval text has {len(ids)} tokens, shorter than one window of {window}",
            where=str(cfg.eval_text or DEFAULT_EVAL_TEXT), hint="use a longer text or a smaller accuracy.window",
        )
    _check_reference(reference, {"vocab_size": runner.vocab_size, "num_layers": runner.num_layers,
                                 "kv_heads": runner.kv_heads})
    n_windows = min(cfg.max_windows, len(ids) // window)
    half = window // 2  # score the second half of each window, with the first half as context (llama.cpp)
    chunks = [ids[w * window:(w + 1) * window] for w in range(n_windows)]
    shortlist, (cand_all, short_all) = runner.shortlist_k, _score_artifact(runner, chunks, half)
    prompts = [ids[p * (len(ids) // GREEDY_PROMPTS):][:32] for p in range(GREEDY_PROMPTS)]
    got_all = [runner.generate(prompt, Sampling(max_new_tokens=GREEDY_TOKENS, ignore_eos=True)).token_ids
               for prompt in prompts]
    vision = runner if runner.vision is not None else None  # image parity needs both models at once
    del runner
    gc.collect()
    others = {g: _score_graph(artifact, g, per_pass, chunks, half, prompts) for g, per_pass in (graphs or {}).items()}
    low_memory = cfg.low_memory
    if low_memory is None:
        fits, why = reference_fits(reference, window, n_windows, 1 + len(others))
        low_memory = not fits
        if why:
            stage_log(f"        reference: {why}")
    model = load_reference(reference, low_memory)
    stats, per_window, short_stats = [], [], []
    other_stats: dict[str, list] = {g: [] for g in others}
    t0 = time.perf_counter()
    for w, chunk in enumerate(chunks):
        ref = reference_logits(model, chunk)[half - 1:-1]
        stats.append(metrics.token_stats(ref, cand_all[w], np.asarray(chunk[half:])))
        short_stats += [metrics.shortlist_stats(ref, cand_all[w], *short_all[w])] if shortlist else []
        cand_all[w] = None  # this window's logits are done with
        for g, (scored, _) in others.items():
            other_stats[g].append(metrics.token_stats(ref, scored[w], np.asarray(chunk[half:])))
            scored[w] = None
        per_window.append(float(stats[-1]["kld"].mean()))
        stage_log(f"        reference: window {w + 1}/{n_windows}: mean KLD {per_window[-1]:.5f} "
                  f"{_eta(t0, w + 1, n_windows)}")
    tokens = {k: np.concatenate([s[k] for s in stats]) for k in stats[0]}
    summary = metrics.summarize_tokens(tokens)
    matches, parted = [], []
    wanted = reference_greedy(model, prompts, GREEDY_TOKENS)
    for (want, margins), got in zip(wanted, got_all):
        matches.append(metrics.greedy_match(want, got))
        parted.append(margins[matches[-1]] if matches[-1] < GREEDY_TOKENS else None)
    if shortlist:
        summary["shortlist"] = _shortlist_summary(short_stats, shortlist, artifact)
    if others:
        summary["graphs"] = {g: _graph_summary(st, wanted, others[g][1], graphs[g]) for g, st in other_stats.items()}
    summary.update(
        greedy_match=float(np.mean(matches) / GREEDY_TOKENS),
        greedy_match_tokens=matches,
        greedy_parting_margins=parted,  # the reference's top-2 margin where each continuation first differs
        windows=n_windows,
        window=window,
        per_window_kld=per_window,
        kld_histogram=np.histogram(np.log10(tokens["kld"] + 1e-12), bins=30, range=(-9, 1))[0].tolist(),
        eval_text=str(cfg.eval_text or "edgeqwen/data/eval.txt"),
        reference_low_memory=bool(low_memory),
    )
    if vision is not None:
        from .vision import image_parity

        summary["vision"] = image_parity(vision, model, ids)
    return summary


def write_report(summary: dict, out_dir: Path, title: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = out_dir / "accuracy.json"
    jpath.write_text(json.dumps(summary, indent=2) + "\n")
    ppath = out_dir / "accuracy.png"
    plot_report(summary, ppath, title)
    return jpath, ppath


def plot_report(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    kl = summary["per_window_kld"]
    a.bar(range(1, len(kl) + 1), kl, color="#4c72b0")
    a.set_xlabel(f"window ({summary['window']} tokens)")
    a.set_ylabel("mean KLD (nats)")
    a.set_title("KLD per eval window")
    edges = np.linspace(-9, 1, 31)
    b.bar(edges[:-1], summary["kld_histogram"], width=edges[1] - edges[0], align="edge", color="#dd8452")
    b.set_xlabel("log10 token KLD")
    b.set_ylabel("tokens")
    b.set_title("distribution of per-token KLD")
    fig.suptitle(f"{title}: PPL ratio {summary['ppl_ratio']:.4f}, mean KLD {summary['kld_mean']:.4f}, "
                 f"top-1 {summary['top1'] * 100:.1f} %, greedy {summary['greedy_match'] * 100:.0f} %", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def format_table(summary: dict) -> str:
    rows = [
        ("PPL reference (fp32 PyTorch)", f"{summary['ppl_reference']:.4f}"),
        ("PPL candidate (artifact)", f"{summary['ppl_candidate']:.4f}"),
        ("PPL ratio", f"{summary['ppl_ratio']:.4f}"),
        ("mean KLD", f"{summary['kld_mean']:.6f}"),
        ("p99 KLD", f"{summary['kld_p99']:.6f}"),
        ("top-1 agreement", f"{summary['top1'] * 100:.2f} %"),
        ("greedy match", f"{summary['greedy_match'] * 100:.1f} % ({summary['greedy_match_tokens']} of {GREEDY_TOKENS})"),
        ("scored tokens", f"{summary['tokens']} ({summary['windows']} windows × {summary['window'] // 2})"),
    ]
    sl = summary.get("shortlist")
    if sl:
        ranked = f"{sl['k']} candidates, {sl.get('ranking_bits', 4)}-bit ranking"
        rows += [(f"shortlist head ({ranked}) top-1", f"{sl['top1'] * 100:.2f} %"),
                 ("shortlist recall", f"{sl['recall'] * 100:.2f} % (full head's top-1 among the candidates)"),
                 ("shortlist mass", f"{sl['mass_mean'] * 100:.2f} % mean, {sl['mass_p1'] * 100:.1f} % at p1 "
                  "(reference probability on the candidates)")]
    v = summary.get("vision")
    if v:
        rows += [("image+text mean KLD", f"{v['kld_mean']:.6f} ({v['images']} images, {v['image_tokens']} image tokens)"),
                 ("image+text top-1", f"{v['top1'] * 100:.2f} % of {v['tokens']} tokens after the images"),
                 ("image features rel. error", f"{v['feature_rel_error']:.5f} (encoder vs PyTorch)")]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)
