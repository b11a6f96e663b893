"""What an exporter worker receives and answers: one typed job in, one typed result out (JSON files)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..planner import Decision, ExportPlan


@dataclass(frozen=True)
class WorkerJob:
    plan: ExportPlan
    input: str  # the checkpoint folder the exporter reads (a calibrated quantizer's output, or the source)
    output: str  # the artifact folder it writes
    cache_dir: str

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"plan": self.plan.to_json(), "input": self.input, "output": self.output,
                                    "cache_dir": self.cache_dir}, indent=2))

    @classmethod
    def read(cls, path: str | Path) -> "WorkerJob":
        data = json.loads(Path(path).read_text())
        return cls(ExportPlan.from_json(data["plan"]), data["input"], data["output"], data["cache_dir"])

    @property
    def result_path(self) -> Path:
        return Path(self.cache_dir) / "worker_result.json"


@dataclass(frozen=True)
class WorkerResult:
    decisions: tuple[Decision, ...] = ()  # per-node decisions only the exporter's graph could tell
    report: dict | None = None  # the portable exporter's fusion report
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    log_path: str = ""

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"decisions": [d.__dict__ for d in self.decisions], "report": self.report}))

    @classmethod
    def read(cls, path: Path, **timing) -> "WorkerResult":
        data = json.loads(path.read_text())
        return cls(tuple(Decision(**d) for d in data["decisions"]), data.get("report"), **timing)


def notes_to_decisions(code: str, notes: list[str]) -> tuple[Decision, ...]:
    return tuple(Decision(code, n) for n in notes)

