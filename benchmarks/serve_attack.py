"""Hostile-client load on `edgeqwen serve` (loopback only, bounded in count and time): does the server stay up, keep
its memory bounded, and keep answering a normal client?

    python benchmarks/serve_attack.py ARTIFACT [--out benchmarks/results/serve-attack.md]

Runs the server in its own process. Part 1, cases: each hostile request as a client sent it (smuggling, malformed
request lines, cross-site control, a trickled body, 24 parallel 1 MB prompts, SIGTERM during streams, ...), answered
well or not. Part 2, load: for each attack a normal chat request's latency (p50/p99 of 20, from 127.0.0.1) while the
attack runs, beside the same request on the idle server (the anchor), and the server's RSS (VmRSS after, VmHWM peak).
Attacks come from other loopback addresses (127.0.0.2, .3): 64 concurrent streams of which half disconnect after
the first chunk; 260 slow clients that never finish their headers; ten 50 MB bodies; then all three at once.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from serve_attack_cases import CASES  # noqa: E402 - beside this file

ATTACKER, BODIES = "127.0.0.2", "127.0.0.3"


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def normal_latencies(host, port, model, n=20) -> list[float]:
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
    def one(i):
        try:
            answered.append(stream_one(i))
        except OSError as exc:
            answered.append(f"error {type(exc).__name__}")

    def stream_one(i):
        conn = http.client.HTTPConnection(host, port, timeout=120, source_address=(BODIES, 0))
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


def slow_clients(host, port, n=260):
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection((host, port), timeout=5, source_address=(ATTACKER, 0))
            s.sendall(b"POST /v1/completions HTTP/1.1\r\n")  # and then a byte now and then, never the rest
            socks.append(s)
        except OSError:
            pass
    return socks


def big_bodies(host, port, n=10, size=50 << 20):
    answers = []
    for _ in range(n):
        with socket.create_connection((host, port), timeout=30, source_address=(BODIES, 0)) as s:
            s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {size}\r\n\r\n".encode())
            try:
                s.sendall(b"x" * (1 << 20))  # the server answers 413 without reading the rest
            except OSError:
                pass
            answers.append(s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace"))
    return answers


def load_rows(server, host, port, model) -> list:
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
    rows.append(("260 slow clients (headers never finish)", during, rss_mb(server.pid), f"{len(socks)} connected"))
    for s in socks:
        s.close()

    answers = []
    t = threading.Thread(target=lambda: answers.extend(big_bodies(host, port)))
    t.start()
    during = normal_latencies(host, port, model)
    t.join(300)
    rows.append(("ten 50 MB bodies", during, rss_mb(server.pid), f"{sum('413' in a for a in answers)}/10 answered 413"))

    answered, answers = [], []
    threads = streams(host, port, model, answered=answered)
    socks = slow_clients(host, port)
    t = threading.Thread(target=lambda: answers.extend(big_bodies(host, port)))
    t.start()
    during = normal_latencies(host, port, model)
    for th in [*threads, t]:
        th.join(300)
    rows.append(("all three at once", during, rss_mb(server.pid),
                 f"{answered.count(200)}/64 streams 200, {len(socks)} slow, "
                 f"{sum('413' in a for a in answers)}/10 413"))
    for s in socks:
        s.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--out")
    args = ap.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "edgeqwen.cli", "serve", args.artifact, "--port", "0",
                               "--grace", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split(" at ")[1].split("/v1")[0]
        host, port = url.removeprefix("http://").rsplit(":", 1)
        port = int(port)
        import urllib.request

        model = json.loads(urllib.request.urlopen(f"http://{host}:{port}/v1/models").read())["data"][0]["id"]
        before = rss_mb(server.pid)
        cases = [(name, fn(host, port, model)) for name, fn in CASES]
        after = rss_mb(server.pid)
        rows = load_rows(server, host, port, model)
        stops = sigterm_case(server, host, port, model)
    finally:
        server.kill()
    lines = [f"Cases: {sum(ok for _, (ok, _) in cases) + stops[0]}/{len(cases) + 1} answered well; server RSS "
             f"{before[0]:.0f} MB before, {after[0]:.0f} MB after (peak {after[1]:.0f} MB)", "",
             "| case | answered well | what came back |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if ok else 'NO'} | {note} |" for name, (ok, note) in cases]
    lines.append(f"| SIGTERM during 4 streams | {'yes' if stops[0] else 'NO'} | {stops[1]} |")
    lines += ["", "| attack | normal request p50 ms | p99 ms | p99 vs idle | server RSS MB (peak) | notes |",
              "|---|---|---|---|---|---|"]
    base = p(rows[0][1], 0.99)
    for name, lat, (rss, peak), note in rows:
        lines.append(f"| {name} | {p(lat, 0.5):.1f} | {p(lat, 0.99):.1f} | {p(lat, 0.99) / base:.2f}x | "
                     f"{rss:.0f} ({peak:.0f}) | {note} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(f"`python benchmarks/serve_attack.py {args.artifact}`\n\n{text}\n")
    return 0


def sigterm_case(server, host, port, model) -> tuple[bool, str]:
    """Four long streams, then SIGTERM: every stream must end with [DONE] (an error event first if it was cut), and
    the process must exit 0."""
    ends = []

    def one():
        conn = http.client.HTTPConnection(host, port, timeout=120)
        conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                     body=json.dumps({"model": model, "prompt": "x", "max_tokens": 1000, "stream": True}))
        data = conn.getresponse().read().decode(errors="replace").rstrip()
        ends.append(data.endswith("data: [DONE]"))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t0 = time.time()
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(30)
    except subprocess.TimeoutExpired:
        code = None
    for t in threads:
        t.join(30)
    ok = code == 0 and ends.count(True) == 4
    return ok, f"exit {code} after {time.time() - t0:.1f} s; {ends.count(True)}/4 streams ended with [DONE]"


if __name__ == "__main__":
    sys.exit(main())
