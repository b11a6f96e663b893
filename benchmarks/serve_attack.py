"""Hostile-client load on `edgeqwen serve` (loopback only, bounded in count and time): does the server stay up, keep
its memory bounded, and keep answering a normal client?

    python benchmarks/serve_attack.py ARTIFACT [--out benchmarks/results/serve-attack.md]

Runs the server in its own process and, for each attack, measures a normal chat request's latency (p50/p99 of 20)
while the attack runs, beside the same request on the idle server (the anchor), and the server's RSS (VmRSS after,
VmHWM peak). Attacks: 64 concurrent streams of which half disconnect after the first chunk; 200 slow clients that
never finish their headers; ten 50 MB bodies.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def normal_latencies(host, port, model, n=20) -> list[float]:
    import http.client

    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "What is a class?"}], "max_tokens": 8})
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=120)
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        out.append((time.perf_counter() - t0) * 1000 if resp.status == 200 else float("inf"))
    return out


def p(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def streams(host, port, model, n=64, answered=None):
    import http.client

    def one(i):
        try:
            answered.append(stream_one(i))
        except OSError as exc:
            answered.append(f"error {type(exc).__name__}")

    def stream_one(i):
        conn = http.client.HTTPConnection(host, port, timeout=120)
        body = json.dumps({"model": model, "prompt": f"item {i}", "max_tokens": 64, "stream": True})
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if i % 2:
            resp.readline()
            conn.close()  # go away mid-stream
            return resp.status
        body = resp.read()
        conn.close()
        return resp.status if body.rstrip().endswith(b"data: [DONE]") else "incomplete"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def slow_clients(host, port, n=200):
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            socks.append(s)
        except OSError:
            pass
    return socks


def big_bodies(host, port, n=10, size=50 << 20):
    answers = []
    for _ in range(n):
        with socket.create_connection((host, port), timeout=30) as s:
            s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {size}\r\n\r\n".encode())
            try:
                s.sendall(b"x" * (1 << 20))  # the server answers 413 without reading the rest
            except OSError:
                pass
            answers.append(s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace"))
    return answers


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--out")
    args = ap.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "edgeqwen", "serve", args.artifact, "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip().rsplit(" at ", 1)[-1]
        host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
        port = int(port)
        import urllib.request

        model = json.loads(urllib.request.urlopen(f"http://{host}:{port}/v1/models").read())["data"][0]["id"]
        normal_latencies(host, port, model, 3)  # load the model
        idle = normal_latencies(host, port, model)
        rows = [("idle (anchor)", idle, rss_mb(server.pid), "")]

        answered: list = []
        threads = streams(host, port, model, answered=answered)
        during = normal_latencies(host, port, model)
        for t in threads:
            t.join(300)
        rows.append(("64 streams, half disconnect", during, rss_mb(server.pid),
                     f"{answered.count(200)}/64 answered 200 (32 read to [DONE])"))

        socks = slow_clients(host, port)
        during = normal_latencies(host, port, model)
        rows.append(("200 slow clients (headers never finish)", during, rss_mb(server.pid), f"{len(socks)} held open"))
        for s in socks:
            s.close()

        answers = []
        t = threading.Thread(target=lambda: answers.extend(big_bodies(host, port)))
        t.start()
        during = normal_latencies(host, port, model)
        t.join(300)
        rows.append(("ten 50 MB bodies", during, rss_mb(server.pid),
                     f"{sum('413' in a for a in answers)}/10 answered 413"))
        lines = ["| attack | normal request p50 ms | p99 ms | p99 vs idle | server RSS MB (peak) | notes |",
                 "|---|---|---|---|---|---|"]
        base = p(idle, 0.99)
        for name, lat, (rss, peak), note in rows:
            lines.append(f"| {name} | {p(lat, 0.5):.1f} | {p(lat, 0.99):.1f} | {p(lat, 0.99) / base:.2f}x | "
                         f"{rss:.0f} ({peak:.0f}) | {note} |")
        text = "\n".join(lines)
        print(text)
        if args.out:
            Path(args.out).write_text(f"`python benchmarks/serve_attack.py {args.artifact}`\n\n{text}\n")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
