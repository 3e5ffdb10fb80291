"""On-demand detection over HTTP, compatible with the old ETA1 route: the WSGI app of ``sidecar.api_app`` on waitress.

``eta1 serve`` calls ``serve``; ``eta1 run`` with ``api.enabled`` calls
``start_background_server``. waitress runs a few threads beyond the scan slots,
so probes still get responses while every scan slot is busy.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

import waitress
from elasticsearch import Elasticsearch
from waitress import wasyncore

from sidecar.api_app import ApiLimits, DetectionApi, DetectorSource
from sidecar.config import Config
from sidecar.errors import SidecarError
from sidecar.metrics import Metrics

log = logging.getLogger(__name__)


class ApiServer:
    """A waitress server on one listening socket, run in the calling thread or in a background thread."""

    def __init__(self, app: DetectionApi, host: str, port: int):
        self.app = app
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            listener = socket.create_server((host, port), family=family)
        except OSError as error:
            raise SidecarError(
                f"cannot listen on {host}:{port}: {error}; choose another api.port (or --port) or api.host"
            ) from None
        threads = app.limits.max_concurrent_scans + app.limits.spare_threads
        self._server = waitress.create_server(
            app,
            sockets=[listener],
            threads=threads,
            ident="eta1",
            expose_tracebacks=False,
            # No route takes a request body, so a small limit rejects floods early.
            max_request_body_size=65536,
            max_request_header_size=65536,
        )
        self.host = host
        self.port = int(self._server.effective_port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Return the base URL the server listens on."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve in the calling thread until request_stop() or shutdown() is called."""
        try:
            self._server.run()
        finally:
            self._server.task_dispatcher.shutdown(timeout=self.app.limits.shutdown_timeout_seconds)

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="eta1-api", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Stop accepting connections, wait for requests in progress, then close every connection.

        Blocks for up to the shutdown timeout. Safe from any thread, but not
        from a signal handler, because the trigger takes a lock that the
        interrupted loop may hold.
        """
        if self.app.stopping.is_set():
            return
        self.app.stopping.set()
        server = self._server
        # waitress keeps the listener and its connections in a private socket map. wasyncore.loop runs
        # while the map is non-empty, and the trigger runs each function in the loop's thread.
        server_map = server._map
        server.trigger.pull_trigger(lambda: wasyncore.dispatcher.close(server))
        deadline = time.monotonic() + self.app.limits.shutdown_timeout_seconds
        while time.monotonic() < deadline and self._busy(server_map):
            time.sleep(0.05)
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server_map))

    def _busy(self, server_map: dict[int, Any]) -> bool:
        """Return whether a request is queued or running, or a response is not yet sent."""
        dispatcher = self._server.task_dispatcher
        if dispatcher.active_count or dispatcher.queue:
            return True
        return any(getattr(channel, "total_outbufs_len", 0) for channel in list(server_map.values()))

    def shutdown(self) -> None:
        """Stop serving and wait for requests in progress, up to the shutdown timeout."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(self.app.limits.shutdown_timeout_seconds + 5)
            self._thread = None
        log.info("HTTP API on %s stopped", self.url)


def start_background_server(
    config: Config,
    es: Elasticsearch,
    metrics: Metrics,
    *,
    detector_source: DetectorSource,
    host: str | None = None,
    port: int | None = None,
    limits: ApiLimits = ApiLimits(),
) -> ApiServer:
    """Serve the API in a background thread next to the daemon's loop. Call .shutdown() to stop it."""
    app = DetectionApi(config, es, metrics, detector_source, limits=limits)
    server = ApiServer(app, host or config.api.host, config.api.port if port is None else port)
    server.start()
    log.info("HTTP API listening on %s", server.url)
    return server


def serve(config: Config, *, host: str | None = None, port: int | None = None, limits: ApiLimits = ApiLimits()) -> int:
    """Load the model, connect, and serve until SIGTERM or SIGINT. Return the exit code."""
    from sidecar.esclient import make_client
    from sidecar.pipeline import load_detector

    detector = load_detector(config)
    es = make_client(config.cluster)
    app = DetectionApi(config, es, Metrics(), lambda: detector, limits=limits)
    server = ApiServer(app, host or config.api.host, config.api.port if port is None else port)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s received; finishing requests in progress", signal.Signals(signum).name)
        threading.Thread(target=server.request_stop, name="eta1-api-stop", daemon=True).start()

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    log.info(
        "HTTP API listening on %s (model sha256 %s, allowed indices %s, at most %d concurrent scans)",
        server.url, detector.model.sha256[:12], app.policy.describe(), limits.max_concurrent_scans,
    )
    try:
        server.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        es.close()
    log.info("HTTP API on %s stopped", server.url)
    return 0
