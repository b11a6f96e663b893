"""edgeqwen.child: heavy steps run as child processes — forked warm from a zygote that imported their modules once
(edgeqwen/warm.py), or as plain `python -m` children when that is off — with the same arguments, environment, working
folder, log, progress lines and exit codes either way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgeqwen.child import run_child
from edgeqwen.errors import EdgeQwenError

REPO = Path(__file__).resolve().parent.parent


def _run(tmp_path, monkeypatch, warm: str, exit_code: int = 0, lines: list | None = None):
    monkeypatch.setenv("EDGEQWEN_WARM_CHILDREN", warm)
    monkeypatch.chdir(REPO)  # the worker module is importable from the repository root
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"out": str(tmp_path / "out.json"), "exit": exit_code}))
    run_child("tests.helpers.echo_worker", job, tmp_path / "w.log", progress=("step:",), what="echo", hint="h",
              env={"ECHO_X": warm})
    return json.loads((tmp_path / "out.json").read_text())


@pytest.mark.parametrize("warm", ["1", "0"], ids=["forked-warm", "plain"])
def test_both_ways_run_the_worker_alike(warm, tmp_path, monkeypatch, capsys):
    seen = _run(tmp_path, monkeypatch, warm)
    assert seen["x"] == warm and seen["argv"] == [str(tmp_path / "job.json")] and seen["cwd"] == str(REPO)
    # forked from the zygote (its parent is not this process) or started by this process
    assert (seen["ppid"] != os.getpid()) == (warm == "1")
    assert "step: working" in (tmp_path / "w.log").read_text()


@pytest.mark.parametrize("warm", ["1", "0"], ids=["forked-warm", "plain"])
def test_a_failing_worker_is_an_error_with_its_log(warm, tmp_path, monkeypatch):
    with pytest.raises(EdgeQwenError, match=r"(?s)echo failed \(exit code 3\).*step: done") as info:
        _run(tmp_path, monkeypatch, warm, exit_code=3)
    assert info.value.where == str(tmp_path / "w.log")
