"""`edgeqwen build-all`: a small build matrix on the local pool and on a local Ray instance, same artifacts."""

from __future__ import annotations

import json

import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.matrix import Job, run_jobs

RECIPES = ["tiny-qwen2/cpu-x86_64-int4", "tiny-qwen3/cpu-x86_64-int8"]


def files(path):
    return json.loads((path / "manifest.json").read_text())["files"]


@pytest.mark.slow
def test_ray_and_local_executors_build_identical_artifacts(tmp_path, random_qwen2, trained_qwen3, monkeypatch):
    """Byte-identical artifacts, accuracy reports included (the int8 job is evaluated on the trained model: what
    `tune --executor ray` measures on its workers is what the local pool measures)."""
    monkeypatch.setenv("EDGEQWEN_GPTQ_CACHE", "off")  # each executor runs GPTQ itself (passed on to Ray workers)
    models = {"tiny-qwen2": str(random_qwen2), "tiny-qwen3": str(trained_qwen3)}

    def jobs(root):
        return [Job(r, str(root / r.replace("/", "-")), models[r.split("/")[0]], evaluate=r.startswith("tiny-qwen3"))
                for r in RECIPES] + \
            [Job("tiny-qwen2/cpu-x86_64-int4", str(root / "broken"), str(tmp_path / "missing"), evaluate=False)]

    local = run_jobs(jobs(tmp_path / "local"), "local", workers=2)
    ray_results = run_jobs(jobs(tmp_path / "ray"), "ray", workers=2)
    for a, b in zip(local[:2], ray_results[:2]):
        assert a.ok and b.ok, (a.error, b.error)
        from pathlib import Path

        assert files(Path(a.output)) == files(Path(b.output))  # byte-identical on both executors
    assert "accuracy.json" in files(Path(local[1].output)) and "KLD" in local[1].accuracy
    assert local[1].accuracy == ray_results[1].accuracy
    assert not local[2].ok and "model path does not exist" in local[2].error  # one failure does not stop the rest
    assert not ray_results[2].ok and "model path does not exist" in ray_results[2].error


def test_unknown_executor():
    with pytest.raises(EdgeQwenError, match="unknown executor 'spark'"):
        run_jobs([], "spark")
