"""Request/token/latency counters rendered in Prometheus text format."""

from __future__ import annotations

import threading
import time
from collections import defaultdict


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = defaultdict(int)
        self.errors = defaultdict(int)
        self.generated = defaultdict(int)
        self.latency_sum = defaultdict(float)
        self.busy_s = defaultdict(float)
        self.disconnects = 0
        self.t0 = time.time()

    def count_error(self, status: int) -> None:
        with self.lock:
            self.errors[status] += 1

    def tokens(self, model: str, n: int) -> None:
        with self.lock:
            self.generated[model] += n

    def observe(self, model: str, seconds: float) -> None:
        with self.lock:
            self.requests[model] += 1
            self.latency_sum[model] += seconds
            self.busy_s[model] += seconds

    def render(self, loaded: list[str]) -> str:
        with self.lock:
            lines = [
                "# HELP edgeqwen_requests_total Completed completion requests.",
                "# TYPE edgeqwen_requests_total counter",
                *(f'edgeqwen_requests_total{{model="{m}"}} {v}' for m, v in self.requests.items()),
                "# HELP edgeqwen_generated_tokens_total Generated tokens.",
                "# TYPE edgeqwen_generated_tokens_total counter",
                *(f'edgeqwen_generated_tokens_total{{model="{m}"}} {v}' for m, v in self.generated.items()),
                "# HELP edgeqwen_request_latency_seconds_sum Total request latency.",
                "# TYPE edgeqwen_request_latency_seconds_sum counter",
                *(f'edgeqwen_request_latency_seconds_sum{{model="{m}"}} {v:.4f}' for m, v in self.latency_sum.items()),
                "# HELP edgeqwen_tokens_per_second Generated tokens per second of generation time.",
                "# TYPE edgeqwen_tokens_per_second gauge",
                *(f'edgeqwen_tokens_per_second{{model="{m}"}} {self.generated[m] / v:.2f}'
                  for m, v in self.busy_s.items() if v > 0),
                "# HELP edgeqwen_errors_total Error responses by HTTP status.",
                "# TYPE edgeqwen_errors_total counter",
                *(f'edgeqwen_errors_total{{status="{s}"}} {v}' for s, v in self.errors.items()),
                "# TYPE edgeqwen_client_disconnects_total counter",
                f"edgeqwen_client_disconnects_total {self.disconnects}",
                "# TYPE edgeqwen_loaded_models gauge",
                f"edgeqwen_loaded_models {len(loaded)}",
            ]
        return "\n".join(lines) + "\n"
