"""Shared fixtures: tiny Qwen checkpoints made locally, built artifacts cached per session."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("EDGEQWEN_QUIET", "1")
# two xdist workers on 2 cores: calibrated steps get one thread each (their default is 2), not four on two cores
os.environ.setdefault("EDGEQWEN_CALIB_THREADS", "1")
# calibrated-quantizer results are cached per test run (shared by its xdist workers), never in ~/.cache/edgeqwen
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
os.environ.setdefault("EDGEQWEN_CACHE", os.path.join(tempfile.gettempdir(), f"edgeqwen-test-cache-{_RUN}") if _RUN
                      else tempfile.mkdtemp(prefix="edgeqwen-test-cache-"))

from edgeqwen.build import BuildOptions, build  # noqa: E402
from edgeqwen.checkpoint import embedded_dir  # noqa: E402
from edgeqwen.tiny import TinySpec, create_tiny_qwen  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def random_qwen2(tiny_dir) -> Path:
    return create_tiny_qwen(tiny_dir / "qwen2", TinySpec(family="qwen2"))


@pytest.fixture(scope="session")
def random_qwen3(tiny_dir) -> Path:
    return create_tiny_qwen(tiny_dir / "qwen3", TinySpec(family="qwen3", head_dim=32))


@pytest.fixture(scope="session")
def random_qwen2_vl(tiny_dir) -> Path:
    """Qwen2.5-VL: a tiny Qwen2 decoder (hidden 128, 4 layers) after a 4-block windowed ViT (hidden 64)."""
    return create_tiny_qwen(tiny_dir / "qwen2_5_vl", TinySpec(family="qwen2_5_vl"))


@pytest.fixture(scope="session")
def trained_qwen2() -> Path:
    return embedded_dir() / "tiny-qwen2"


@pytest.fixture(scope="session")
def trained_qwen3() -> Path:
    return embedded_dir() / "tiny-qwen3"


class ArtifactCache:
    """Build each (recipe, model, eval) once per test session."""

    def __init__(self, root: Path):
        self.root = root
        self.built: dict[tuple, Path] = {}

    def get(self, recipe: str, model: Path | str | None = None, evaluate: bool = False) -> Path:
        key = (recipe, str(model), evaluate)
        if key not in self.built:
            out = self.root / f"a{len(self.built)}"
            build(BuildOptions(recipe=recipe, output=out, model=str(model) if model else None, evaluate=evaluate))
            self.built[key] = out
        return self.built[key]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> ArtifactCache:
    return ArtifactCache(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="session")
def recipe_dir(tmp_path_factory) -> Path:
    """Test recipes written here keep one path per content, so `artifacts` builds each once per session."""
    return tmp_path_factory.mktemp("recipes")


BASE_RECIPE = """\
version: 1
model: embedded:{model}
target: cpu-x86_64
precision: {precision}
context_length: 1024
quantization:
  algorithm: {algo}
  symmetric: false
  lm_head: int8
  block_size: 32
"""
ALGO_RECIPE = BASE_RECIPE + "  calibration: {{samples: 16, seq_len: 128, iters: 20}}\naccuracy: {{max_windows: 3}}\n"


def algo_recipe(recipe_dir: Path, algo: str) -> str:
    """One algorithm on the default int4 layout (asym, block 32, int8 head), light calibration: the recipe the
    algorithm tests share, so each algorithm is built once per session."""
    text = ALGO_RECIPE.format(model="tiny-qwen2", precision="int4", algo=algo)
    path = recipe_dir / f"{algo}-{hashlib.sha256(text.encode()).hexdigest()[:8]}.yaml"
    path.write_text(text)
    return str(path)


def pytest_report_header(config):
    """The CPU's ISA in the test log: onnxruntime's CPU kernels (and so near-tie tokens) differ between AVX2, AVX-512
    and NEON machines."""
    import onnxruntime

    from edgeqwen.runtime.isa import cpu_isa

    return [f"edgeqwen: CPU ISA {cpu_isa()}, onnxruntime {onnxruntime.__version__} "
            f"({', '.join(onnxruntime.get_available_providers())})"]
