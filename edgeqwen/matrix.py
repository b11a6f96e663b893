"""`edgeqwen build-all`: many recipes (× models) at once on a local process pool or a Ray cluster.

Each job is an ordinary `build()` in its own worker process, so results are the same artifacts a
local run makes (builds are reproducible byte for byte); a failed job is reported without stopping
the others.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgeQwenError

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Job:
    recipe: str
    output: str
    model: str | None = None
    evaluate: bool = True


@dataclass(frozen=True)
class JobResult:
    recipe: str
    output: str
    ok: bool
    size_mb: float = 0.0
    accuracy: str = ""
    error: str = ""


def run_job(job: Job) -> JobResult:
    """One build, in whatever process the executor gives it (must stay importable at top level)."""
    os.environ.setdefault("EDGEQWEN_QUIET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .build import BuildOptions, build
    from .package import read_manifest

    try:
        out = build(BuildOptions(job.recipe, Path(job.output), model=job.model, force=True, evaluate=job.evaluate))
    except EdgeQwenError as exc:
        return JobResult(job.recipe, job.output, False, error=str(exc))
    manifest = read_manifest(out)
    acc = manifest.get("accuracy", {})
    summary = (f"KLD {acc['kld_mean']:.4f}, top-1 {acc['top1'] * 100:.1f} %" if "kld_mean" in acc else acc.get("status", ""))
    return JobResult(job.recipe, str(out), True, manifest["size_bytes"] / 1e6, summary)


def run_jobs(jobs: list[Job], executor: str = "local", workers: int = 2, ray_address: str | None = None) -> list[JobResult]:
    if executor not in EXECUTORS:
        raise EdgeQwenError(f"unknown executor {executor!r}", where="--executor", hint=f"known: {', '.join(EXECUTORS)}")
    if executor == "local":
        # spawn, not fork: a parent that already ran torch/onnxruntime threads can deadlock a forked child
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(run_job, jobs))
    try:
        import ray
    except ImportError:
        raise EdgeQwenError("the ray executor needs Ray", where="--executor ray", hint="pip install 'ray==2.60.0'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_address, num_cpus=None if ray_address else workers, include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": {
                     "EDGEQWEN_QUIET": "1", "HF_HUB_OFFLINE": "1",
                     **{k: v for k, v in os.environ.items() if k.startswith("EDGEQWEN_")}}})
    try:
        remote = ray.remote(num_cpus=1)(run_job)
        return ray.get([remote.remote(job) for job in jobs])
    finally:
        if started:
            ray.shutdown()


def check_workers(workers: int) -> None:
    """--workers before any work (a pool of 0 was a ValueError traceback after the first log lines)."""
    if workers < 1:
        raise EdgeQwenError(f"--workers {workers} must be at least 1", where="--workers",
                            hint="the number of builds at once: 1 on a small machine, up to its cores")


def preflight(recipes: list[str], models: list[str | None]) -> None:
    """Every recipe and local model folder resolved before the first job starts: a typo is the usual error (exit 2),
    not one failed job among builds that went on, and nothing is written."""
    from .checkpoint import looks_like_hub_id, resolve_checkpoint
    from .recipe import load_recipe

    for recipe in dict.fromkeys(recipes):
        load_recipe(recipe)
    for model in dict.fromkeys(m for m in models if m):
        if not looks_like_hub_id(model) or Path(model).expanduser().exists():
            resolve_checkpoint(model)


def cmd_build_all(args) -> int:
    check_workers(args.workers)
    models = args.model or [None]
    preflight(args.recipes, models)
    jobs = []
    for recipe in args.recipes:
        for model in models:
            name = recipe.replace("/", "-") + (f"@{Path(model).name}" if model and len(models) > 1 else "")
            jobs.append(Job(recipe, str(Path(args.output) / name), model, not args.no_eval))
    results = run_jobs(jobs, args.executor, args.workers, args.ray_address)
    width = max(len(r.recipe) for r in results)
    for r in results:
        status = f"{r.size_mb:8.2f} MB  {r.accuracy}" if r.ok else "FAILED: " + r.error.splitlines()[0]
        print(f"{r.recipe:<{width}}  {status}  {r.output if r.ok else ''}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"\n{r.recipe}:\n{r.error}")
    return 1 if failed else 0


def add_build_all_parser(sub) -> None:
    p = sub.add_parser("build-all", help="build many recipes (× models) on a local process pool or Ray")
    p.add_argument("recipes", nargs="+")
    p.add_argument("--model", action="append", help="checkpoint for every recipe (repeat for several)")
    p.add_argument("-o", "--output", required=True, help="folder that receives one artifact per job")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--no-eval", action="store_true")
    p.set_defaults(fn=cmd_build_all)
