"""`edgeqwen serve DIR`."""

from __future__ import annotations

from pathlib import Path


def cmd_serve(args) -> int:
    from ..errors import EdgeQwenError
    from .app import make_server

    if args.rate_limit is not None and args.rate_limit < 1:
        raise EdgeQwenError(f"--rate-limit {args.rate_limit} must be at least 1 request per minute", where="--rate-limit",
                            hint="omit --rate-limit for no limit")
    if args.max_batch is not None and not 1 <= args.max_batch <= 64:
        raise EdgeQwenError(f"--max-batch {args.max_batch} must be 1-64", where="--max-batch",
                            hint="1 serves one request at a time; the default comes from the artifact's target")
    if not 0 <= args.port <= 65535:
        raise EdgeQwenError(f"--port {args.port} is not a TCP port", where="--port", hint="0-65535; 0 picks a free port")
    try:
        server = make_server(Path(args.models), host=args.host, port=args.port, api_key=args.api_key,
                             rate_limit=args.rate_limit, threads=args.threads, max_connections=args.max_connections,
                             cors_origin=args.cors, max_batch=args.max_batch,
                             allow_local_images=args.allow_local_images, provider=args.provider)
    except OSError as exc:
        raise EdgeQwenError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", where="--host/--port",
                            hint="another process may hold the port; --port 0 picks a free one") from None
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
    p.add_argument("--provider", help="execution provider for every model (default: each artifact's own, CPU as its "
                   "declared fallback)")
    p.add_argument("--max-connections", type=int, default=256, help="open connections served at once (503 beyond)")
    p.add_argument("--max-batch", type=int, help="sequences decoded together per model (continuous batching; "
                   "default: the artifact's target, 4 on CPU targets; 1 = one request at a time)")
    p.add_argument("--allow-local-images", action="store_true", help="vision models: accept image_url parts that name "
                   "a file on this machine (default: data: URIs only)")
    p.add_argument("--cors", metavar="ORIGIN", help="allow browser pages from ORIGIN (e.g. http://localhost:8080, or *)")
    p.set_defaults(fn=cmd_serve)
