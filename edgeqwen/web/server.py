"""`edgeqwen web ARTIFACT`: the artifact's folder over HTTP on loopback, for its web/ page. MIME types onnxruntime-web
needs (.mjs text/javascript, .wasm application/wasm), COOP/COEP so the page is cross-origin isolated (WASM threads),
and a Host allowlist (loopback names only: a DNS-rebinding page cannot read the model through this server)."""

from __future__ import annotations

import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..errors import EdgeQwenError
from .bundle import WEB_DIR

MIME = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
        ".onnx": "application/octet-stream", ".data": "application/octet-stream", ".jinja": "text/plain",
        ".html": "text/html", ".md": "text/markdown", ".txt": "text/plain"}
HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
           "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff",
           "Cache-Control": "no-cache"}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def allowed_host(header: str | None, port: int) -> bool:
    """A Host header naming a loopback address, with no port or this server's."""
    if not header:
        return False
    h = header.strip().lower()
    if h.startswith("["):  # an IPv6 literal, [::1] or [::1]:port
        name, _, rest = h.partition("]")
        name, given = name + "]", (rest[1:] if rest.startswith(":") else None if rest else "")
    else:
        name, _, given = h.partition(":")
    return name in LOOPBACK_NAMES and given in ("", str(port))


class WebHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME}

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass

    def _refuse_host(self) -> bool:
        if allowed_host(self.headers.get("Host"), self.server.server_address[1]):
            return False
        self.send_error(421, "Host not allowed (edgeqwen web answers loopback names only)")
        return True

    def do_GET(self):
        if self._refuse_host():
            return
        if self.path in ("/", "/index.html"):
            self.send_response(302)
            self.send_header("Location", f"/{WEB_DIR}/")
            self.end_headers()
            return
        super().do_GET()

    def do_HEAD(self):
        if not self._refuse_host():
            super().do_HEAD()

    def list_directory(self, path):
        self.send_error(404, "no directory listings")
        return None

    def end_headers(self):
        for key, value in HEADERS.items():
            self.send_header(key, value)
        super().end_headers()


def make_web_server(artifact: Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    artifact = Path(artifact).resolve()
    if not (artifact / WEB_DIR / "index.html").is_file():
        raise EdgeQwenError(f"{artifact} has no web build (no {WEB_DIR}/index.html)", where=str(artifact),
                            hint="build a web recipe, e.g. `edgeqwen build tiny-qwen2/web-int4 -o OUT`")
    if host not in ("127.0.0.1", "localhost"):
        raise EdgeQwenError(f"edgeqwen web listens on loopback only, not {host!r}", where="--host",
                            hint="use 127.0.0.1")
    handler = functools.partial(WebHandler, directory=str(artifact))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def page_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/{WEB_DIR}/"
