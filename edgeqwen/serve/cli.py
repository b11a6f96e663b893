"""`edgeqwen serve DIR`."""

from __future__ import annotations

from pathlib import Path


def cmd_serve(args) -> int:
    from .app import make_server

    server = make_server(Path(args.models), host=args.host, port=args.port, api_key=args.api_key,
                         rate_limit=args.rate_limit, threads=args.threads)
    print(f"edgeqwen serving {', '.join(server.cache.models)} at {server.url}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible local server over an artifact or a folder of artifacts")
    p.add_argument("models", help="artifact folder, or a folder holding several")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5273, help="0 picks a free port (printed)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    p.add_argument("--rate-limit", type=int, help="requests per minute per key (429 beyond)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads per model")
    p.set_defaults(fn=cmd_serve)
