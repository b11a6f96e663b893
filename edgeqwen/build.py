"""`edgeqwen build`: recipe + checkpoint → verified artifact folder, published atomically."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import resolve_checkpoint
from .errors import EdgeQwenError
from .export.builder import plan_export, run_export
from .log import stage_log
from .memory import check_fits
from .package import (
    convert_to_ort,
    copy_runner,
    finalize_genai_config,
    write_chat_template,
    write_inference_model,
    write_manifest,
)
from .targets import ArtifactFormat
from .recipe import CALIBRATED, Algorithm, load_recipe

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


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise EdgeQwenError(f"output folder already exists: {output}", where=str(output),
                            hint="pass --force to replace it, or choose another -o folder")
    if output.exists() and not output.is_dir():
        raise EdgeQwenError(f"output path exists and is not a folder: {output}", where=str(output))
    parent = output.parent if str(output.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeQwenError(f"cannot create the output's parent folder: {exc.strerror}", where=str(parent)) from None


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
        runner = Runner(artifact, verify=False)
        runner.step([0])
    except Exception as exc:  # noqa: BLE001 - any load/run failure means the build is broken
        raise EdgeQwenError(f"the built model does not run in onnxruntime: {exc}", where=str(artifact / "model.onnx"),
                            hint="this recipe/model combination hits an exporter limitation; try another quantization.algorithm "
                            "or embeddings: float, and report it") from None


def build(opts: BuildOptions) -> Path:
    output = Path(opts.output).expanduser().absolute()
    stage_log(f"[1/{STAGES}] resolve: recipe {opts.recipe}")
    resolved = load_recipe(opts.recipe)
    _check_output(output, opts.force)
    if opts.calib is not None and resolved.recipe.quantization.algorithm not in CALIBRATED:
        raise EdgeQwenError(f"--calib was given but recipe {resolved.recipe.name} uses quantization.algorithm "
                            f"{resolved.recipe.quantization.algorithm.value}, which takes no calibration data",
                            where="--calib", hint="use a recipe with algorithm: gptq or autoround, or drop --calib")
    ckpt = resolve_checkpoint(opts.model or resolved.recipe.model)
    stage_log(f"        model {ckpt.source} ({ckpt.architecture}, hidden {ckpt.config['hidden_size']}, "
              f"{ckpt.config['num_hidden_layers']} layers) → target {resolved.target.name}, {resolved.recipe.precision.value}")
    mem = check_fits(resolved, ckpt.config, where=f"recipe {resolved.recipe.name} × {ckpt.source}")
    stage_log(f"        memory estimate {mem.total_mb:.0f} MB at {mem.context} tokens (budget {mem.budget_mb} MB)")
    if not opts.evaluate:
        stage_log("        accuracy stage skipped (--no-eval): the artifact is not gated")
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.building-", dir=output.parent))
    staging = work / "artifact"
    try:
        plan = plan_export(resolved, ckpt, staging, work / "cache", low_memory=opts.low_memory)
        for decision in plan.decisions:
            stage_log(f"        plan: {decision}")
        extra = {"memory_estimate_mb": mem.as_dict()}
        if plan.algorithm in (Algorithm.GPTQ.value, Algorithm.AUTOROUND.value):
            if plan.algorithm == Algorithm.GPTQ.value:
                from .quantize.olive_gptq import quantize_checkpoint
            else:
                from .quantize.autoround import quantize_checkpoint
            what = {"gptq": "GPTQ (Olive Gptq pass", "autoround": "AutoRound (auto-round"}[plan.algorithm]
            stage_log(f"[2/{STAGES}] calibrate + {what}, int4, block {plan.block_size}, "
                      f"{'sym' if plan.symmetric else 'asym'})")
            qdir, extra[plan.algorithm] = quantize_checkpoint(resolved, ckpt, plan.block_size, plan.symmetric, work,
                                                              opts.calib, plan.decisions)
            plan.input = str(qdir)
        exporter_name = {"builder": "onnxruntime-genai builder", "portable": "optimum-onnx + ORT fusions"}[plan.exporter]
        stage_log(f"[2/{STAGES}] export + quantize ({exporter_name}, {plan.execution_provider}, "
                  f"{resolved.recipe.precision.value}, block {plan.block_size})")
        planned = len(plan.decisions)
        result = run_export(plan, work / "builder.log")
        stage_log(f"        exported in {result.wall_s:.1f}s, exporter peak RSS {result.peak_rss_mb:.0f} MB")
        per_node = plan.decisions[planned:]
        if per_node:
            stage_log(f"        {len(per_node)} per-node quantization decisions (overrides, fallbacks) recorded in the manifest")
        stage_log(f"[3/{STAGES}] package: genai_config, chat template, inference_model.json, runner")
        finalize_genai_config(staging, resolved, ckpt)
        template = write_chat_template(staging, ckpt)
        write_inference_model(staging, resolved.recipe.name.replace("/", "-"), template)
        copy_runner(staging)
        if resolved.target.artifact_format == ArtifactFormat.ORT:
            extra["ort_format"] = convert_to_ort(staging, resolved.target.ort_target_platform)
            stage_log(f"        ORT format: model.ort {extra['ort_format']['ort_bytes'] / 1e6:.2f} MB "
                      f"(from {extra['ort_format']['onnx_bytes'] / 1e6:.2f} MB ONNX), required_operators.config")
        smoke_test(staging)
        if opts.evaluate:
            stage_log(f"[4/{STAGES}] evaluate against the PyTorch fp32 reference")
            from .evaluate.stage import evaluate_stage

            extra["accuracy"] = evaluate_stage(staging, ckpt, resolved, opts.eval_text)
        else:
            extra["accuracy"] = {"status": "not evaluated"}
        report = work / "cache" / "portable_report.json"
        if report.exists():
            extra["portable"] = json.loads(report.read_text())
        export_info = {
            "exporter": resolved.recipe.exporter.value,
            "builder_extra_options": plan.extra_options,
            "matmul_bits": plan.matmul_bits,
            "block_size": plan.block_size,
            "quantize_untied_embeddings": plan.quantize_gather,
            "decisions": plan.decisions,
            "wall_s": round(result.wall_s, 2),
            "peak_rss_mb": round(result.peak_rss_mb, 1),
        }
        manifest = write_manifest(staging, resolved=resolved, ckpt=ckpt, export=export_info, extra=extra)
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
