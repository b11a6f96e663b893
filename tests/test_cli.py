"""The command line as an installed tool: --version, python -m, --json, one exit-code table, user recipe folders,
logging levels, missing extras named, nothing heavy imported at startup."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgeqwen import __version__
from edgeqwen.cli import main

from .helpers.artifacts import REPO

CLI = [sys.executable, "-m", "edgeqwen"]


def run(*args, env=None):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_version_and_module_entry_point():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"edgeqwen {__version__}"


def test_startup_imports_nothing_heavy():
    code = ("import sys; from edgeqwen.cli import build_parser; build_parser(); "
            "print([m for m in ('torch', 'transformers', 'onnxruntime_genai', 'olive', 'matplotlib', 'optimum', "
            "'auto_round', 'ray') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_json_outputs(capsys):
    assert main(["recipes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"recipe": "tiny-qwen2/cpu-x86_64-int4", "model": "embedded:tiny-qwen2", "precision": "int4",
            "quantization": "gptq/b32", "context_length": 1024} in rows
    assert main(["plan", "tiny-qwen3/cpu-x86_64-int4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] and plan["plan"]["algorithm"] == "gptq"
    assert plan["plan"]["head"] == {"bits": 8, "block_size": 128, "shortlist": 0, "shortlist_bits": 0}
    assert set(plan["build_time"]["seconds"]) == {"gptq", "export", "evaluate"}  # no mixed precision: no sensitivity
    assert plan["build_time"]["probe_gflops"] > 1
    mem = plan["build_memory_mb"]  # the build machine: the exporter's peak and the accuracy stage's fp32 reference
    assert mem["export_low_memory"] <= mem["export"] and 0 < mem["evaluate_low_memory"] <= mem["evaluate"]
    assert mem["available"] > 0
    assert main(["recipes", "show", "tiny-qwen3/cpu-x86_64-int4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resolved"] == {"block_size": 32, "accuracy_level": 4,
                                                                "kv_cache": "fp32"}


def test_exit_codes(tmp_path, capsys, monkeypatch):
    """0 ok, 1 a check failed, 2 bad input (README, Exit codes)."""
    monkeypatch.setenv("EDGEQWEN_TARGETS", "")  # --targets sets it for this process: restored after the test
    assert main(["build", "nope/nothing", "-o", str(tmp_path / "o")]) == 2  # bad input
    big = tmp_path / "big.yaml"
    big.write_text("version: 1\nmodel: embedded:tiny-qwen2\ntarget: cpu-x86_64\nprecision: fp32\ncontext_length: 1024\n")
    targets = tmp_path / "targets"
    targets.mkdir()
    shipped = (REPO / "targets" / "cpu-x86_64.yaml").read_text()
    assert "memory_budget_mb: 8192" in shipped
    (targets / "cpu-x86_64.yaml").write_text(shipped.replace("memory_budget_mb: 8192", "memory_budget_mb: 1"))
    capsys.readouterr()
    assert main(["--targets", str(targets), "plan", str(big)]) == 1  # does not fit: a failed check
    assert main(["--targets", str(targets), "build", str(big), "-o", str(tmp_path / "o")]) == 1  # same from build
    assert "does not fit target cpu-x86_64" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_user_recipe_folder_is_searched_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEQWEN_RECIPES", "")  # --recipes sets it for this process: restored after the test
    mine = tmp_path / "my-recipes" / "my-model"
    mine.mkdir(parents=True)
    (mine / "cpu-x86_64-int8.yaml").write_text(
        "version: 1\nmodel: embedded:tiny-qwen3\ntarget: cpu-x86_64\nprecision: int8\ncontext_length: 256\n")
    assert main(["--recipes", str(tmp_path / "my-recipes"), "recipes", "--json"]) == 0
    names = [r["recipe"] for r in json.loads(capsys.readouterr().out)]
    assert "my-model/cpu-x86_64-int8" in names and "tiny-qwen2/cpu-x86_64-int4" in names
    out = run("recipes", "show", "my-model/cpu-x86_64-int8", env={"EDGEQWEN_RECIPES": str(tmp_path / "my-recipes")})
    assert out.returncode == 0 and "context_length: 256" in out.stdout


@pytest.mark.parametrize("bad, match", [("dir", "recipe path is not a file"), ("binary", "not a UTF-8 text file")])
def test_unreadable_recipe_paths_are_messages(tmp_path, bad, match, capsys):
    path = tmp_path / "r.yaml"
    if bad == "dir":
        path.mkdir()
    else:
        path.write_bytes(b"\xff\xfe\x00\x01")
    assert main(["recipes", "show", str(path)]) == 2
    assert match in capsys.readouterr().err


def test_quiet_and_verbose(tmp_path):
    loud = run("plan", "tiny-qwen2/cpu-x86_64-int8", "--low-memory", env={"EDGEQWEN_QUIET": "0"})
    quiet = run("-q", "build", "tiny-qwen2/cpu-x86_64-fp32", "-o", str(tmp_path / "o"), "--no-eval",
                env={"EDGEQWEN_QUIET": "0"})
    assert loud.returncode == 0 and quiet.returncode == 0, quiet.stderr
    assert "[1/5]" not in quiet.stderr and quiet.stdout.strip().endswith("o")
