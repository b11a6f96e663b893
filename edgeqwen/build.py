"""`edgeqwen build`: recipe + checkpoint → verified artifact folder, published atomically."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import resolve_checkpoint
from .errors import AccuracyGateError, EdgeQwenError
from .export.run import run_export
from .log import stage_log
from .memory import check_fits
from .planner import Decision
from .planner import plan as make_plan
from .package import (
    convert_to_ort,
    copy_runner,
    finalize_genai_config,
    runtime_block,
    write_chat_template,
    write_inference_model,
    write_manifest,
)
from .quantize.registry import get_algorithm, resolve_callable
from .quantize.request import CheckpointRequest
from .recipe import Exporter, load_recipe
from .targets import ArtifactFormat

STAGES = 5


@dataclass
class BuildOptions:
    recipe: str
    output: Path
    model: str | None = None
    force: bool = False
    evaluate: bool = True
    eval_text: Path | None = None
    keep_failed: bool = False
    low_memory: bool = False
    calib: Path | None = None  # calibration text for gptq (default: the packaged one)
    name: str | None = None  # the served name (inference_model.json Name; default: the recipe's name with - for /)


SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def _check_name(name: str | None) -> None:
    """--name: the model id clients send (`model=` in the OpenAI API, Foundry Local's alias), so one URL-safe word."""
    if name is not None and not SERVED_NAME.fullmatch(name):
        raise EdgeQwenError(f"--name {name!r} is not a model name clients can send", where="--name",
                            hint="letters, digits and . _ : - (up to 128, starting with a letter or digit), e.g. "
                            "qwen2.5-0.5b-int4-kitchen")


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise EdgeQwenError(f"output folder already exists: {output}", where=str(output),
                            hint="pass --force to replace it, or choose another -o folder")
    if output.exists() and not output.is_dir():
        raise EdgeQwenError(f"output path exists and is not a folder: {output}", where=str(output))
    if output.exists() and any(output.iterdir()):
        _check_replaceable(output)  # --force replaces an artifact, never an arbitrary folder of the user's
    parent = output.parent if str(output.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(prefix=f".{output.name}.probe-", dir=parent).cleanup()
    except OSError as exc:
        raise EdgeQwenError(f"cannot write the output's parent folder: {exc.strerror or exc}", where=str(parent),
                            hint="choose an -o folder you can write to") from None


def _check_replaceable(output: Path) -> None:
    """A folder --force may replace: its manifest verifies as an edgeqwen artifact's (format version, listed files
    present at their sizes) and it holds nothing the manifest does not list (a user's notes are never deleted)."""
    from .runtime.runner import RunnerError, check_artifact

    try:
        manifest = check_artifact(output, full_hash=False)
        if "format_version" not in manifest or not manifest.get("files"):
            raise RunnerError("its manifest.json is not an edgeqwen manifest")
    except RunnerError as exc:
        raise EdgeQwenError(f"refusing to replace {output}: it holds files but is not an edgeqwen artifact ({exc})",
                            where=str(output), hint="choose another -o folder, or empty this one") from None
    listed = set(manifest["files"]) | {"manifest.json"}
    extra = sorted(str(p.relative_to(output)) for p in output.rglob("*") if not p.is_dir()
                   and str(p.relative_to(output)) not in listed)
    if extra:
        raise EdgeQwenError(f"refusing to replace {output}: it holds files its manifest does not list "
                            f"({', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''})", where=str(output),
                            hint="move those files out of the artifact folder, or choose another -o folder")


def _publish(staging: Path, output: Path) -> None:
    """Swap the finished folder into place; the old artifact is removed only after the rename."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{int(time.time() * 1000)}")
        output.rename(old)
    staging.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def smoke_test(artifact: Path) -> None:
    """The packaged graph must load in onnxruntime and run one step before anything else is trusted."""
    from .runtime.runner import Runner

    try:
        runner = Runner(artifact, verify=False, providers=["cpu"])
        runner.step([0])
    except Exception as exc:  # noqa: BLE001 - any load/run failure means the build is broken
        raise EdgeQwenError(f"the built model does not run in onnxruntime: {exc}", where=str(artifact / "model.onnx"),
                            hint="this recipe/model combination hits an exporter limitation; try another quantization.algorithm "
                            "or embeddings: float, and report it") from None


def _fit_build_in_ram(plan, resolved, ckpt, evaluate: bool = True):
    """A build that would need more RAM than the machine has switches to the low-memory path when the plan's
    algorithm runs there unchanged, and otherwise is refused with the numbers — before it is killed halfway. So is
    one whose accuracy stage would not fit even with its PyTorch reference kept in the checkpoint's dtype (the
    evaluation takes that path by itself where the fp32 model does not fit), unless the stage is skipped."""
    from .errors import DoesNotFit
    from .memory import available_mb, build_peak_mb, evaluate_peaks_mb

    have = available_mb()
    gate = resolved.recipe.accuracy
    graphs = 2 if resolved.target.web_max_file_mb is not None else 1  # a web artifact's WebAssembly graph too
    need_eval = min(evaluate_peaks_mb(ckpt.config, gate.window, gate.max_windows, graphs)) if evaluate else 0.0  # the
    # evaluation takes the low-memory reference by itself where the fp32 one does not fit
    if need_eval > 0.9 * have:
        raise DoesNotFit(f"the accuracy stage of {plan.recipe} needs about {need_eval:.0f} MB of RAM (the PyTorch "
                         f"reference and its logits) but {have:.0f} MB are available", where=str(ckpt.path),
                         hint="pass --no-eval (the artifact is then marked not evaluated) and run `edgeqwen eval "
                         "ARTIFACT --reference CHECKPOINT` on a machine with that much memory, or free memory")
    if not plan.quantized or plan.exporter != Exporter.BUILDER:
        return plan
    need = build_peak_mb(ckpt.config, plan.low_memory)
    if need <= 0.9 * have:
        return plan
    low = build_peak_mb(ckpt.config, True)
    if not plan.low_memory and low <= 0.9 * have and get_algorithm(plan.algorithm).low_memory == plan.algorithm:
        import dataclasses

        from .planner import Decision

        low_plan = make_plan(resolved, ckpt, low_memory=True)
        why = Decision("build.ram", f"low-memory path chosen: the normal build would peak near {need:.0f} MB, "
                                    f"{have:.0f} MB are available (low-memory path about {low:.0f} MB)")
        return dataclasses.replace(low_plan, decisions=(why,) + low_plan.decisions)
    raise DoesNotFit(f"building {plan.recipe} needs about {need:.0f} MB of RAM at its peak "
                     f"({'low-memory path' if plan.low_memory else 'normal path'}; the low-memory path about {low:.0f} MB) "
                     f"but {have:.0f} MB are available", where=str(ckpt.path),
                     hint="free memory, build on a larger machine, or pass --low-memory (RTN-family algorithms)")


def _require_stack(plan) -> None:
    """Before any work: the build stack, and the extras this plan's algorithm and exporter need."""
    from .extras import require

    require("build", f"building {plan.recipe}")
    spec = get_algorithm(plan.algorithm) if plan.quantized else None
    if spec is not None and spec.extra:
        require(spec.extra, f"algorithm {spec.name}")
    if plan.exporter == Exporter.PORTABLE:
        require("portable", "the portable exporter")
    require("plots", "the accuracy report's picture")


MAX_REPLANS = 2  # auto mixed precision: re-plans after a missed gate, each from the measured miss


def build(opts: BuildOptions) -> Path:
    output = Path(opts.output).expanduser().absolute()
    if output.is_symlink():  # -o LINK: replace the folder it points to; the link stays
        output = output.resolve()
    stage_log(f"[1/{STAGES}] resolve: recipe {opts.recipe}")
    _check_name(opts.name)
    resolved = load_recipe(opts.recipe)
    _check_output(output, opts.force)
    requested = resolved.recipe.quantization.spec
    if opts.calib is not None and not (requested.calibration or resolved.recipe.quantization.mixed_precision.auto):
        raise EdgeQwenError(f"--calib was given but recipe {resolved.recipe.name} uses quantization.algorithm "
                            f"{requested.name}, which takes no calibration data", where="--calib",
                            hint="use a recipe with a calibrated algorithm (gptq, autoround) or mixed_precision: auto, "
                            "or drop --calib")
    ckpt = resolve_checkpoint(opts.model or resolved.recipe.model)
    stage_log(f"        model {ckpt.source} ({ckpt.architecture}, hidden {ckpt.config['hidden_size']}, "
              f"{ckpt.config['num_hidden_layers']} layers) → target {resolved.target.name}, {resolved.recipe.precision.value}")
    plan = make_plan(resolved, ckpt, low_memory=opts.low_memory)
    # the artifact must fit its device before the build machine is asked whether it can make it
    mem = check_fits(plan, resolved, ckpt.config, where=f"recipe {resolved.recipe.name} × {ckpt.source}")
    plan = _fit_build_in_ram(plan, resolved, ckpt, opts.evaluate)
    _require_stack(plan)
    stage_log(f"        memory estimate {mem.total_mb:.0f} MB at {mem.context} tokens (budget {mem.budget_mb} MB)")
    from .planner.cost import TimeEstimate, estimate as estimate_time, long_build_advice

    full = estimate_time(plan, resolved, ckpt.config)  # every stage (the manifest keeps it beside what was measured)
    eta = full if opts.evaluate else TimeEstimate({k: v for k, v in full.seconds.items() if k != "evaluate"}, full.gflops)
    stage_log(f"        {eta.line()}")
    if advice := long_build_advice(eta):
        stage_log(f"        note: {advice}")
    for decision in plan.decisions:
        stage_log(f"        plan: {decision}")
    if not opts.evaluate:
        stage_log("        accuracy stage skipped (--no-eval): the artifact is not gated")
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.building-", dir=output.parent))
    stage_s: dict[str, float] = {}  # measured, beside the estimate in the manifest
    try:
        sensitivity = None
        if plan.needs_sensitivity:
            stage_log(f"[2/{STAGES}] sensitivity: KLD of every decoder-layer matrix at int{plan.matmul_bits}/b{plan.block_size}")
            from .planner.sensitivity import sensitivity_for

            t_sens = time.perf_counter()
            sensitivity = sensitivity_for(plan, resolved, ckpt, work, opts.calib)
            stage_s["sensitivity"] = time.perf_counter() - t_sens
            plan = _replan(plan, resolved, ckpt, sensitivity)
            mem = check_fits(plan, resolved, ckpt.config, where=f"recipe {resolved.recipe.name} × {ckpt.source}")
        for attempt in range(MAX_REPLANS + 1):
            staging = work / f"artifact-{attempt}"
            try:
                manifest = _make_artifact(plan, resolved, ckpt, opts, work, staging, mem, sensitivity,
                                          {"estimate": full.as_dict(), "measured_s": stage_s})
                break
            except AccuracyGateError as exc:
                better = _replan_after_miss(plan, resolved, ckpt, sensitivity, exc.summary) if sensitivity else None
                if better is None or attempt == MAX_REPLANS:
                    raise
                plan = better
                mem = check_fits(plan, resolved, ckpt.config, where=f"recipe {resolved.recipe.name} × {ckpt.source}")
                shutil.rmtree(staging, ignore_errors=True)
        stage_log(f"[5/{STAGES}] publish → {output} ({manifest['size_bytes'] / 1e6:.2f} MB, {len(manifest['files'])} files)")
        _publish(staging, output)
    except OSError as exc:
        raise EdgeQwenError(f"could not write the artifact: {exc.strerror or exc}", where=str(exc.filename or work),
                            hint="check free disk space and write permission; nothing was published") from None
    finally:
        if opts.keep_failed and work.exists():
            stage_log(f"        kept the work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return output


def _replan(plan, resolved, ckpt, sensitivity: dict):
    """The plan again, with the measurement; decisions made outside the planner (the RAM switch) are kept."""
    import dataclasses

    new = make_plan(resolved, ckpt, low_memory=plan.low_memory, sensitivity=sensitivity)
    outside = tuple(d for d in plan.decisions if d.code.startswith("build."))
    for decision in new.decisions:
        if decision.code.startswith("mixed."):
            stage_log(f"        plan: {decision}")
    return dataclasses.replace(new, decisions=outside + new.decisions)


def _replan_after_miss(plan, resolved, ckpt, sensitivity: dict, summary: dict | None):
    """A missed gate on an auto plan: recalibrate the predictions by how far the measured KLD was from the planned one
    (at least 1.25x), aim at 80 % of the gate's KLD (or, when only top-1 or PPL missed, 60 % of the last target) and
    plan again. None when nothing more can be upgraded."""
    import dataclasses

    from .planner import Decision

    planned = plan.mixed.planned_kld or 0.0
    measured = (summary or {}).get("kld_mean")
    gate = resolved.recipe.accuracy.max_kld
    target = plan.mixed.target_kld or 0.01
    scale = sensitivity.get("kld_scale", 1.0)
    factor = max(1.25, measured / planned) if measured and planned else 1.5
    kld_missed = measured is not None and gate is not None and measured > gate
    new_target = min(target, 0.8 * gate) if kld_missed else 0.6 * target
    retry = {**sensitivity, "kld_scale": scale * factor, "replan_target_kld": new_target}
    new = _replan(plan, resolved, ckpt, retry)
    if new.node_settings == plan.node_settings and new.table == plan.table:
        return None
    why = Decision("build.replan", f"accuracy gate missed at planned KLD {planned:.4f} (measured "
                   f"{'?' if measured is None else f'{measured:.4f}'}): predictions scaled {scale * factor:.2f}x, "
                   f"target {new_target:.4f}, planned again")
    stage_log(f"        {why}")
    sensitivity.update(kld_scale=scale * factor, replan_target_kld=new_target)
    return dataclasses.replace(new, decisions=(why,) + new.decisions)


def _calibrate(plan, resolved, ckpt, opts: BuildOptions, work: Path, spec, extra: dict, decisions: list) -> Path:
    """A checkpoint-stage algorithm (GPTQ, AutoRound): the quantized checkpoint folder the exporter reads."""
    stage_log(f"[2/{STAGES}] calibrate + {spec.summary.split(' on ')[0]}, int{plan.matmul_bits}, block "
              f"{plan.block_size}, {'sym' if plan.symmetric else 'asym'}")
    quantize_checkpoint = resolve_callable(spec.checkpoint_quantizer)
    cal = resolved.recipe.quantization.calibration
    job = CheckpointRequest(plan.quant_request(), ckpt.path, work, opts.calib,
                            samples=plan.calibration_samples or cal.samples, seq_len=cal.seq_len,
                            damp_percent=cal.damp_percent, iters=cal.iters)
    folder, extra[spec.name], notes = quantize_checkpoint(job)
    decisions.extend(Decision(code, message) for code, message in notes)
    return folder


def _package_web(staging: Path, resolved, ckpt, extra: dict) -> None:
    """A web target's WebAssembly graph (W8A8 from the checkpoint's weights) and web/ (page, API, onnxruntime-web)."""
    from .web.bundle import write_web
    from .web.wasm_graph import checkpoint_weights, write_wasm_graph

    t0 = time.perf_counter()
    w = extra["wasm_graph"] = write_wasm_graph(staging, "model.onnx", checkpoint_weights(ckpt.path, ckpt.architecture))
    stage_log(f"        {w['file']}: the page's WebAssembly graph, {w['replaced_nodes']} MatMulNBits as "
              f"DynamicQuantizeMatMul (int8 per column, {w['from_checkpoint']} from the checkpoint's weights, "
              f"{w['int8_weight_mb']:.1f} MB) in {time.perf_counter() - t0:.1f}s")
    extra["web"] = write_web(staging, resolved.target, resolved.recipe.name, resolved.recipe.generation)
    stage_log(f"        web/: page + JavaScript API, onnxruntime-web {extra['web']['packages']['onnxruntime-web']}")


def _make_artifact(plan, resolved, ckpt, opts: BuildOptions, work: Path, staging: Path, mem, sensitivity,
                   build_time: dict) -> dict:
    """Calibrate, export, package, smoke-test and evaluate one plan into `staging`; returns its manifest."""
    extra = {"memory_estimate_mb": mem.as_dict(), "build_time": build_time}
    measured = build_time["measured_s"]
    t_stage = time.perf_counter()
    decisions = list(plan.decisions)
    spec = get_algorithm(plan.algorithm) if plan.quantized else None
    export_input = ckpt.path
    if spec is not None and spec.stage == "checkpoint":
        export_input = _calibrate(plan, resolved, ckpt, opts, work, spec, extra, decisions)
        measured[spec.name] = time.perf_counter() - t_stage
        t_stage = time.perf_counter()
    exporter_name = {"builder": "onnxruntime-genai builder", "portable": "optimum-onnx + ORT fusions"}[plan.exporter.value]
    stage_log(f"[2/{STAGES}] export + quantize ({exporter_name}, {plan.execution_provider.value}, "
              f"{resolved.recipe.precision.value}, block {plan.block_size})")
    result = run_export(plan, export_input, staging, work / "cache")
    stage_log(f"        exported in {result.wall_s:.1f}s, exporter peak RSS {result.peak_rss_mb:.0f} MB")
    if result.decisions:
        stage_log(f"        {len(result.decisions)} exporter notes recorded in the manifest")
    decisions.extend(result.decisions)
    if plan.vision:
        from .export.vision_export import export_vision

        stage_log(f"[2/{STAGES}] export the vision encoder + embedding merge (torch.onnx, "
                  f"{'int%d' % plan.vision.bits if plan.vision.bits else 'float'} encoder)")
        t0 = time.perf_counter()
        info = export_vision(ckpt.path, staging, vision_bits=plan.vision.bits, block=plan.vision.block,
                             int8_table=plan.vision.int8_table, max_pixels=plan.vision.max_pixels)
        stage_log(f"        vision exported in {time.perf_counter() - t0:.1f}s")
        decisions.extend(Decision("vision.export", n) for n in info["notes"])
    stage_log(f"[3/{STAGES}] package: genai_config, chat template, inference_model.json, runner")
    finalize_genai_config(staging, resolved, ckpt)
    template = write_chat_template(staging, ckpt)
    write_inference_model(staging, opts.name or resolved.recipe.name.replace("/", "-"), template, ckpt.architecture)
    copy_runner(staging)
    if resolved.target.web_max_file_mb is not None:
        _package_web(staging, resolved, ckpt, extra)
    extra["runtime"] = runtime_block(staging, resolved.target)  # before the ORT conversion removes the .onnx graphs
    if resolved.target.artifact_format == ArtifactFormat.ORT:
        extra["ort_format"] = convert_to_ort(staging, resolved.target.ort_target_platform)
        stage_log(f"        ORT format: model.ort {extra['ort_format']['ort_bytes'] / 1e6:.2f} MB "
                  f"(from {extra['ort_format']['onnx_bytes'] / 1e6:.2f} MB ONNX), required_operators.config")
    smoke_test(staging)
    if sensitivity is not None:
        from .planner.report import write_sensitivity

        extra["sensitivity"] = write_sensitivity(staging, sensitivity, plan)
    if opts.evaluate:
        stage_log(f"[4/{STAGES}] evaluate against the PyTorch fp32 reference")
        from .evaluate.stage import evaluate_stage

        measured["export"] = time.perf_counter() - t_stage
        t_stage = time.perf_counter()
        extra["accuracy"] = evaluate_stage(staging, ckpt, resolved, opts.eval_text)
        measured["evaluate"] = time.perf_counter() - t_stage
        if "web" in extra and not (staging / extra["wasm_graph"]["file"]).exists():  # left at the accuracy gate
            extra["web"] = json.loads((staging / "web" / "config.json").read_text())
            extra["wasm_graph"]["status"] = "dropped at the accuracy gate"
    else:
        measured["export"] = time.perf_counter() - t_stage
        extra["accuracy"] = {"status": "not evaluated"}
    build_time["measured_s"] = {k: round(v, 1) for k, v in measured.items()}
    if result.report is not None:
        extra["portable"] = result.report
    export_info = {
        "exporter": plan.exporter.value,
        "algorithm": plan.algorithm,
        "builder_extra_options": plan.builder_options(),
        "matmul_bits": plan.matmul_bits,
        "block_size": plan.block_size,
        "plan": plan.to_json(),
        "decisions": [d.message for d in decisions],
        "wall_s": round(result.wall_s, 2),
        "peak_rss_mb": round(result.peak_rss_mb, 1),
    }
    return write_manifest(staging, resolved=resolved, ckpt=ckpt, export=export_info, extra=extra)
