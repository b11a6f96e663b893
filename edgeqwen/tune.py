"""`edgeqwen tune`: build quantization variants of a recipe, measure each, package the best within budget.

Each candidate is the recipe with other quantization settings (or precision), built and evaluated by
the normal build (its gate replaced by the budget), then benchmarked briefly with the runner. The
smallest candidate (or the fastest, --objective speed) that meets every budget is published; the
frontier is printed as a table and drawn as PNG (size vs KLD, decode tok/s vs KLD).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .matrix import EXECUTORS, Job, run_jobs
from .quantize.registry import get_algorithm
from .errors import EdgeQwenError
from .log import stage_log
from .recipe import Accuracy, load_recipe
from .schema import to_dict

INT8_CANDIDATE = ("int8", {"algorithm": "rtn", "symmetric": True, "block_size": 32, "lm_head": "same"}, "int8")


def default_grid() -> list[tuple[str, dict, str | None]]:
    """(label, overrides of recipe.quantization, precision or None for the recipe's): every registered algorithm's
    own candidates, llama.cpp-style int8 first/last layers for rtn and gptq, and int8."""
    from .quantize.registry import algorithms

    grid = [(c.label, {"algorithm": spec.name, **c.settings}, None) for spec in algorithms() for c in spec.tune]
    return grid + [ends_in_int8(), ends_in_int8("gptq"), INT8_CANDIDATE]


BUDGET_KEYS = {"kld": "max_kld", "ppl_ratio": "max_ppl_ratio", "top1": "min_top1", "kld_p99": "max_kld_p99"}


def parse_budget(text: str) -> Accuracy:
    values = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in BUDGET_KEYS:
            raise EdgeQwenError(f"unknown budget metric {key!r}", where="--budget", hint=f"known: {', '.join(BUDGET_KEYS)}")
        try:
            values[BUDGET_KEYS[key]] = float(value)
        except ValueError:
            raise EdgeQwenError(f"budget {key} needs a number, got {value!r}", where="--budget") from None
    if not values:
        raise EdgeQwenError("empty budget", where="--budget", hint="e.g. --budget kld=0.02,top1=0.9")
    try:
        return Accuracy(**values)
    except ValueError as exc:  # the recipe gate's own range checks (a negative KLD, top-1 given in percent)
        raise EdgeQwenError(f"budget: {exc}", where="--budget",
                            hint="kld, kld_p99 and ppl_ratio are numbers >= 0; top1 is a share in [0, 1] (top1=0.9, "
                            "not 90)") from None


@dataclass
class Candidate:
    label: str
    path: Path
    size_mb: float
    accuracy: dict
    decode_tps: float
    meets: bool


def _decode_tps(path: Path) -> float:
    from .runtime.runner import Runner, Sampling

    runner = Runner(path, verify=False, providers=["cpu"])  # tuning measures the CPU kernels
    ids = runner.encode("The assert statement is a convenient way to insert debugging assertions")
    runner.generate(ids, Sampling(max_new_tokens=8, ignore_eos=True))
    return runner.generate(ids, Sampling(max_new_tokens=48, ignore_eos=True)).decode_tps


def ends_in_int8(algorithm: str = "rtn") -> tuple:
    """llama.cpp-style mixed precision: first and last decoder layer in int8, the rest int4."""
    return (f"{algorithm}-asym-b32-int8head-int8ends",
            {"algorithm": algorithm, "symmetric": False, "block_size": 32, "lm_head": "int8",
             "overrides": {"/model/layers.{first}/*": {"bits": 8}, "/model/layers.{last}/*": {"bits": 8}}}, None)


def tune(recipe: str, model: str | None, budget: Accuracy, output: Path, objective: str = "size",
         force: bool = False, grid=None, executor: str = "local", workers: int = 1,
         ray_address: str | None = None) -> tuple[Candidate, list[Candidate]]:
    """Candidates build on `executor` (a local process pool, or Ray: see matrix.run_jobs); their decode
    speed is measured afterwards, one at a time, so parallel builds do not skew it."""
    base = load_recipe(recipe)
    if output.exists() and not force:
        raise EdgeQwenError(f"output folder already exists: {output}", where=str(output), hint="pass --force")
    if grid is None:
        grid = default_grid()
    work = Path(tempfile.mkdtemp(prefix=".tune-", dir=output.parent if output.parent.exists() else None))
    gate_keys = budget.thresholds()
    candidates: list[Candidate] = []
    try:
        jobs, labels = [], []
        for label, quant, precision in grid:
            prec = precision or base.recipe.precision.value
            if prec not in [p.value for p in base.target.precisions]:
                continue
            data = to_dict(base.recipe)
            data.pop("name")
            data["precision"] = prec
            data["quantization"] = {**data["quantization"], "overrides": {}, **quant}  # each candidate self-contained
            if prec not in get_algorithm(data["quantization"]["algorithm"]).precisions:
                data["quantization"]["algorithm"] = "rtn"
            data["accuracy"] = {**data["accuracy"], **{k: None for k in BUDGET_KEYS.values()}}  # measure, don't gate
            variant = work / f"{label}.yaml"
            variant.write_text(yaml.safe_dump(data, sort_keys=False))
            jobs.append(Job(str(variant), str(work / label), model, True))
            labels.append(label)
        stage_log(f"tune: building {len(jobs)} candidates on the {executor} executor ({', '.join(labels)})")
        from .evaluate.stage import check_gate

        for label, res in zip(labels, run_jobs(jobs, executor, workers, ray_address)):
            if not res.ok:
                stage_log(f"tune: candidate {label} failed to build, skipped: {res.error.splitlines()[0]}")
                continue
            out = Path(res.output)
            acc = json.loads((out / "accuracy.json").read_text())
            size = json.loads((out / "manifest.json").read_text())["size_bytes"] / 1e6
            candidates.append(Candidate(label, out, size, acc, _decode_tps(out), not check_gate(acc, budget)))
            stage_log(f"tune: {label}: {size:.2f} MB, KLD {acc['kld_mean']:.4f}, {candidates[-1].decode_tps:.1f} tok/s")
        if not candidates:
            raise EdgeQwenError("no tune candidate could be built", where=recipe, hint="see the errors above")
        write_frontier(candidates, work / "frontier.png", base.recipe.name, gate_keys)
        chosen = select(candidates, budget, objective)
        shutil.copy(work / "frontier.png", chosen.path / "tune_frontier.png")
        (chosen.path / "tune.json").write_text(json.dumps(
            {"budget": gate_keys, "objective": objective, "chosen": chosen.label,
             "candidates": [{"label": c.label, "size_mb": c.size_mb, "decode_tps": c.decode_tps, "meets": c.meets,
                             **{k: c.accuracy[k] for k in ("ppl_ratio", "kld_mean", "kld_p99", "top1")}} for c in candidates]},
            indent=2))
        from .package import add_to_manifest

        add_to_manifest(chosen.path, ["tune.json", "tune_frontier.png"])
        if output.exists():
            shutil.rmtree(output)
        shutil.move(str(chosen.path), output)
        chosen = dataclasses.replace(chosen, path=output)
        return chosen, candidates
    finally:
        shutil.rmtree(work, ignore_errors=True)


def select(candidates: list[Candidate], budget: Accuracy, objective: str = "size") -> Candidate:
    """The smallest (or fastest) candidate whose measured accuracy meets `budget`; none meeting it is an error that
    names the best one found and prints the frontier."""
    from .evaluate.stage import check_gate

    passing = [c for c in candidates if not check_gate(c.accuracy, budget)]
    if not passing:
        best = min(candidates, key=lambda c: c.accuracy["kld_mean"])
        raise EdgeQwenError(
            f"no candidate meets the budget {budget.thresholds()}; best found: {best.label} "
            f"(KLD {best.accuracy['kld_mean']:.4f}, PPL ratio {best.accuracy['ppl_ratio']:.4f}, "
            f"top-1 {best.accuracy['top1']:.3f}, {best.size_mb:.2f} MB)\n{format_frontier(candidates)}",
            where="--budget", hint="loosen the budget, or try precision int8 / another model",
        )
    key = (lambda c: c.size_mb) if objective == "size" else (lambda c: -c.decode_tps)
    return min(passing, key=key)


def format_frontier(cands: list[Candidate]) -> str:
    lines = ["| candidate | size MB | PPL ratio | mean KLD | top-1 | decode tok/s | meets budget |", "|---|---|---|---|---|---|---|"]
    for c in sorted(cands, key=lambda c: c.size_mb):
        a = c.accuracy
        lines.append(f"| {c.label} | {c.size_mb:.2f} | {a['ppl_ratio']:.4f} | {a['kld_mean']:.4f} | {a['top1'] * 100:.1f} % | "
                     f"{c.decode_tps:.1f} | {'yes' if c.meets else 'no'} |")
    return "\n".join(lines)


def write_frontier(cands: list[Candidate], path: Path, title: str, budget: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (xlabel, xs) in zip(axes, [("artifact size (MB)", [c.size_mb for c in cands]),
                                       ("decode tok/s (runner)", [c.decode_tps for c in cands])]):
        for c, x in zip(cands, xs):
            ax.scatter(x, c.accuracy["kld_mean"], color="#2a9d8f" if c.meets else "#e76f51")
            ax.annotate(c.label, (x, c.accuracy["kld_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if "max_kld" in budget:
            ax.axhline(budget["max_kld"], color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean KLD vs fp32 reference")
        ax.set_yscale("log")
    fig.suptitle(f"tune {title}: green meets the budget {budget}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def cmd_tune(args) -> int:
    from .matrix import check_workers

    check_workers(args.workers)
    chosen, cands = tune(args.recipe, args.model, parse_budget(args.budget), Path(args.output).absolute(),
                         objective=args.objective, force=args.force, executor=args.executor, workers=args.workers,
                         ray_address=args.ray_address)
    print(format_frontier(cands))
    print(f"chose {chosen.label} ({args.objective}): {chosen.size_mb:.2f} MB, KLD {chosen.accuracy['kld_mean']:.4f} → {chosen.path}")
    return 0


def add_tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="build quantization variants, keep the smallest/fastest within an accuracy budget")
    p.add_argument("recipe")
    p.add_argument("--model")
    p.add_argument("--budget", required=True, help="e.g. kld=0.02,top1=0.9,ppl_ratio=1.03")
    p.add_argument("--objective", choices=["size", "speed"], default="size")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--force", action="store_true")
    p.add_argument("--executor", choices=EXECUTORS, default="local", help="where candidates build (default: local)")
    p.add_argument("--workers", type=int, default=1, help="parallel builds (local pool size / Ray CPUs)")
    p.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one)")
    p.set_defaults(fn=cmd_tune)
