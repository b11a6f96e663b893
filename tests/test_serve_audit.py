"""What an audit of `edgeqwen serve` found, each through a real server and the real `openai` client: two artifacts
with one name got a fix that cannot work (editing inference_model.json breaks its hash), a tampered artifact was
listed as fine and failed only at its first request (with a traceback in the log), and a misspelt "speculate" was
refused without the values it may take."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys

import openai
import pytest

from tests.helpers.serving import QWEN2, client, one_model, serving  # noqa: F401 - fixture

INT4 = "tiny-qwen2-cpu-x86_64-int4"
QWEN3 = "tiny-qwen3-cpu-x86_64-int4"


def _cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeqwen.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, **kw)


@contextlib.contextmanager
def cli_server(root, log: list):
    """`edgeqwen serve ROOT --port 0` in its own process; yields its OpenAI base URL; its stderr lines land in `log`
    when it has stopped (SIGTERM, a graceful exit 0)."""
    proc = _cli("serve", root, "--port", "0")
    try:
        line = proc.stdout.readline()
        assert " at " in line, proc.stderr.read()[-2000:]
        yield line.split(" at ")[1].strip()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        log.extend(proc.stderr.read().splitlines())


def _chat(base_url: str, model: str):
    api = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    return api.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def _load_failure(base_url: str, model: str) -> openai.InternalServerError:
    with pytest.raises(openai.InternalServerError) as err:
        _chat(base_url, model)
    assert err.value.status_code == 500 and err.value.body["code"] == "model_load_failed"
    return err.value


def _flip_byte(path, offset: int) -> None:
    """Change one byte in place: the size stays, the sha256 does not."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ---- 1. two artifacts with one name ----------------------------------------------------------------------------------
def test_duplicate_names_get_a_fix_that_works(tmp_path, artifacts, trained_qwen2):
    """The refusal stays, and names both folders; its fix is one that works: one server per folder (shown working
    here), or a rebuild under --name. Was: "rename one (inference_model.json Name)", which breaks the manifest hash."""
    built = artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2)
    a, b = tmp_path / "models" / "a", tmp_path / "models" / "b"
    shutil.copytree(built, a)
    shutil.copytree(built, b)
    proc = _cli("serve", tmp_path / "models", "--port", "0")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and not out, out
    assert f"two artifacts are named '{INT4}'" in err and str(a) in err and str(b) in err
    assert "rename one" not in err and "Traceback" not in err
    assert f"`edgeqwen serve {a}`" in err and f"`edgeqwen serve {b} --port PORT`" in err
    assert f"`edgeqwen build tiny-qwen2/cpu-x86_64-int4 -o {b} --force --name NEW`" in err
    with serving(a) as first, serving(b) as second:  # the fix: each folder served on its own port
        for s in (first, second):
            assert [m.id for m in client(s).models.list().data] == [INT4]
            assert _chat(s.url + "/v1", INT4).choices[0].finish_reason in ("stop", "length")


# ---- 2. tampered artifacts -------------------------------------------------------------------------------------------
@pytest.fixture
def tampered(tmp_path, artifacts, trained_qwen2, trained_qwen3):
    """A folder of three artifacts: the qwen2 fp32 one intact, the qwen2 int4 one with its weights cut short, the qwen3
    one with a byte of tokenizer.json changed (same size: found by the hash of this small file)."""
    root = tmp_path / "models"
    shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2), root / "good")
    shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2), root / "weights")
    shutil.copytree(artifacts.get("tiny-qwen3/cpu-x86_64-int4", trained_qwen3), root / "tokenizer")
    os.truncate(root / "weights" / "model.onnx.data", 1000)
    _flip_byte(root / "tokenizer" / "tokenizer.json", 100)
    return root


def test_tampered_artifacts_are_reported_at_start(tampered, artifacts, trained_qwen2):
    """One log line per broken artifact at start (the file, what is wrong, `edgeqwen verify FOLDER`); it stays listed
    and its requests fail as a model broken while serving does (500 model_load_failed, one log line, no traceback);
    the intact model answers, and a repaired artifact loads without a restart."""
    log: list[str] = []
    with cli_server(tampered, log) as url:
        api = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        assert sorted(m.id for m in api.models.list().data) == sorted([QWEN2, INT4, QWEN3])
        assert _chat(url, QWEN2).choices[0].message.content is not None
        for model in (INT4, QWEN3):
            failure = _load_failure(url, model)
            assert str(tampered) not in failure.message  # no server paths in answers
        shutil.copyfile(artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2) / "model.onnx.data",
                        tampered / "weights" / "model.onnx.data")
        assert _chat(url, INT4).choices[0].finish_reason in ("stop", "length")  # repaired: loads, no restart
    assert "Traceback" not in "\n".join(log), "\n".join(log)
    weights = [line for line in log if "model.onnx.data" in line]
    assert "is broken: artifact file model.onnx.data is 1000 bytes, manifest.json records " in weights[0]
    assert weights[0].endswith(f"until it is rebuilt or re-copied: run `edgeqwen verify {tampered / 'weights'}`")
    assert f"model {INT4!r} failed to load: artifact file model.onnx.data is 1000 bytes" in weights[1] and len(weights) == 2
    tokenizer = [line for line in log if "tokenizer.json" in line]
    assert "is broken: artifact file tokenizer.json was modified" in tokenizer[0]
    assert tokenizer[0].endswith(f"run `edgeqwen verify {tampered / 'tokenizer'}`")
    assert f"model {QWEN3!r} failed to load: artifact file tokenizer.json was modified" in tokenizer[1] and len(tokenizer) == 2
    assert not any(str(tampered / "good") in line for line in log)  # the intact artifact passes the check


def test_tampered_while_serving_logs_one_line(tmp_path, artifacts, trained_qwen2):
    """Weights changed after the start-up check (same size: only the load-time full hash sees it): the request gets a
    500 and the log one line with the runner's reason, not a traceback."""
    root = tmp_path / "models"
    shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2), root / "weights")
    data = root / "weights" / "model.onnx.data"
    log: list[str] = []
    with cli_server(root, log) as url:
        _flip_byte(data, data.stat().st_size // 2)
        _load_failure(url, INT4)
    assert "Traceback" not in "\n".join(log), "\n".join(log)
    failed = [line for line in log if "failed to load" in line]
    assert len(failed) == 1 and "artifact file model.onnx.data was modified" in failed[0]
    assert failed[0].endswith(f"run `edgeqwen verify {root / 'weights'}`")


# ---- 3. enum-like request fields list their values -------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(one_model):  # noqa: F811
    with serving(one_model) as s:
        yield s


@pytest.mark.parametrize("extra, needles", [
    ({"speculate": "lokup"}, ["'speculate' must be one of 'lookup', 'none'; got 'lokup'"]),
    ({"speculate": "x" * 10_000}, ["'speculate' must be one of 'lookup', 'none'", "..."]),  # the value quoted, bounded
    ({"top_k": 5000}, ["'top_k' is out of range: 5000 (allowed: 0 to 1000)"]),
    ({"temperature": 9}, ["'temperature' is out of range: 9 (allowed: 0 to 2)"]),
])
def test_refused_values_say_what_is_allowed(server, extra, needles):
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(model=QWEN2, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2, extra_body=extra)
    message = err.value.body["message"]
    assert all(n in message for n in needles) and len(message) < 300, message
    assert err.value.body["param"] == next(iter(extra))
