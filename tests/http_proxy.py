"""An HTTP proxy for tests, on 127.0.0.1 only, that rejects chosen `_bulk` items with 429 in place of the node.

The proxy forwards every request to one upstream node on 127.0.0.1. For a
`_bulk` request, ``reject(index, id)`` decides per item: a rejected item is
taken out of the request before it is forwarded (so the node never writes
it), and a 429 item is put back into the node's response at its position, as
a full write queue would answer. Each bulk request is recorded.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


@dataclass
class BulkRecord:
    """One bulk request as the client sent it: (action, index, id) per item, and the ids rejected with 429."""

    items: list[tuple[str, str, str]]
    rejected: list[str] = field(default_factory=list)


@dataclass
class BulkFaults:
    """What the proxy saw; read it after the run."""

    reject: Callable[[str, str], bool]
    bulks: list[BulkRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _split_bulk(body: bytes) -> list[tuple[dict[str, Any], bytes, bytes | None]]:
    """Return (action, action line, source line or None) per item of an NDJSON bulk body."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    items = []
    position = 0
    while position < len(lines):
        action = json.loads(lines[position])
        kind = next(iter(action))
        source = lines[position + 1] if kind != "delete" else None
        items.append((action, lines[position], source))
        position += 1 if source is None else 2
    return items


def _handler(upstream: str, faults: BulkFaults) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)
    assert target.hostname == "127.0.0.1", "the proxy forwards to a loopback node only"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            return

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            rejected_at: list[tuple[int, dict[str, Any]]] = []
            if self.path.split("?")[0].endswith("/_bulk") and body:
                body, rejected_at = self._filter_bulk(body)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                if rejected_at and not body.strip():
                    status, reply_headers, reply = 200, {"Content-Type": "application/json"}, b'{"items": []}'
                else:
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                    response = connection.getresponse()
                    status, reply = response.status, response.read()
                    reply_headers = {k: v for k, v in response.getheaders() if k.lower() not in HOP_HEADERS}
            finally:
                connection.close()
            if rejected_at and status == 200:
                reply = self._splice(reply, rejected_at)
            self.send_response(status)
            for key, value in reply_headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def _filter_bulk(self, body: bytes) -> tuple[bytes, list[tuple[int, dict[str, Any]]]]:
            items = _split_bulk(body)
            record = BulkRecord([])
            kept: list[bytes] = []
            rejected_at: list[tuple[int, dict[str, Any]]] = []
            for position, (action, line, source) in enumerate(items):
                kind = next(iter(action))
                meta = action[kind]
                index = meta.get("_index", "")
                doc_id = meta.get("_id", "")
                record.items.append((kind, index, doc_id))
                if kind == "create" and faults.reject(index, doc_id):
                    record.rejected.append(doc_id)
                    rejected_at.append((position, {kind: {
                        "_index": index, "_id": doc_id, "status": 429,
                        "error": {"type": "es_rejected_execution_exception",
                                  "reason": "rejected by the test proxy: write queue full"},
                    }}))
                    continue
                kept.append(line)
                if source is not None:
                    kept.append(source)
            with faults.lock:
                faults.bulks.append(record)
            return (b"\n".join(kept) + b"\n" if kept else b""), rejected_at

        @staticmethod
        def _splice(reply: bytes, rejected_at: list[tuple[int, dict[str, Any]]]) -> bytes:
            data = json.loads(reply)
            items = list(data.get("items", []))
            for position, item in rejected_at:
                items.insert(position, item)
            data["items"] = items
            data["errors"] = True
            data.setdefault("took", 0)
            return json.dumps(data).encode()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    return Handler


@contextmanager
def bulk_fault_proxy(upstream: str, reject: Callable[[str, str], bool]) -> Iterator[tuple[str, BulkFaults]]:
    """Run the proxy for the ``with`` block; yield its URL and the record of what it saw."""
    faults = BulkFaults(reject)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream, faults))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", faults
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
