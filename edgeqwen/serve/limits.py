"""Per-client request limits for the server."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque


class RateLimiter:
    """Sliding one-minute window of requests per client (its valid API key, else its address). The table is
    pruned as it goes and bounded: a client cannot grow it by inventing keys."""

    MAX_CLIENTS = 4096

    def __init__(self, per_minute: int | None):
        if per_minute is not None and per_minute < 1:
            raise ValueError(f"rate limit must be >= 1 request per minute (got {per_minute}); omit it for no limit")
        self.per_minute = per_minute
        self.hits: dict[str, deque] = defaultdict(deque)
        self.lock = threading.Lock()

    def retry_after(self, key: str) -> int | None:
        """None when the request may go ahead (and it is counted), else the seconds until it may."""
        if not self.per_minute:
            return None
        now = time.monotonic()
        with self.lock:
            if key not in self.hits and len(self.hits) >= self.MAX_CLIENTS:
                for k in [k for k, q in self.hits.items() if not q or now - q[-1] > 60]:
                    del self.hits[k]
                if len(self.hits) >= self.MAX_CLIENTS:
                    return 60
            q = self.hits[key]
            while q and now - q[0] > 60:
                q.popleft()
            if len(q) >= self.per_minute:
                return max(1, int(61 - (now - q[0])))
            q.append(now)
            return None
