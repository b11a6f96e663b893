"""The build's accuracy stage: measure, store the report in the artifact, enforce the recipe's gate."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import Checkpoint
from ..errors import AccuracyGateError
from ..log import stage_log
from ..recipe import Accuracy, Resolved
from .core import EvalConfig, evaluate, format_table, write_report

KNOBS = ("smaller quantization.block_size (e.g. 32 or 16)", "quantization.symmetric: false",
         "quantization.lm_head: int8", "quantization.algorithm: k_quant", "precision: int8")


def check_gate(summary: dict, gate: Accuracy) -> list[str]:
    """Return one line per missed threshold (empty list = pass)."""
    checks = [
        ("PPL ratio", summary["ppl_ratio"], gate.max_ppl_ratio, "<="),
        ("mean KLD", summary["kld_mean"], gate.max_kld, "<="),
        ("p99 KLD", summary["kld_p99"], gate.max_kld_p99, "<="),
        ("top-1 agreement", summary["top1"], gate.min_top1, ">="),
    ]
    if summary.get("vision"):  # the image+text positions of a VL artifact meet the same KLD bar
        checks.append(("image+text mean KLD", summary["vision"]["kld_mean"], gate.max_kld, "<="))
    return _missed(checks)


def check_shortlist(summary: dict, gate: Accuracy) -> list[str]:
    """A shortlist head's lines (export/shortlist_head.py): what decoding picks from meets the top-1 bar, and the
    candidates hold the full head's top-1 (empty list = pass, or no shortlist)."""
    sl = summary.get("shortlist")
    if not sl:
        return []
    return _missed([("shortlist head's top-1 agreement", sl["top1"], gate.min_top1, ">="),
                    (f"shortlist recall (full head's top-1 among the {sl['k']} candidates)", sl["recall"],
                     gate.min_shortlist_recall, ">=")])


def _missed(checks: list) -> list[str]:
    missed = []
    for name, value, limit, op in checks:
        if limit is None:
            continue
        ok = value <= limit if op == "<=" else value >= limit
        if not ok:
            missed.append(f"{name}: measured {value:.5f}, allowed {op} {limit}")
    return missed


def _other_graphs(artifact: Path) -> dict[str, int]:
    """The artifact's other decoder graphs → the tokens per pass they are scored at (their users' passes)."""
    from ..web.wasm_graph import PASS_TOKENS, WASM_GRAPH

    return {WASM_GRAPH: PASS_TOKENS} if (artifact / WASM_GRAPH).exists() else {}


def _gate_other_graphs(artifact: Path, summary: dict, gate: Accuracy) -> None:
    """Each other decoder graph meets the recipe's gate on its own or leaves the artifact (a web page's WebAssembly
    graph: the page then runs the decoder there, at MatMulNBits' slow WebAssembly speed); said in the log and report."""
    from ..web.bundle import refresh_web_config
    from ..web.wasm_graph import drop_wasm_graph

    for g, numbers in summary.get("graphs", {}).items():
        missed = check_gate(numbers, gate)
        numbers["status"] = "pass" if not missed else "dropped"
        numbers["missed"] = missed
        stage_log(f"        {g} ({numbers['tokens_per_pass']} tokens per pass): PPL ratio {numbers['ppl_ratio']:.4f}, "
                  f"mean KLD {numbers['kld_mean']:.5f}, p99 KLD {numbers['kld_p99']:.4f}, top-1 {numbers['top1']:.1%}, "
                  f"greedy match {numbers['greedy_match']:.1%}: "
                  + ("pass" if not missed else "missed the gate (" + "; ".join(missed) + "): dropped, the page runs "
                     "the decoder graph on WebAssembly"))
        if missed:
            drop_wasm_graph(artifact)
            refresh_web_config(artifact)


def _gate_shortlist(artifact: Path, summary: dict, gate: Accuracy, checkpoint: Path, measure) -> dict:
    """A shortlist head that misses its lines gets a 4-bit ranking copy in place of a 2-bit one and is measured again
    (`measure()`: a new summary), then, missing still, leaves the artifact (decoding reads the full head, which met the
    gate); said in the log and the report (`tried`: the copies that missed). Its greedy-match figure was measured with
    the shortlist. Returns the summary in force."""
    from ..export.shortlist_head import drop_shortlist, set_ranking_bits

    tried = []
    while True:
        sl = summary.get("shortlist")
        if not sl:
            return summary
        missed = check_shortlist(summary, gate)
        head = (f"        shortlist head ({sl['k']} candidates, {sl.get('ranking_bits', 4)}-bit ranking): top-1 "
                f"{sl['top1']:.1%}, recall {sl['recall']:.2%}: ")
        if not missed or sl.get("ranking_bits") != 2:
            break
        stage_log(head + "missed (" + "; ".join(missed) + "): the ranking copy is requantized to 4 bits and measured "
                  "again")
        tried.append({k: sl[k] for k in ("ranking_bits", "top1", "recall")} | {"missed": missed})
        set_ranking_bits(artifact, checkpoint, 4)
        summary = measure()
    sl["status"], sl["missed"], sl["tried"] = ("pass" if not missed else "dropped"), missed, tried
    stage_log(head + ("pass" if not missed else "missed (" + "; ".join(missed) + "): dropped, decoding reads the full "
                      "head"))
    if missed:
        drop_shortlist(artifact)
    return summary


def evaluate_stage(artifact: Path, ckpt: Checkpoint, resolved: Resolved, eval_text: Path | None) -> dict:
    gate = resolved.recipe.accuracy

    def measure() -> dict:
        return evaluate(artifact, ckpt.path, EvalConfig(window=gate.window, max_windows=gate.max_windows,
                                                        eval_text=eval_text), graphs=_other_graphs(artifact))

    summary = measure()
    missed = check_gate(summary, gate)
    if not missed:
        summary = _gate_shortlist(artifact, summary, gate, ckpt.path, measure)
        missed = check_gate(summary, gate)  # measured again with a 4-bit ranking: the full head's numbers are the same
    summary["gate"] = gate.thresholds()
    if summary.get("shortlist") and gate.min_shortlist_recall is not None:
        summary["gate"]["min_shortlist_recall"] = gate.min_shortlist_recall
    summary["status"] = "pass" if not missed else "fail"
    summary["missed"] = missed
    if not missed:
        _gate_other_graphs(artifact, summary, gate)
    write_report(summary, artifact, resolved.recipe.name)
    stage_log("        accuracy vs PyTorch fp32 reference:\n" + format_table(summary))
    if missed:
        raise AccuracyGateError(
            f"accuracy gate missed for recipe {resolved.recipe.name}:\n    " + "\n    ".join(missed),
            where=f"recipe {resolved.recipe.name}, accuracy:",
            hint="nothing was published. Knobs that usually help: " + "; ".join(KNOBS),
            summary=summary,
        )
    keys = ("status", "ppl_ratio", "kld_mean", "kld_p99", "top1", "greedy_match", "gate") + \
        tuple(k for k in ("vision", "graphs", "shortlist") if k in summary)
    return {k: summary[k] for k in keys}
