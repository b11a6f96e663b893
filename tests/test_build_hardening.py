"""Nothing of the user's is lost and every bad input is a message: --force only replaces artifacts, SIGTERM cleans
up like Ctrl-C, verify never leaves the artifact, malformed manifests and bad runner options are messages, a build
that cannot fit in RAM switches path or is refused up front."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from edgeqwen.build import BuildOptions, build
from edgeqwen.cli import main
from edgeqwen.errors import DoesNotFit, EdgeQwenError
from edgeqwen.runtime import Runner, RunnerError


def test_force_replaces_artifacts_only(random_qwen2, tmp_path):
    precious = tmp_path / "docs"
    (precious / "sub").mkdir(parents=True)
    (precious / "precious.txt").write_text("mine")
    with pytest.raises(EdgeQwenError, match="not an edgeqwen artifact"):
        build(BuildOptions("tiny-qwen2/cpu-x86_64-fp32", precious, model=str(random_qwen2), evaluate=False, force=True))
    assert (precious / "precious.txt").read_text() == "mine" and (precious / "sub").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    build(BuildOptions("tiny-qwen2/cpu-x86_64-fp32", empty, model=str(random_qwen2), evaluate=False, force=True))
    assert (empty / "manifest.json").is_file()


def test_sigterm_cleans_up_like_ctrl_c(random_qwen2, tmp_path):
    out = tmp_path / "art"
    env = dict(os.environ, EDGEQWEN_QUIET="1")
    proc = subprocess.Popen([sys.executable, "-m", "edgeqwen", "build", "tiny-qwen2/cpu-x86_64-fp32", "--model",
                             str(random_qwen2), "-o", str(out), "--no-eval"], env=env, stderr=subprocess.PIPE, text=True)
    job = None
    deadline = time.time() + 120
    while time.time() < deadline and job is None:  # wait until the exporter worker runs
        job = next(tmp_path.glob(".art.building-*/cache/job.json"), None)
        time.sleep(0.05)
    assert job is not None, "the build never started its worker"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not list(tmp_path.glob(".art.building-*")) and not out.exists()
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(job) not in ps  # the worker did not outlive the build


def test_verify_refuses_paths_outside_and_malformed_entries(artifacts, random_qwen2, tmp_path, capsys):
    art = tmp_path / "art"
    shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", random_qwen2), art)
    (tmp_path / "secret").write_text("outside")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["../secret"] = {"sha256": "0" * 64, "size": 7}
    manifest["files"]["/etc/hostname"] = {"sha256": "0" * 64, "size": 1}
    manifest["files"]["vocab.json"] = {"size": 1}  # no sha256
    manifest["files"]["merges.txt"]["sha256"] = "zz"  # not a sha256 at all: malformed, not "modified"
    (art / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(art)]) == 1
    out = capsys.readouterr().out
    assert "UNSAFE: ../secret" in out and "UNSAFE: /etc/hostname" in out and "MALFORMED: vocab.json" in out
    assert "MALFORMED: merges.txt" in out and "MODIFIED: merges.txt" not in out
    with pytest.raises(RunnerError, match="has no size/sha256"):
        Runner(art)
    (art / "manifest.json").write_text("{not json")
    with pytest.raises(RunnerError, match="not a valid edgeqwen manifest"):
        Runner(art)
    assert main(["run", str(art), "-p", "x"]) == 2
    assert "not a valid edgeqwen manifest" in capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [
    (["--seed", "-1"], "seed must be an integer in [0, 2^63)"),
    (["--temperature", "1e-320"], "temperature must be 0 (greedy) or in [0.0001, 5]"),
    (["-p", "caf\udce9"], "not valid Unicode"),  # undecodable command-line bytes arrive as lone surrogates
])
def test_runner_options_are_messages(artifacts, random_qwen2, args, needle, capsys):
    path = artifacts.get("tiny-qwen2/cpu-x86_64-fp32", random_qwen2)
    argv = ["run", str(path), "--max-new-tokens", "2"] + (args if "-p" in args else ["-p", "hi"] + args)
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_eval_bad_text_and_window_are_messages(artifacts, random_qwen2, tmp_path, capsys):
    path = artifacts.get("tiny-qwen2/cpu-x86_64-fp32", random_qwen2)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    assert main(["eval", str(path), "--reference", str(random_qwen2), "--eval-text", str(bad), "-o", str(tmp_path)]) == 2
    assert "eval text is not UTF-8" in capsys.readouterr().err
    assert main(["eval", str(path), "--reference", str(random_qwen2), "--window", "0", "-o", str(tmp_path)]) == 2
    assert "needs window >= 16" in capsys.readouterr().err


def test_build_that_cannot_fit_in_ram_switches_path_or_is_refused(random_qwen2, tmp_path, monkeypatch):
    import edgeqwen.memory as memory
    from edgeqwen.checkpoint import inspect_checkpoint

    cfg = inspect_checkpoint(random_qwen2).config
    normal, low = memory.build_peak_mb(cfg, False), memory.build_peak_mb(cfg, True)
    monkeypatch.setattr(memory, "available_mb", lambda: (normal + low) / 2 / 0.9)
    out = build(BuildOptions("tiny-qwen2/cpu-x86_64-int8", tmp_path / "o", model=str(random_qwen2), evaluate=False))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["plan"]["low_memory"]  # switched, and the plan says why
    assert manifest["export"]["decisions"][0].startswith("low-memory path chosen: the normal build would peak near")
    monkeypatch.setattr(memory, "available_mb", lambda: low / 2)
    with pytest.raises(DoesNotFit, match=r"needs about \d+ MB of RAM .* but \d+ MB are available"):
        build(BuildOptions("tiny-qwen2/cpu-x86_64-int8", tmp_path / "p", model=str(random_qwen2), evaluate=False))
    assert not (tmp_path / "p").exists()


def test_build_whose_accuracy_stage_cannot_fit_is_refused_before_any_work(random_qwen2, tmp_path, monkeypatch):
    """The accuracy stage loads the fp32 PyTorch reference: a machine that can build the artifact but not hold the
    reference is told so before the build starts (not killed at its last stage), and --no-eval builds there."""
    import edgeqwen.memory as memory
    from edgeqwen.checkpoint import inspect_checkpoint
    from edgeqwen.recipe import load_recipe

    cfg = inspect_checkpoint(random_qwen2).config
    gate = load_recipe("tiny-qwen2/cpu-x86_64-int8").recipe.accuracy
    need = memory.evaluate_peak_mb(cfg, gate.window, gate.max_windows)
    assert need > memory.build_peak_mb(cfg, False) * 10  # the reference's logits and the process, not the tiny weights
    monkeypatch.setattr(memory, "available_mb", lambda: need)  # the exporter fits; the 10 % margin does not
    with pytest.raises(DoesNotFit, match=r"the accuracy stage of .* needs about \d+ MB of RAM") as err:
        build(BuildOptions("tiny-qwen2/cpu-x86_64-int8", tmp_path / "e", model=str(random_qwen2)))
    assert "--no-eval" in err.value.hint and not (tmp_path / "e").exists()
    out = build(BuildOptions("tiny-qwen2/cpu-x86_64-int8", tmp_path / "n", model=str(random_qwen2), evaluate=False))
    assert (out / "manifest.json").exists()
