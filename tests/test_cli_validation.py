"""CLI, recipe and runner inputs a hostile user found (issue 27): each is a message with a non-zero exit, never a
traceback, and nothing of the user's is deleted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeqwen.build import BuildOptions, build
from edgeqwen.cli import main
from edgeqwen.errors import EdgeQwenError
from edgeqwen.recipe import load_recipe

FP32 = "tiny-qwen2/cpu-x86_64-fp32"


@pytest.fixture(scope="module")
def art(artifacts, trained_qwen2):
    return artifacts.get(FP32, trained_qwen2)


# ---- build --force -------------------------------------------------------------------------------------------------
def test_force_keeps_a_web_apps_folder_with_a_manifest(tmp_path, trained_qwen2):
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text(json.dumps({"name": "My App", "icons": []}))
    with pytest.raises(EdgeQwenError, match="not an edgeqwen artifact"):
        build(BuildOptions(FP32, site, model=str(trained_qwen2), evaluate=False, force=True))
    assert json.loads((site / "manifest.json").read_text())["name"] == "My App"


def test_force_keeps_an_artifact_holding_the_users_notes(tmp_path, art, trained_qwen2):
    out = tmp_path / "art"
    shutil.copytree(art, out)
    (out / "NOTES.txt").write_text("mine")
    with pytest.raises(EdgeQwenError, match="NOTES.txt"):
        build(BuildOptions(FP32, out, model=str(trained_qwen2), evaluate=False, force=True))
    assert (out / "NOTES.txt").read_text() == "mine"


def test_force_through_a_link_replaces_its_folder_and_leaves_nothing_behind(tmp_path, art, trained_qwen2):
    real = tmp_path / "real"
    shutil.copytree(art, real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    build(BuildOptions(FP32, link, model=str(trained_qwen2), evaluate=False, force=True))
    assert link.is_symlink() and (link / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no .link.old-* / .real.old-*


@pytest.mark.parametrize("out", ["/proc/edgeqwen-out", "/proc/self/edgeqwen-out"])
def test_unwritable_output_is_a_message(out, trained_qwen2, capsys):
    code = main(["build", FP32, "--model", str(trained_qwen2), "-o", out, "--no-eval"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "cannot" in err


# ---- bench -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, needle", [(["--threads", "-100"], "--threads"), (["--threads", "99999"], "--threads"),
                                           (["--prompt-len", "-5"], "--prompt-len"), (["--gen-len", "0"], "--gen-len")])
def test_bench_numbers_are_range_checked(art, flags, needle, capsys):
    assert main(["bench", str(art), *flags]) != 0
    assert needle in capsys.readouterr().err


def test_bench_refuses_non_artifacts_and_tampered_ones(tmp_path, art, capsys):
    assert main(["bench", str(tmp_path)]) != 0
    assert "Traceback" not in capsys.readouterr().err
    bad = tmp_path / "bad"
    shutil.copytree(art, bad)
    with open(bad / "tokenizer.json", "r+b") as f:  # same size, other bytes
        f.seek(10)
        f.write(b"X")
    assert main(["bench", str(bad)]) != 0
    assert "modified" in capsys.readouterr().err


# ---- recipes ---------------------------------------------------------------------------------------------------------
BASE = "version: 1\nmodel: embedded:tiny-qwen2\ntarget: cpu-x86_64\nprecision: fp32\n"


@pytest.mark.parametrize("extra, needle", [
    ("context_length: 1024\naccuracy: {max_kld: .nan}\n", "accuracy.max_kld"),
    ("context_length: 1024\ngeneration: {temperature: -3, top_p: 5}\n", "generation.temperature"),
    ("context_length: 1024\ngeneration: {top_p: 5}\n", "generation.top_p"),
    ("context_length: 100000000000\n", "context_length"),
    ("context_length: 1024\ncontext_length: 2048\n", "duplicate key 'context_length'"),
])
def test_recipe_values_are_checked_when_loaded(tmp_path, extra, needle):
    path = tmp_path / "r.yaml"
    path.write_text(BASE + extra)
    with pytest.raises(EdgeQwenError, match=needle):
        load_recipe(str(path))


def test_unknown_recipe_names_suggest_the_close_ones():
    with pytest.raises(EdgeQwenError, match="did you mean tiny-qwen2/cpu-x86_64-int[48]"):
        load_recipe("tiny-qwen2/cpu-x86_64-int5")


# ---- runner.py -------------------------------------------------------------------------------------------------------
def _runner(art: Path, *args, python=sys.executable, env=None):
    return subprocess.run([python, str(art / "runner.py"), str(art), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_runner_refuses_nan_and_images_on_text_artifacts(art, tmp_path):
    proc = _runner(art, "-p", "hi", "--repetition-penalty", "nan")
    assert proc.returncode == 2 and "repetition_penalty must be a finite number" in proc.stderr
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n")
    proc = _runner(art, "-p", "hi", "--image", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "no vision encoder" in proc.stderr and "Traceback" not in proc.stderr


def test_runner_without_numpy_says_what_to_install(art, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "numpy.py").write_text("raise ImportError('No module named numpy', name='numpy')\n")
    proc = _runner(art, "-p", "hi", env={"PYTHONPATH": str(shim), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "needs numpy" in proc.stderr and "Traceback" not in proc.stderr
