"""`edgeqwen serve DIR`."""

from __future__ import annotations

from pathlib import Path

# flag → (smallest, largest, hint): numbers outside are refused before anything starts
BOUNDS = {
    "rate_limit": (1, 10**9, "omit --rate-limit for no limit"),
    "max_batch": (1, 64, "1 serves one request at a time; the default comes from the artifact's target"),
    "port": (0, 65535, "0-65535; 0 picks a free port"),
    "max_connections": (1, 100_000, "open connections served at once; 503 beyond"),
    "max_connections_per_client": (1, 100_000, "open connections from one address; 503 beyond"),
    "request_timeout": (0.5, 3600, "seconds a whole request (line, headers, body) may take to arrive"),
    "grace": (0, 3600, "seconds running generations may finish after SIGTERM"),
    "threads": (1, 1024, "onnxruntime intra-op threads per model"),
}


def _validate(args) -> None:
    from ..errors import EdgeQwenError

    for name, (lo, hi, hint) in BOUNDS.items():
        value = getattr(args, name, None)
        if value is not None and not lo <= value <= hi:
            flag = "--" + name.replace("_", "-")
            raise EdgeQwenError(f"{flag} {value} must be in {lo}-{hi}", where=flag, hint=hint)


def cmd_serve(args) -> int:
    from ..errors import EdgeQwenError
    from .server import make_server

    _validate(args)
    try:
        server = make_server(Path(args.models), host=args.host, port=args.port, api_key=args.api_key,
                             rate_limit=args.rate_limit, threads=args.threads, max_connections=args.max_connections,
                             max_connections_per_client=args.max_connections_per_client,
                             request_timeout=args.request_timeout, grace=args.grace, cors_origin=args.cors,
                             allow_hosts=tuple(args.allow_host or ()), max_batch=args.max_batch,
                             allow_local_images=args.allow_local_images, provider=args.provider,
                             speculate=args.speculate)
    except OSError as exc:
        raise EdgeQwenError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", where="--host/--port",
                            hint="another process may hold the port; --port 0 picks a free one") from None
    print(f"edgeqwen serving {', '.join(server.cache.models)} at {server.url}/v1", flush=True)  # scripts read this line
    print(f"Ollama API at {server.url}/api", flush=True)
    server.serve_forever()  # SIGTERM/SIGINT: a graceful stop (see server.EdgeServer), then exit 0
    print("edgeqwen serve: stopped", flush=True)
    return 0


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI- and Ollama-compatible local server over an artifact or a folder of them")
    p.add_argument("models", help="artifact folder, or a folder holding several")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5273, help="0 picks a free port (printed)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (every route but /health, /metrics too)")
    p.add_argument("--rate-limit", type=int, help="requests per minute per key (429 beyond)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads per model")
    p.add_argument("--provider", help="execution provider for every model (default: each artifact's own, CPU as its "
                   "declared fallback)")
    p.add_argument("--max-connections", type=int, default=1024, help="open connections served at once (503 beyond)")
    p.add_argument("--max-connections-per-client", type=int, default=128,
                   help="open connections from one client address (503 beyond)")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds for a whole request to arrive: line, headers and body (408 beyond)")
    p.add_argument("--grace", type=float, default=10.0, help="on SIGTERM/SIGINT: seconds running generations may "
                   "finish before they are ended with an error event")
    p.add_argument("--max-batch", type=int, help="sequences decoded together per model (continuous batching; "
                   "default: the artifact's target, 4 on CPU targets; 1 = one request at a time)")
    p.add_argument("--speculate", choices=["lookup"], help="speculative decoding by prompt lookup for every request "
                   "that does not send \"speculate\": \"none\" (output unchanged; a request may also ask for it alone)")
    p.add_argument("--allow-local-images", action="store_true", help="vision models: accept image_url parts that name "
                   "a file on this machine (default: data: URIs only)")
    p.add_argument("--cors", metavar="ORIGIN", help="allow browser pages from ORIGIN (e.g. http://localhost:8080, or *)")
    p.add_argument("--allow-host", action="append", metavar="NAME", help="also answer requests whose Host is NAME "
                   "(default: loopback names, IP addresses and --host; '*' for any; repeatable)")
    p.set_defaults(fn=cmd_serve)
