"""The web target without a browser: its plan, its refusals, and `edgeqwen web`'s server over a real socket."""

from __future__ import annotations

import http.client
import subprocess
import sys

import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.targets import load_target, load_target_file
from edgeqwen.web.server import allowed_host, make_web_server

from .helpers.web import serving


def test_the_web_plan_knows_the_browser(trained_qwen2):
    from edgeqwen.checkpoint import inspect_checkpoint
    from edgeqwen.planner import plan
    from edgeqwen.recipe import load_recipe

    p = plan(load_recipe("tiny-qwen2/web-int4"), inspect_checkpoint(trained_qwen2))
    assert (p.shader_f16, p.builder_ep, p.accuracy_level, p.kv_in_place) == (False, "cpu", 0, False)
    assert p.web_max_file_mb == load_target("web").web_max_file_mb == 1024
    codes = {d.code for d in p.decisions}
    assert {"kv.growing", "web.page", "webgpu.shader_f16"} <= codes


@pytest.mark.parametrize("change", ["kv_in_place: true", "int4_accuracy_level: 4", "shader_f16: true",
                                    "web_max_file_mb: 4096"])
def test_a_web_target_refuses_what_the_browser_cannot_run(tmp_path, change):
    from edgeqwen.targets import targets_dir

    text = (targets_dir() / "web.yaml").read_text()
    key = change.split(":")[0]
    lines = [line for line in text.splitlines() if not line.startswith(f"{key}:")] + [change]
    (tmp_path / "web.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(EdgeQwenError, match="web"):
        load_target_file(tmp_path / "web.yaml")


@pytest.mark.parametrize("host,ok", [("127.0.0.1:{port}", True), ("localhost:{port}", True), ("localhost", True),
                                     ("[::1]:{port}", True), ("evil.example:{port}", False),
                                     ("127.0.0.1:1", False), ("localhost.evil.example", False), ("", False)])
def test_host_allowlist_is_loopback_only(host, ok):
    assert allowed_host(host.format(port=8123), 8123) is ok


@pytest.fixture
def fake_web(tmp_path):
    """A folder with a web/ the server can serve (real files; no model needed to check the transport)."""
    web = tmp_path / "web"
    (web / "vendor").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>t</title>")
    (web / "app.mjs").write_text("export const x = 1;\n")
    (web / "vendor" / "ort.wasm").write_bytes(b"\0asm\1\0\0\0")
    (tmp_path / "model.onnx.data").write_bytes(b"\0" * 16)
    return tmp_path


def _get(url_base: str, path: str, host: str | None = None):
    hostport = url_base.split("/")[2]
    conn = http.client.HTTPConnection(hostport, timeout=10)
    conn.request("GET", path, headers={"Host": host or hostport})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_web_server_mime_types_isolation_headers_and_host_check(fake_web):
    with serving(fake_web) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/web/")
        for path, mime in [("/web/app.mjs", "text/javascript"), ("/web/vendor/ort.wasm", "application/wasm"),
                           ("/web/", "text/html"), ("/model.onnx.data", "application/octet-stream")]:
            r = _get(url, path)
            assert r.status == 200 and r.getheader("Content-Type").split(";")[0] == mime, (path, r.getheader("Content-Type"))
            assert r.getheader("Cross-Origin-Opener-Policy") == "same-origin"
            assert r.getheader("Cross-Origin-Embedder-Policy") == "require-corp"
        assert _get(url, "/").status == 302 and _get(url, "/").getheader("Location") == "/web/"
        assert _get(url, "/web/vendor/").status == 404  # no listings
        assert _get(url, "/web/app.mjs", host="evil.example").status == 421  # DNS rebinding
        port = url.split(":")[2].split("/")[0]
        assert _get(url, "/web/app.mjs", host=f"localhost:{port}").status == 200


def test_an_artifact_without_a_web_build_is_told_so(tmp_path):
    with pytest.raises(EdgeQwenError, match="no web build"):
        make_web_server(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "edgeqwen", "web", str(tmp_path), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no web build" in proc.stderr and "web-int4" in proc.stderr, proc.stderr


def test_web_listens_on_loopback_only(fake_web):
    with pytest.raises(EdgeQwenError, match="loopback"):
        make_web_server(fake_web, host="0.0.0.0")
