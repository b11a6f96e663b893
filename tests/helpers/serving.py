"""Helpers for server tests: a real server on an ephemeral port, the real `openai` and `ollama` clients, and raw HTTP
(http.client, or exact bytes over a socket for framing cases)."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket

import openai
import pytest

from edgeqwen.serve.server import make_server

QWEN2 = "tiny-qwen2-cpu-x86_64-fp32"
QWEN3 = "tiny-qwen3-cpu-x86_64-int4"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, artifacts, trained_qwen2, trained_qwen3):
    """Both tiny trained models, as a Foundry-style folder of artifacts."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2), root / "tiny-qwen2")
    shutil.copytree(artifacts.get("tiny-qwen3/cpu-x86_64-int4", trained_qwen3), root / "tiny-qwen3")
    return root


@pytest.fixture(scope="module")
def one_model(tmp_path_factory, artifacts, trained_qwen2):
    root = tmp_path_factory.mktemp("one-model")
    shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2), root / "tiny-qwen2")
    return root


def start(root, **kw):
    """A server running in a background thread (stop it with .shutdown())."""
    return make_server(root, port=0, **kw).start()


@contextlib.contextmanager
def serving(root, **kw):
    """A server on an ephemeral port for the duration of a `with` block."""
    s = start(root, **kw)
    try:
        yield s
    finally:
        s.shutdown()
        s.server_close()


def client(server, key="unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def ollama_client(server):
    import ollama

    return ollama.Client(host=server.url, timeout=60)


def raw(server, method, path, body=None, headers=None):
    """(status, body bytes) of one request over a fresh connection."""
    status, _, data = raw_full(server, method, path, body, headers)
    return status, data


def raw_full(server, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one request over a fresh connection."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read()
    conn.close()
    return out


def raw_bytes(server, data: bytes, timeout=30, source: str | None = None) -> bytes:
    """Send exactly these bytes (from `source`, a loopback address, if given); everything the server answers until it
    closes or goes quiet for `timeout` seconds."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                block = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not block:
                break
            chunks.append(block)
    return b"".join(chunks)


def responses(reply: bytes) -> list[tuple[int, bytes]]:
    """The (status, body) of each response in a raw reply (Content-Length framed)."""
    out = []
    while reply.startswith(b"HTTP/1.1 "):
        head, _, rest = reply.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), len(rest))
        out.append((int(head.split()[1]), rest[:length]))
        reply = rest[length:]
    return out


def status_and_error(reply: bytes) -> tuple[int, dict]:
    status, body = responses(reply)[0]
    return status, json.loads(body)["error"]
