"""Run an exporter worker (onnxruntime-genai's builder, or the portable exporter) on a plan, in a child process."""

from __future__ import annotations

from pathlib import Path

from ..child import run_child
from ..planner import ExportPlan
from .job import WorkerJob, WorkerResult

_WHAT = {"builder": "builder", "portable": "portable exporter"}
_PROGRESS = ("Reading", "Saving ONNX", "Saving GenAI", "Saving processing", "Exporting", "Fusing", "Fusion:")


def run_export(plan: ExportPlan, input_dir: Path, output: Path, cache_dir: Path) -> WorkerResult:
    cache_dir.mkdir(parents=True, exist_ok=True)
    job = WorkerJob(plan, str(input_dir), str(output), str(cache_dir))
    job_path = cache_dir / "job.json"
    job.write(job_path)
    exporter = plan.exporter.value
    log_path = cache_dir.parent / f"{exporter}.log"
    run = run_child(f"edgeqwen.export.{exporter}_worker", job_path, log_path, progress=_PROGRESS,
                    what=_WHAT[exporter],
                    hint="see the full log; an unusual layer shape or an option the exporter lacks is the usual cause")
    return WorkerResult.read(job.result_path, wall_s=run.wall_s, peak_rss_mb=run.peak_rss_mb, log_path=str(log_path))
