"""Bad input an audit found going through silently or as a traceback (tiny, recipe/target folders, recipe files, eval):
each is an `error:` with where and fix and exit code 2, and nothing of the user's is changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.recipe import load_recipe
from edgeqwen.tiny import TinySpec, create_tiny_qwen

from .helpers.recipes import GOOD_RECIPE

CLI = [sys.executable, "-m", "edgeqwen"]
GOOD = GOOD_RECIPE


def run(*args, cwd=None, env=None):
    """The CLI in its own process (so --recipes/--targets do not touch this one's environment)."""
    base = {k: v for k, v in os.environ.items() if k not in ("EDGEQWEN_RECIPES", "EDGEQWEN_TARGETS")}
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env={**base, **(env or {})})


def bad_input(out) -> str:
    """A message, never a traceback, with exit code 2 (bad input)."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: "), out.stderr
    return out.stderr


# ---- 1. tiny refuses a folder holding the user's files ------------------------------------------------------------
def test_tiny_refuses_a_non_empty_folder_and_keeps_its_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": 1}')
    (mine / "notes.txt").write_text("my notes")
    err = bad_input(run("tiny", mine, "--family", "qwen3"))
    assert "already exists and is not empty" in err and f"where: {mine}" in err and "--force" in err
    assert (mine / "config.json").read_text() == '{"mine": 1}' and (mine / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "notes.txt"]
    with pytest.raises(EdgeQwenError, match="not empty"):
        create_tiny_qwen(mine, TinySpec(family="qwen3"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgeQwenError, match="not a folder"):
        create_tiny_qwen(tmp_path / "file")


def test_tiny_force_writes_into_the_folder_and_keeps_other_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    out = create_tiny_qwen(mine, TinySpec(family="qwen2", num_hidden_layers=1), force=True)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert (mine / "notes.txt").read_text() == "my notes"


# ---- 2. tiny's sizes are checked, naming the flag -----------------------------------------------------------------
@pytest.mark.parametrize("args, flag", [
    (["--layers", "0"], "--layers"),
    (["--hidden-size", "-8"], "--hidden-size"),
    (["--heads", "3"], "--heads"),  # 128 / 3
    (["--hidden-size", "120", "--heads", "8", "--kv-heads", "1"], "--heads"),  # head size 15: RoPE needs it even
    (["--kv-heads", "3"], "--kv-heads"),  # 4 query heads in groups of 3
    (["--intermediate-size", "0"], "--intermediate-size"),
])
def test_tiny_size_flags_are_checked(tmp_path, args, flag):
    err = bad_input(run("tiny", tmp_path / "ckpt", *args))
    assert f"where: {flag}" in err and "fix: " in err
    assert not (tmp_path / "ckpt").exists()


def test_tiny_spec_checks_what_has_no_flag():
    with pytest.raises(EdgeQwenError, match="vocab_size must be at least"):
        TinySpec(vocab_size=8)
    with pytest.raises(EdgeQwenError, match="head_dim is set but a qwen2 config has none"):
        TinySpec(family="qwen2", head_dim=32)
    TinySpec(family="qwen3", hidden_size=100, num_attention_heads=4, head_dim=16)  # explicit head_dim: no divisibility


# ---- 3. an output tiny cannot write is a message naming the path --------------------------------------------------
def test_tiny_unwritable_output_is_a_message(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(EdgeQwenError, match="cannot write the checkpoint to") as info:
        create_tiny_qwen(tmp_path / "file" / "ckpt")  # a folder inside a file
    assert str(tmp_path / "file") in str(info.value)
    assert (tmp_path / "file").read_text() == "mine"
    if Path("/proc").is_dir() and sys.platform.startswith("linux"):
        err = bad_input(run("tiny", "/proc/x"))
        assert "cannot write the checkpoint to /proc/x" in err and "where: /proc/x" in err


# ---- 4. a recipe/target search folder that is not there is an error naming where it came from ---------------------
@pytest.mark.parametrize("args, env, where", [
    (["--recipes", "./nope"], {}, "where: --recipes ./nope"),
    (["--targets", "./nope"], {}, "where: --targets ./nope"),
    ([], {"EDGEQWEN_RECIPES": "./nope"}, "where: environment variable EDGEQWEN_RECIPES"),
    ([], {"EDGEQWEN_TARGETS": "./nope"}, "where: environment variable EDGEQWEN_TARGETS"),
    (["--recipes", "./some-file"], {}, "where: --recipes ./some-file"),
])
def test_missing_search_folder_is_an_error(tmp_path, args, env, where):
    (tmp_path / "some-file").write_text("not a folder")
    err = bad_input(run(*args, "recipes", cwd=tmp_path, env=env))
    assert where in err and "fix: " in err
    assert ("is not a folder" if "some-file" in where else "does not exist") in err
    good = tmp_path / "mine"
    good.mkdir()
    assert run("--recipes", good, "--targets", good, "recipes", cwd=tmp_path).returncode == 0  # existing: fine


# ---- 5. a recipe path that is not there says the file was not found -----------------------------------------------
def test_missing_recipe_file_is_not_an_unknown_recipe(tmp_path):
    err = bad_input(run("build", "./missing.yaml", "-o", tmp_path / "o", cwd=tmp_path))
    assert "recipe file not found: ./missing.yaml" in err and "unknown recipe" not in err
    assert str(tmp_path / "missing.yaml") in err and not (tmp_path / "o").exists()
    for path in (str(tmp_path / "sub" / "r.yml"), "some/deeper/recipe"):
        with pytest.raises(EdgeQwenError, match="recipe file not found"):
            load_recipe(path)
    with pytest.raises(EdgeQwenError, match="unknown recipe 'nope/x'"):  # a name (model/recipe) stays a name
        load_recipe("nope/x")


# ---- 6. recipe errors: `FILE: key`, and a fix line for unknown values and wrong types -----------------------------
def _error(tmp_path, text) -> EdgeQwenError:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(EdgeQwenError) as info:
        load_recipe(str(path))
    return info.value


def test_recipe_error_where_reads_file_then_key(tmp_path):
    exc = _error(tmp_path, GOOD.replace("block_size: 32", "blok_size: 32"))
    assert exc.where == f"{tmp_path / 'r.yaml'}: quantization.blok_size"
    exc = _error(tmp_path, GOOD.replace("precision: int4", "precision: int5"))
    assert exc.where == f"{tmp_path / 'r.yaml'}: precision" and "int4" in exc.hint


def test_unknown_algorithm_and_wrong_type_have_a_fix(tmp_path):
    exc = _error(tmp_path, GOOD.replace("algorithm: rtn", "algorithm: magic"))
    assert "unknown value 'magic'; known:" in exc.what and exc.where == f"{tmp_path / 'r.yaml'}: quantization.algorithm"
    assert exc.hint and "pick one of the known values" in exc.hint and "algorithm: rtn" in exc.hint
    exc = _error(tmp_path, GOOD + "context_length: lots\n")
    assert exc.what == "expected an integer, got 'lots'" and exc.where == f"{tmp_path / 'r.yaml'}: context_length"
    assert exc.hint and "integer" in exc.hint and "context_length: 4096" in exc.hint


def test_fixes_reach_nested_keys_and_post_init_checks(tmp_path):
    """The fix line comes from the schema itself (the field's type or known values, its default as the example), so
    keys under a mapping of overrides and values a dataclass refuses in __post_init__ get one too."""
    quant = "quantization: {algorithm: rtn, block_size: 32}"
    exc = _error(tmp_path, GOOD.replace(quant, 'quantization: {overrides: {"*/down_proj/*": {bits: eight}}}'))
    assert exc.what == "expected an integer, got 'eight'"
    assert exc.where == f"{tmp_path / 'r.yaml'}: quantization.overrides.*/down_proj/*.bits"
    assert exc.hint == "bits takes an integer"  # no default to show, and no made-up number
    exc = _error(tmp_path, GOOD.replace(quant, "quantization: {mixed_precision: banana}"))
    assert exc.where == f"{tmp_path / 'r.yaml'}: quantization.mixed_precision"
    assert "known: off, auto, or a mapping" in exc.what
    assert exc.hint == "pick one of the known values, e.g. `mixed_precision: off`"
    exc = _error(tmp_path, GOOD.replace(quant, "quantization: {symmetric: maybe}"))
    assert exc.what == "expected true/false, got 'maybe'" and exc.hint.endswith("`symmetric: true`")


# ---- 7. eval names its own flag, and a missing folder as missing --------------------------------------------------
def test_eval_names_reference_and_a_missing_folder(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text(json.dumps({"name": "art", "recipe": {}, "source": {"model": "./gone"}}))
    err = bad_input(run("eval", art, "--reference", "nope", cwd=tmp_path))
    assert "where: --reference" in err and "--model" not in err
    err = bad_input(run("eval", art, cwd=tmp_path))
    assert "source.model" in err and "--reference" in err
    err = bad_input(run("eval", "nope", cwd=tmp_path))
    assert "artifact folder does not exist: nope" in err and "no manifest.json" not in err
    assert "onnxruntime-genai" in err
