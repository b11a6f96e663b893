"""`edgeqwen` command line: each verb is a plain function plus a small parser."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_INTERRUPTED, CheckFailed, EdgeQwenError
from .runtime.runner import RunnerError

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")

DEFAULT_RECIPE = "tiny-qwen2/cpu-x86_64-int4"
def _emit_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def cmd_recipes(args) -> int:
    from .recipe import known_recipes, load_recipe

    if args.action == "show":
        if not args.name:
            raise EdgeQwenError("`edgeqwen recipes show` needs a recipe name", hint="`edgeqwen recipes` lists them")
        import yaml

        data = load_recipe(args.name).as_dict()
        if args.json:
            _emit_json(data)
        else:
            print(yaml.safe_dump(data, sort_keys=False), end="")
        return 0
    rows = []
    for name in known_recipes():
        r = load_recipe(name)
        q = r.recipe.quantization
        rows.append((name, r.recipe.model, r.recipe.precision.value, f"{q.algorithm}/b{r.block_size}", r.recipe.context_length))
    if args.json:
        _emit_json([{"recipe": n, "model": m, "precision": p, "quantization": qz, "context_length": c}
                    for n, m, p, qz, c in rows])
        return 0
    width = max(len(r[0]) for r in rows)
    print(f"{'recipe':<{width}}  {'precision':<9}  {'quant':<12}  {'context':>7}  model")
    for name, model, prec, quant, ctx in rows:
        print(f"{name:<{width}}  {prec:<9}  {quant:<12}  {ctx:>7}  {model}")
    return 0


def cmd_build(args) -> int:
    from .build import BuildOptions, build

    out = build(BuildOptions(recipe=args.recipe, output=Path(args.output), model=args.model, force=args.force,
                             evaluate=not args.no_eval, eval_text=Path(args.eval_text) if args.eval_text else None,
                             keep_failed=args.keep_failed, low_memory=args.low_memory,
                             calib=Path(args.calib) if args.calib else None, name=args.name))
    print(out)
    return 0


def runtime_here(artifact: Path, provider: str | None = None) -> dict:
    """Can this machine run the artifact? Its providers and onnxruntime floor against the installed onnxruntime."""
    import onnxruntime

    from .package import read_manifest
    from .runtime.runner import RunnerError, artifact_providers, check_runtime, choose_providers

    manifest = read_manifest(artifact)
    genai = json.loads((artifact / "genai_config.json").read_text())
    wanted, fallback = ([provider], None) if provider else artifact_providers(manifest, genai)
    out = {"onnxruntime": onnxruntime.__version__, "providers": wanted, "fallback": fallback,
           "min_onnxruntime": (manifest.get("runtime") or {}).get("min_onnxruntime"), "problems": [],
           "decode_head": _decode_head(artifact, manifest)}
    try:
        out["session_providers"], out["notes"] = choose_providers(wanted, fallback, explicit=provider is not None)
        check_runtime(manifest)
    except RunnerError as exc:
        out["problems"].append(str(exc))
    return out


def _decode_head(artifact: Path, manifest: dict) -> dict:
    """What decoding reads: the full head, or a shortlist of K candidates and its ranking copy's bits
    (export/shortlist_head.py): the plan's, where its graph file is there (a shortlist that missed its gate left the
    artifact), the bits the accuracy stage kept. From the manifest: no onnx needed."""
    from .runtime.runner import SHORTLIST_FILE

    head = ((manifest.get("export") or {}).get("plan") or {}).get("head", {})
    if not (artifact / SHORTLIST_FILE).is_file() or not head.get("shortlist"):
        return {"shortlist": 0}
    measured = (manifest.get("accuracy") or {}).get("shortlist") or {}  # the accuracy stage may have raised 2 bits to 4
    return {"shortlist": head["shortlist"], "ranking_bits": measured.get("ranking_bits", head.get("shortlist_bits", 4))}


def cmd_verify(args) -> int:
    from .package import verify_artifact

    if not Path(args.artifact).is_dir():
        raise EdgeQwenError(f"no artifact folder at {args.artifact}", where=str(args.artifact),
                            hint="pass the folder `edgeqwen build -o` wrote")
    problems = verify_artifact(Path(args.artifact))
    runtime = runtime_here(Path(args.artifact), args.provider)
    bad = {k: v for k, v in problems.items() if v}
    if args.json:
        _emit_json({"artifact": args.artifact, "ok": not bad and not runtime["problems"], **problems, "runtime": runtime})
        return EXIT_CHECK_FAILED if bad or runtime["problems"] else 0
    for note in runtime.get("notes") or ():
        print(f"NOTE: {note}")
    k = runtime["decode_head"]["shortlist"]
    if k:
        bits = runtime["decode_head"]["ranking_bits"]
        print(f"NOTE: decoding reads a shortlist head: the top {k} of a {bits}-bit ranking, scored by the int8 head's rows "
              "(edgeqwen's runner and server read the full head where a request needs it; onnxruntime-genai's own "
              "grammar-guided generation sees only the candidates)")
    for problem in runtime["problems"]:
        print(f"RUNTIME: {problem}")
    if not bad and not runtime["problems"]:
        print(f"OK: {args.artifact}: every file matches manifest.json; runs here on "
              f"{runtime['session_providers'][0]} (onnxruntime {runtime['onnxruntime']}, "
              f"needs >= {runtime['min_onnxruntime'] or 'unrecorded'})")
        return 0
    for kind, files in bad.items():
        for f in files:
            print(f"{kind.upper()}: {f}")
    print(f"FAILED: {args.artifact} " + ("does not match its manifest" if bad else "cannot run here as installed"),
          file=sys.stderr)
    return EXIT_CHECK_FAILED


def cmd_run(args) -> int:
    from .runtime.runner import main as runner_main

    argv = [args.artifact, "--max-new-tokens", str(args.max_new_tokens)]
    for flag in ("temperature", "top_k", "top_p", "repetition_penalty", "threads", "prompt", "suffix"):
        if getattr(args, flag) is not None:
            argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    if args.chat:
        argv.append("--chat")
    if args.raw:
        argv.append("--raw")
    if args.no_think:
        argv.append("--no-think")
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    if args.json_schema:
        argv += ["--json-schema", args.json_schema]
    for image in args.image or ():
        argv += ["--image", image]
    if args.provider:
        argv += ["--provider", args.provider]
    if args.speculate:
        argv += ["--speculate", args.speculate]
    return runner_main(argv, prog="edgeqwen run")


def cmd_plan(args) -> int:
    from .checkpoint import resolve_checkpoint
    from .memory import available_mb, build_peak_mb, estimate, evaluate_peaks_mb
    from .planner import plan as make_plan
    from .recipe import load_recipe

    resolved = load_recipe(args.recipe)
    ckpt = resolve_checkpoint(args.model or resolved.recipe.model)
    plan = make_plan(resolved, ckpt, low_memory=args.low_memory)
    from .planner.cost import estimate as estimate_time, long_build_advice

    est = estimate(plan, resolved, ckpt.config)
    eta = estimate_time(plan, resolved, ckpt.config)
    fits = est.total_mb <= est.budget_mb
    gate = resolved.recipe.accuracy
    ref_fp32, ref_low = evaluate_peaks_mb(ckpt.config, gate.window, gate.max_windows,
                                          2 if resolved.target.web_max_file_mb is not None else 1)
    build_mem = {"export": round(build_peak_mb(ckpt.config, plan.low_memory)),
                 "export_low_memory": round(build_peak_mb(ckpt.config, True)),
                 "evaluate": round(ref_fp32), "evaluate_low_memory": round(ref_low),
                 "available": round(available_mb())}
    if args.json:
        _emit_json({"recipe": resolved.recipe.name, "model": ckpt.source, "architecture": ckpt.architecture,
                    "target": resolved.target.name, "memory_mb": est.as_dict(), "fits": fits,
                    "build_time": eta.as_dict(), "build_memory_mb": build_mem, "plan": plan.to_json()})
        return 0 if fits else EXIT_CHECK_FAILED
    print(f"{resolved.recipe.name} on {ckpt.source} ({ckpt.architecture}) for target {resolved.target.name}:")
    print(est.table())
    print(f"  build {eta.line()}")
    low = "" if plan.low_memory else (f" (the build switches to the low-memory path, ~{build_mem['export_low_memory']}"
                                      " MB, where the normal one does not fit)")
    low_ref = ("" if build_mem["evaluate_low_memory"] >= build_mem["evaluate"] else
               f", ~{build_mem['evaluate_low_memory']} MB with it kept in the checkpoint's dtype where that does not fit")
    print(f"  build memory on this machine: export ~{build_mem['export']} MB{low}, accuracy stage "
          f"~{build_mem['evaluate']} MB (the fp32 reference{low_ref}); {build_mem['available']} MB available")
    if advice := long_build_advice(eta):
        print(f"  note: {advice}")
    for d in plan.decisions:
        print(f"  plan: {d}")
    return 0 if fits else EXIT_CHECK_FAILED


def cmd_tiny(args) -> int:
    from .tiny import TinySpec, create_tiny_qwen

    spec = TinySpec(family=args.family, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                    num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads)
    print(create_tiny_qwen(args.output, spec, force=args.force))
    return 0


def _add_run_parser(sub) -> None:
    """`run`: the artifact runner's own flags (runtime/runner.py's parser), forwarded by cmd_run."""
    p = sub.add_parser("run", help="generate text with the minimal onnxruntime runner")
    p.add_argument("artifact")
    p.add_argument("-p", "--prompt")
    p.add_argument("--chat", action="store_true")
    p.add_argument("--raw", action="store_true")
    p.add_argument("--no-think", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, help="default: the artifact's (greedy unless its recipe samples)")
    p.add_argument("--top-k", type=int, help="default: the artifact's")
    p.add_argument("--top-p", type=float, help="default: the artifact's")
    p.add_argument("--repetition-penalty", type=float, help="default: the artifact's")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="intra-op threads (default: the artifact's, else the library's)")
    p.add_argument("--suffix", help="fill in the middle (Qwen2.5-Coder): --prompt is the code before, this after")
    p.add_argument("--json-schema", metavar="FILE", help="constrain the answer to JSON valid against this schema")
    p.add_argument("--image", action="append", metavar="FILE", help="Qwen2.5-VL artifacts: an image the prompt asks "
                   "about (repeat for several; they come before the prompt's text)")
    p.add_argument("--provider", help="execution provider (default: the artifact's own, CPU as its declared fallback)")
    p.add_argument("--speculate", metavar="lookup|draft=ARTIFACT", help="speculative decoding: drafts verified several "
                   "tokens per forward pass, output unchanged (lookup: n-grams of the prompt and output; draft=ARTIFACT: "
                   "a smaller artifact with the same tokenizer)")
    p.set_defaults(fn=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgeqwen", description="Small Qwen models → accuracy-checked ONNX artifacts for "
                                 "edge devices.", epilog="exit codes: 0 ok, 1 a check failed (accuracy gate, verify, "
                                 "memory fit), 2 bad input or missing extra, 130 interrupted")
    ap.add_argument("--version", action="version", version=f"edgeqwen {__version__}")
    ap.add_argument("-q", "--quiet", action="store_true", help="progress off (warnings and errors only)")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug lines too")
    # dest: not "recipes", which `build-all` takes as its positional recipe names (they were searched as folders)
    ap.add_argument("--recipes", metavar="DIR", action="append", default=[], dest="recipe_dirs",
                    help="a folder of your own recipes (<model>/<name>.yaml), searched before the shipped ones")
    ap.add_argument("--targets", metavar="DIR", action="append", default=[], dest="target_dirs",
                    help="a folder of your own targets (*.yaml), searched before the shipped ones")
    sub = ap.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("recipes", help="list recipes, or `recipes show NAME`")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_recipes)

    p = sub.add_parser("build", help="build an artifact from a recipe")
    p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help=f"recipe name or .yaml path (default {DEFAULT_RECIPE})")
    p.add_argument("--model", help="local checkpoint folder or hub id (default: the recipe's model)")
    p.add_argument("-o", "--output", required=True, help="artifact folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--name", help="the name `serve` and Foundry Local list the model under (default: the recipe's, "
                   "e.g. tiny-qwen2-cpu-x86_64-int4): two builds of one recipe served together need their own")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy stage (artifact is marked not evaluated)")
    p.add_argument("--eval-text", help="text file for the accuracy stage (default: the packaged eval text)")
    p.add_argument("--keep-failed", action="store_true", help="keep the work folder of a failed build for inspection")
    p.add_argument("--calib", metavar="FILE", help="UTF-8 calibration text for gptq recipes (default: the packaged text)")
    p.add_argument("--low-memory", action="store_true",
                   help="quantize MatMul by MatMul inside the exporter (peak ≈ the loaded model, not ~3×)")
    p.set_defaults(fn=cmd_build)

    p = sub.add_parser("verify", help="re-hash an artifact against its manifest")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--provider", help="check this execution provider instead of the artifact's own")
    p.set_defaults(fn=cmd_verify)

    _add_run_parser(sub)

    p = sub.add_parser("plan", help="memory estimate and quantization plan of a recipe on a model, before building")
    p.add_argument("recipe")
    p.add_argument("--model", help="local checkpoint folder or hub id (default: the recipe's model)")
    p.add_argument("--low-memory", action="store_true", help="plan the low-memory export path")
    p.add_argument("--json", action="store_true", help="machine-readable output (the whole plan)")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("tiny", help="create a small random-weight Qwen checkpoint (tests, shapes)")
    p.add_argument("output")
    from .architectures import DEFAULT_FAMILY, families

    p.add_argument("--family", choices=families(), default=DEFAULT_FAMILY)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--intermediate-size", type=int, default=352)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty output folder (its checkpoint files are replaced, other files kept)")
    p.set_defaults(fn=cmd_tiny)

    for extra in _extra_verbs():
        extra(sub)
    return ap


def _extra_verbs():
    from .bench import add_bench_parser
    from .evaluate.cli import add_eval_parser
    from .interop.olive_config import add_olive_config_parser
    from .matrix import add_build_all_parser
    from .planner.cli import add_sensitivity_parser
    from .serve.cli import add_serve_parser
    from .tune import add_tune_parser
    from .web.cli import add_web_parser

    return [add_build_all_parser, add_eval_parser, add_bench_parser, add_tune_parser, add_serve_parser,
            add_olive_config_parser, add_sensitivity_parser, add_web_parser]


def _interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP clean up like Ctrl-C: work folders removed, worker processes ended (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, interrupt)


def main(argv=None) -> int:
    from .log import setup
    from .resources import add_user_dir

    args = build_parser().parse_args(argv)
    setup(-1 if args.quiet else 1 if args.verbose else None)
    if argv is None:  # the real command line, not a caller's own process (tests, notebooks)
        _interrupt_on_termination()
    for kind, folders in (("recipes", args.recipe_dirs), ("targets", args.target_dirs)):
        for folder in reversed(folders):
            add_user_dir(kind, folder)
    try:
        from .resources import search_dirs

        search_dirs("recipes"), search_dirs("targets")  # a --recipes/--targets folder that is not there: said now
        return args.fn(args)
    except CheckFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except EdgeQwenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunnerError as exc:  # the artifact runner's own errors (it imports nothing from edgeqwen)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ModuleNotFoundError as exc:
        from .extras import extra_for_module

        root = (exc.name or "").split(".")[0]
        extra = extra_for_module(root)
        if extra is None:
            raise
        print(f"error: `edgeqwen {args.verb}` needs {root!r}, which this install lacks\n"
              f"  fix: pip install 'edgeqwen[{extra}]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `edgeqwen recipes | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
