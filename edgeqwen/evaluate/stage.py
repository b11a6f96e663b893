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
    missed = []
    for name, value, limit, op in checks:
        if limit is None:
            continue
        ok = value <= limit if op == "<=" else value >= limit
        if not ok:
            missed.append(f"{name}: measured {value:.5f}, allowed {op} {limit}")
    return missed


def evaluate_stage(artifact: Path, ckpt: Checkpoint, resolved: Resolved, eval_text: Path | None) -> dict:
    gate = resolved.recipe.accuracy
    summary = evaluate(artifact, ckpt.path, EvalConfig(window=gate.window, max_windows=gate.max_windows, eval_text=eval_text))
    missed = check_gate(summary, gate)
    summary["gate"] = gate.thresholds()
    summary["status"] = "pass" if not missed else "fail"
    summary["missed"] = missed
    write_report(summary, artifact, resolved.recipe.name)
    stage_log("        accuracy vs PyTorch fp32 reference:\n" + format_table(summary))
    if missed:
        raise AccuracyGateError(
            f"accuracy gate missed for recipe {resolved.recipe.name}:\n    " + "\n    ".join(missed),
            where=f"recipe {resolved.recipe.name}, accuracy:",
            hint="nothing was published. Knobs that usually help: " + "; ".join(KNOBS),
            summary=summary,
        )
    keys = ("status", "ppl_ratio", "kld_mean", "kld_p99", "top1", "greedy_match", "gate") + (("vision",) if "vision" in summary else ())
    return {k: summary[k] for k in keys}
