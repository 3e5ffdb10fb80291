"""A TCP proxy for tests, on 127.0.0.1 only, that delays or cuts chosen connections to a loopback node.

``fault(n)`` is called for each HTTP request, numbered from 0 across all
connections. A request is recognised by a method token at the start of a
client write. The function returns "pass", "delay" or "cut". "delay" holds
the node's reply for ``delay_seconds``, longer than the client's
request_timeout. "cut" forwards the request, then closes the connection after
half of the reply's first bytes. The node acts on
every request either way; only the reply is lost. Every
thread is a daemon thread, every socket has a timeout, and ``close()`` ends
all of them.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

METHODS = {b"GET", b"POST", b"PUT", b"HEAD", b"DELETE"}


class TcpProxy:
    """Forward 127.0.0.1:<port> to one loopback upstream, injecting faults per request."""

    def __init__(self, upstream: str, fault: Callable[[int], str], delay_seconds: float = 3.0):
        target = urlsplit(upstream)
        if target.hostname != "127.0.0.1" or target.port is None:
            raise ValueError(f"upstream must be http://127.0.0.1:PORT, got {upstream}")
        self.upstream = (target.hostname, target.port)
        self.fault = fault
        self.delay_seconds = delay_seconds
        self.applied: Counter[str] = Counter()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._count = 0
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.settimeout(0.2)
        pending: list[str] = []  # the mode for the reply to the latest request on this connection
        threading.Thread(target=self._pump, args=(client, upstream, pending, True), daemon=True).start()
        self._pump(upstream, client, pending, False)

    def _next_mode(self) -> str:
        with self._lock:
            number, self._count = self._count, self._count + 1
        mode = self.fault(number)
        with self._lock:
            self.applied[mode] += 1
        return mode

    def _pump(self, source: socket.socket, sink: socket.socket, pending: list[str], requests: bool) -> None:
        """Copy bytes from source to sink until either closes; on the reply side, apply the request's mode."""
        try:
            while not self._stop.is_set():
                try:
                    data = source.recv(65536)
                except (TimeoutError, socket.timeout):
                    continue
                if not data:
                    break
                if requests:
                    if data.split(b" ", 1)[0] in METHODS:
                        pending[:] = [self._next_mode()]
                    sink.sendall(data)
                    continue
                mode = pending.pop() if pending else "pass"
                if mode == "delay":
                    self._stop.wait(self.delay_seconds)
                if mode == "cut":
                    sink.sendall(data[: max(1, len(data) // 2)])
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


@contextmanager
def tcp_proxy(upstream: str, fault: Callable[[int], str], delay_seconds: float = 3.0) -> Iterator[TcpProxy]:
    """Run a TcpProxy for the ``with`` block."""
    proxy = TcpProxy(upstream, fault, delay_seconds)
    try:
        yield proxy
    finally:
        proxy.close()

