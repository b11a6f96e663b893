"""Connections on uvicorn's h11 protocol, with what one slow or greedy client must not be able to do:

- a budget of open connections per client address, and one overall (503 and close beyond, before any parsing);
- a whole-request deadline: request line, headers and body must all arrive within `request_timeout` seconds of the
  request's first byte (of the connection, for the first request) — a byte every few seconds no longer keeps a
  request open forever (408 and close); idle keep-alive connections close after uvicorn's keep-alive timeout;
- malformed requests (conflicting Content-Lengths, bad request lines, oversized headers) answered with a status line
  and a JSON error, then closed: h11 parses, so nothing is ever read as a second request.
"""

from __future__ import annotations

import json
from collections import Counter

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class ConnectionBudget:
    """Open connections by client address, against the per-client and overall limits."""

    def __init__(self, total: int, per_client: int, request_timeout: float, metrics):
        self.total, self.per_client, self.request_timeout, self.metrics = total, per_client, request_timeout, metrics
        self.open: Counter = Counter()

    def admit(self, addr: str) -> str | None:
        """None when a new connection from `addr` may open (and it is counted), else why not."""
        if sum(self.open.values()) >= self.total:
            return "server busy: too many open connections; retry shortly"
        if self.open[addr] >= self.per_client:
            return f"too many open connections from {addr} (the limit is {self.per_client} per client)"
        self.open[addr] += 1
        return None

    def release(self, addr: str) -> None:
        self.open[addr] -= 1
        if self.open[addr] <= 0:
            del self.open[addr]


def _raw_error(status: int, reason: str, message: str, code: str, retry: bool = False) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                 "server_error", "param": None, "code": code}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{'Retry-After: 1' + chr(13) + chr(10) if retry else ''}Connection: close\r\n\r\n")
    return head.encode() + body


def protocol_class(budget: ConnectionBudget):
    """An H11Protocol subclass bound to this server's budget (uvicorn instantiates it per connection)."""

    class EdgeProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._addr = (self.client or ("?", 0))[0]
            self._deadline = None
            self._counted = False
            self._parse_error = None
            next_event = self.conn.next_event

            def remember(*args):  # h11's reason for a 400, for the JSON body
                try:
                    return next_event(*args)
                except h11.RemoteProtocolError as exc:
                    self._parse_error = str(exc)
                    raise
            self.conn.next_event = remember
            why = budget.admit(self._addr)
            if why is not None:
                budget.metrics.count_error(503)
                self.transport.write(_raw_error(503, "Service Unavailable", why, "server_busy", retry=True))
                self.transport.close()
                return
            self._counted = True
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._counted:
                self._counted = False
                budget.release(self._addr)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
                self._arm()  # a request is arriving: it has until the deadline
            else:
                self._disarm()  # received whole (or the connection is over)

        def _arm(self) -> None:
            if self._deadline is None and not self.transport.is_closing():
                self._deadline = self.loop.call_later(budget.request_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def on_response_complete(self) -> None:
            self._disarm()  # the keep-alive timer takes over until the next request's first byte
            super().on_response_complete()

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or not self.cycle.response_started:
                budget.metrics.count_error(408)
                self.transport.write(_raw_error(408, "Request Timeout", f"the request was not received within "
                                                f"{budget.request_timeout:g} s", "request_timeout"))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            budget.metrics.count_error(400)
            detail = self._parse_error or msg
            self.transport.write(_raw_error(400, "Bad Request", f"malformed HTTP request: {detail}", "bad_request"))
            self.transport.close()

    return EdgeProtocol
