"""A loopback HTTP proxy in front of a real registry that fails chosen requests.

Tests put it between the pipeline and the registry to show retries and
failures midway through a push. It forwards every request unchanged, Host
header included, so the registry's upload locations point at the proxy.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Given the method and path of a request, the status to respond with instead
# of forwarding it, RESET to close the connection without a response, or
# None to forward it.
Rule = Callable[[str, str], "int | None"]
RESET = 0
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class ProxyLog:
    """The requests the proxy received: (method, path, response status)."""

    requests: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.requests.append((method, path, status))


class FailFirst:
    """Respond with ``status`` to the first ``count`` matching requests, then forward."""

    def __init__(self, method: str, path_part: str, count: int, status: int = 503) -> None:
        self.method, self.path_part, self.count, self.status = method, path_part, count, status
        self.failed = 0
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str) -> int | None:
        if method != self.method or self.path_part not in path:
            return None
        with self._lock:
            if self.failed < self.count:
                self.failed += 1
                return self.status
        return None


class FailAfter:
    """Forward the first ``count`` matching requests, then respond with
    ``status`` to every later one: a registry that breaks down midway."""

    def __init__(self, method: str, path_part: str, count: int, status: int = 500) -> None:
        self.method, self.path_part, self.count, self.status = method, path_part, count, status
        self.passed = 0
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str) -> int | None:
        if method != self.method or self.path_part not in path:
            return None
        with self._lock:
            if self.passed < self.count:
                self.passed += 1
                return None
        return self.status


class BreakAfter:
    """Forward requests until one matching request has been forwarded, then
    respond with ``status`` to every later request of any kind."""

    def __init__(self, method: str, path_part: str, status: int = 500) -> None:
        self.method, self.path_part, self.status = method, path_part, status
        self.broken = False
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str) -> int | None:
        with self._lock:
            if self.broken:
                return self.status
            if method == self.method and self.path_part in path:
                self.broken = True
        return None


def _handler(upstream: tuple[str, int], rule: Rule, log: ProxyLog) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _proxy(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            status = rule(self.command, self.path)

            if status == RESET:
                self.close_connection = True
                log.add(self.command, self.path, RESET)
                return
            if status is not None:
                payload = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by the test proxy"}]}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                log.add(self.command, self.path, status)
                return

            connection = http.client.HTTPConnection(*upstream, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()

            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            connection.close()
            log.add(self.command, self.path, response.status)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _proxy

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def registry_proxy(upstream: tuple[str, int], rule: Rule) -> Iterator[tuple[int, ProxyLog]]:
    """Serve the proxy on a free port of 127.0.0.1; yield the port and its log."""
    log = ProxyLog()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream, rule, log))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], log
    finally:
        server.shutdown()
        server.server_close()
