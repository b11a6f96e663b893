"""Shared fixtures: tiny Qwen checkpoints made locally, built artifacts shared by every worker of a run.

Helpers that are not fixtures live in tests/helpers/ (imported by the test modules; never import one test module from
another)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("EDGEQWEN_QUIET", "1")
# two xdist workers on 2 cores: calibrated steps get one thread each (their default is 2), not four on two cores
os.environ.setdefault("EDGEQWEN_CALIB_THREADS", "1")
# One id per test run: set here in the controller before xdist starts its workers, which inherit it, so every worker
# shares the run's folders (built artifacts, tiny fixtures, calibrated-quantizer results; never ~/.cache/edgeqwen).
# A run id given from outside names folders that outlive the run (the caller removes them): a later pytest with the same
# id reuses those builds (the emulated AVX2 check runs the tests under qemu on artifacts built natively).
_OWN_RUN = "EDGEQWEN_TEST_RUN" not in os.environ
_RUN = os.environ.setdefault("EDGEQWEN_TEST_RUN", uuid.uuid4().hex[:12])
os.environ.setdefault("EDGEQWEN_CACHE", os.path.join(tempfile.gettempdir(), f"edgeqwen-test-cache-{_RUN}"))

from edgeqwen.checkpoint import embedded_dir  # noqa: E402

from .helpers.artifacts import ArtifactCache, build_summary, random_checkpoint, run_dir  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    line = build_summary(run_dir("artifacts"))
    if line:
        terminalreporter.write_line(line)


def pytest_unconfigure(config):
    """The run's shared folders go with the run (the controller removes them once every worker is done and the
    summary is written), unless the run id came from outside."""
    if _OWN_RUN and not hasattr(config, "workerinput"):
        for kind in ("artifacts", "models", "cache"):
            shutil.rmtree(os.path.join(tempfile.gettempdir(), f"edgeqwen-test-{kind}-{_RUN}"), ignore_errors=True)


@pytest.fixture(scope="session")
def random_qwen2():
    return random_checkpoint("qwen2")


@pytest.fixture(scope="session")
def random_qwen3():
    return random_checkpoint("qwen3")


@pytest.fixture(scope="session")
def random_qwen2_vl():
    """Qwen2.5-VL: a tiny Qwen2 decoder (hidden 128, 4 layers) after a 4-block windowed ViT (hidden 64)."""
    return random_checkpoint("qwen2_5_vl")


@pytest.fixture(scope="session")
def trained_qwen2():
    return embedded_dir() / "tiny-qwen2"


@pytest.fixture(scope="session")
def trained_qwen3():
    return embedded_dir() / "tiny-qwen3"


@pytest.fixture(scope="session")
def artifacts() -> ArtifactCache:
    return ArtifactCache(run_dir("artifacts"))


@pytest.fixture(scope="session")
def recipe_dir(tmp_path_factory):
    """Test recipes are written here, one path per content (the artifact cache keys them by content)."""
    return tmp_path_factory.mktemp("recipes")


def pytest_report_header(config):
    """The CPU's ISA in the test log: onnxruntime's CPU kernels (and so near-tie tokens) differ between AVX2, AVX-512
    and NEON machines."""
    import onnxruntime

    from edgeqwen.runtime.isa import cpu_isa

    return [f"edgeqwen: CPU ISA {cpu_isa()}, onnxruntime {onnxruntime.__version__} "
            f"({', '.join(onnxruntime.get_available_providers())})"]
