"""`edgeqwen web ARTIFACT [--port N]`: serve an artifact's web page on loopback and print its URL."""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgeQwenError


def cmd_web(args) -> int:
    from .server import make_web_server, page_url

    try:
        server = make_web_server(Path(args.artifact), host=args.host, port=args.port)
    except OSError as exc:
        raise EdgeQwenError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", where="--port",
                            hint="pick another port (0: any free one)") from None
    print(f"edgeqwen web: {page_url(server)}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_web_parser(sub) -> None:
    p = sub.add_parser("web", help="serve an artifact's web page (WebGPU/WebAssembly chat) on loopback")
    p.add_argument("artifact")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
    p.add_argument("--host", default="127.0.0.1", help="loopback only: 127.0.0.1 or localhost")
    p.set_defaults(fn=cmd_web)
