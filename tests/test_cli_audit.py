"""Mistakes a user makes on the command line end in a clear error (what, where, the fix; exit 2) before any work, not a
traceback or a result that hides a failure: the cases a walk through the README's CLI tour found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeqwen.cli import main

CLI = [sys.executable, "-m", "edgeqwen"]


def cli(*args, cwd=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_tune_budget_out_of_range_names_the_flag(tmp_path, capsys):
    assert main(["tune", "tiny-qwen3/cpu-x86_64-int4", "--budget", "kld=-1", "-o", str(tmp_path / "o")]) == 2
    assert "max_kld must be a finite number >= 0" in capsys.readouterr().err
    assert main(["tune", "tiny-qwen3/cpu-x86_64-int4", "--budget", "kld=0.02,top1=90", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "min_top1 is a share in [0, 1]" in err and "where: --budget" in err and "not 90" in err
    assert not (tmp_path / "o").exists()


def test_workers_below_one_are_refused_before_any_build(tmp_path, capsys):
    assert main(["tune", "tiny-qwen3/cpu-x86_64-int4", "--budget", "kld=0.02", "-o", str(tmp_path / "t"),
                 "--workers", "0"]) == 2
    assert "--workers 0 must be at least 1" in capsys.readouterr().err
    assert main(["build-all", "tiny-qwen2/cpu-x86_64-int4", "-o", str(tmp_path / "a"), "--workers", "0"]) == 2
    assert "--workers 0 must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "a").exists()


def test_build_all_resolves_every_recipe_and_model_first(tmp_path):
    """A typo among several recipes stops the run before the others build; the recipe names are recipes, not recipe
    folders (the global --recipes DIR once shared their argparse name: the names were searched as folders)."""
    mine = tmp_path / "mine"
    (mine / "tiny-qwen2").mkdir(parents=True)
    typo = cli("--recipes", mine, "build-all", "tiny-qwen2/cpu-x86_64-int44", "tiny-qwen3/cpu-x86_64-int4",
               "-o", tmp_path / "all", cwd=tmp_path)
    assert typo.returncode == 2, typo.stderr
    assert "unknown recipe 'tiny-qwen2/cpu-x86_64-int44'; did you mean tiny-qwen2/cpu-x86_64-int4" in typo.stderr
    where = next(line for line in typo.stderr.splitlines() if line.strip().startswith("where:"))
    assert str(mine) in where and "cpu-x86_64-int4" not in where, where
    missing = cli("build-all", "tiny-qwen2/cpu-x86_64-int4", "-o", tmp_path / "all", "--model", tmp_path / "nope")
    assert missing.returncode == 2 and "model path does not exist" in missing.stderr
    assert not (tmp_path / "all").exists()


def test_olive_config_output_is_checked_first(tmp_path, capsys):
    assert main(["olive-config", "tiny-qwen2/cpu-x86_64-int4", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder; the workflow is one JSON file" in err and "workflow.json" in err
    assert main(["olive-config", "tiny-qwen2/cpu-x86_64-int4", "-o", "/proc/nope/w.json"]) == 2
    assert "cannot create /proc/nope" in capsys.readouterr().err


def test_sensitivity_output_is_checked_before_measuring(tmp_path, capsys):
    afile = tmp_path / "taken"
    afile.write_text("the user's")
    assert main(["sensitivity", "tiny-qwen3/cpu-x86_64-int4", "-o", str(afile)]) == 2
    assert "cannot use" in capsys.readouterr().err and afile.read_text() == "the user's"


@pytest.fixture(scope="module")
def int4(artifacts, trained_qwen2) -> Path:
    return artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2)


def test_bench_refuses_what_no_row_could_measure(int4, tmp_path, capsys):
    assert main(["bench", str(int4), "--prompt-len", "5000"]) == 2
    assert "5128 positions, over the artifact's context of 1024" in capsys.readouterr().err
    assert main(["bench", str(int4), "--reference", str(tmp_path / "nope")]) == 2
    assert "where: --reference" in capsys.readouterr().err
    assert main(["bench", str(int4), "--repeats", "5"]) == 2
    assert "--repeats is for --speculate runs" in capsys.readouterr().err


def test_bench_fails_when_a_row_it_was_asked_for_fails(int4, trained_qwen2, tmp_path):
    ref = tmp_path / "ref"  # a checkpoint folder that passes the look of one (config.json) and cannot load
    ref.mkdir()
    (ref / "config.json").write_text((trained_qwen2 / "config.json").read_text())
    out = cli("bench", int4, "--reference", ref, "--prompt-len", "8", "--gen-len", "4", "--threads", "1")
    assert out.returncode == 1, out.stderr
    assert "pytorch" in out.stdout and "error:" in out.stdout and "1 of 4 rows failed (pytorch)" in out.stderr


def test_run_takes_the_runners_sampling_flags_and_says_when_json_was_cut(int4, tmp_path):
    ok = cli("run", int4, "-p", "Hello", "--top-k", "5", "--top-p", "0.9", "--repetition-penalty", "1.1",
             "--temperature", "0.7", "--seed", "3", "--threads", "1", "--max-new-tokens", "4")
    assert ok.returncode == 0, ok.stderr
    bare = cli("run", int4)
    assert bare.returncode == 2 and "usage: edgeqwen run" in bare.stderr and "give --prompt TEXT or --chat" in bare.stderr
    schema = {"type": "object", "required": ["fruits", "vegetables"], "additionalProperties": False,
              "properties": {"fruits": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                             "vegetables": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    cut = cli("run", int4, "-p", "Name three fruits", "--json-schema", tmp_path / "s.json", "--max-new-tokens", "3")
    assert cut.returncode == 1 and "cut at --max-new-tokens 3 before its JSON closed" in cut.stderr


def test_build_name_sets_the_served_name(trained_qwen2, tmp_path, capsys):
    assert main(["build", "tiny-qwen2/cpu-x86_64-fp32", "-o", str(tmp_path / "bad"), "--name", "my model"]) == 2
    assert "--name 'my model' is not a model name" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["build", "tiny-qwen2/cpu-x86_64-fp32", "-o", str(tmp_path / "a"), "--no-eval",
                 "--name", "kitchen-1"]) == 0
    assert json.loads((tmp_path / "a" / "inference_model.json").read_text())["Name"] == "kitchen-1"
    assert main(["verify", str(tmp_path / "a")]) == 0
    assert main(["verify", str(tmp_path / "nope")]) == 2
    assert "no artifact folder at" in capsys.readouterr().err
