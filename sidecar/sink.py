"""Write alerts with the bulk API, exactly once per (flow, rule).

Each alert is sent with ``create`` under its deterministic id: a 409 means the
alert already exists (a replayed batch), so it counts as done and the first
write's timestamps stay. Items that fail with 429 or 5xx, and whole requests
that fail on the connection, are retried alone with capped exponential
backoff. An item rejected for good (a 4xx such as a mapping conflict) is
logged with its flow id, counted, and stored in the dead-letter index with the
reason, so the cursor can move on without losing it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, Elasticsearch

from sidecar.alerts import Alert
from sidecar.timeutil import to_utc_iso

import orjson

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BULK_FILTER_PATH = "items.*.status,items.*.error"

DEAD_LETTER_MAPPING = {
    "settings": {"number_of_shards": 1, "auto_expand_replicas": "0-1"},
    "mappings": {
        "dynamic": False,
        "properties": {
            "@timestamp": {"type": "date"},
            "flow_id": {"type": "keyword"},
            "alert_index": {"type": "keyword"},
            "alert_id": {"type": "keyword"},
            "status": {"type": "long"},
            "error_type": {"type": "keyword"},
            "reason": {"type": "text"},
            "document": {"type": "object", "enabled": False},
        },
    },
}


class StopRequested(Exception):
    """Raised inside a retry loop when the daemon is asked to stop."""


@dataclass
class WriteResult:
    """Outcome of writing one batch of alerts."""

    created: int = 0
    existing: int = 0
    dead_lettered: int = 0
    retries: int = 0
    created_by_signature: Counter[str] = field(default_factory=Counter)


@dataclass
class Backoff:
    """Capped exponential backoff that reports an outage once, not once per attempt."""

    initial: float = 0.5
    maximum: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    should_stop: Callable[[], bool] = lambda: False
    # Seconds of continuous failure after which the error is raised; None retries forever.
    give_up_after: float | None = None
    _delay: float = 0.0
    _outage_since: float | None = None

    def failed(self, what: str, error: BaseException) -> None:
        """Record a failed attempt and sleep before the next one."""
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("%s failed: %s; retrying with backoff up to %.0fs", what, _short(error), self.maximum)
        else:
            log.debug("%s failed again: %s", what, _short(error))
        if self.give_up_after is not None and time.monotonic() - self._outage_since > self.give_up_after:
            log.error("%s still failing after %.0fs; giving up: %s", what, self.give_up_after, _short(error))
            raise error
        self._delay = min(self.maximum, max(self.initial, self._delay * 2))
        waited = 0.0
        while waited < self._delay:
            if self.should_stop():
                raise StopRequested()
            step = min(0.5, self._delay - waited)
            self.sleep(step)
            waited += step

    def succeeded(self, what: str) -> None:
        """Reset after a success; log the recovery if there was an outage."""
        if self._outage_since is not None:
            log.warning("%s succeeded again after %.1fs", what, time.monotonic() - self._outage_since)
        self._outage_since = None
        self._delay = 0.0


def _ndjson(lines: list[dict[str, Any]]) -> bytes | list[dict[str, Any]]:
    """Serialise bulk lines with orjson; the bytes are sent as they are.

    orjson encodes alert documents several times faster than the json module.
    A value orjson cannot encode leaves the lines to the client's serializer.
    """
    try:
        return b"\n".join([orjson.dumps(line) for line in lines]) + b"\n"
    except TypeError:
        return lines


def _short(error: BaseException) -> str:
    text = str(error)
    return text if len(text) <= 300 else text[:297] + "..."


def is_transient(error: BaseException) -> bool:
    """Return True for errors worth retrying: connection problems, timeouts, 429 and 5xx."""
    if isinstance(error, (TransportConnectionError, ConnectionTimeout)):
        return True
    if isinstance(error, ApiError):
        return error.status_code in RETRY_STATUSES
    return False


class AlertSink:
    """Bulk-write alerts, retrying transient failures until each one is stored or dead-lettered."""

    def __init__(
        self,
        es: Elasticsearch,
        *,
        dead_letter_index: str = "eta1-dead-letter",
        backoff: Backoff | None = None,
        dry_run: bool = False,
    ):
        self.es = es
        self.dead_letter_index = dead_letter_index
        self.backoff = backoff or Backoff()
        self.dry_run = dry_run

    def ensure_dead_letter_index(self) -> None:
        """Create the dead-letter index if it does not exist."""
        if not self.es.indices.exists(index=self.dead_letter_index):
            self.es.options(ignore_status=400).indices.create(index=self.dead_letter_index, **DEAD_LETTER_MAPPING)

    def write(self, alerts: Sequence[Alert]) -> WriteResult:
        """Store every alert; return when each is created, already present, or dead-lettered."""
        result = WriteResult()
        if self.dry_run or not alerts:
            return result
        pending = list(alerts)
        while pending:
            operations: list[dict[str, Any]] = []
            for alert in pending:
                operations.append({"create": {"_index": alert.index, "_id": alert.id}})
                operations.append(alert.document)
            try:
                response = self.es.bulk(
                    operations=_ndjson(operations),  # type: ignore[arg-type]
                    refresh=False,
                    # Only each item's status and error are read; the rest of a ~200-byte item is not sent.
                    filter_path=BULK_FILTER_PATH,
                )
            except Exception as error:  # noqa: BLE001 - transient ones retry, others propagate
                if not is_transient(error):
                    raise
                result.retries += 1
                self.backoff.failed("bulk write of alerts", error)
                continue
            self.backoff.succeeded("bulk write of alerts")
            retry: list[Alert] = []
            rejected: list[tuple[Alert, dict[str, Any]]] = []
            for alert, item in zip(pending, response["items"]):
                outcome = item["create"]
                status = outcome.get("status", 500)
                if status in (200, 201):
                    result.created += 1
                    result.created_by_signature[alert.document["alert"]["signature"]] += 1
                elif status == 409:
                    result.existing += 1
                elif status in RETRY_STATUSES:
                    retry.append(alert)
                else:
                    rejected.append((alert, outcome))
            if rejected:
                self._dead_letter(rejected)
                result.dead_lettered += len(rejected)
            if retry:
                result.retries += 1
                first = next(item for item in response["items"] if item["create"].get("status") in RETRY_STATUSES)
                error = RuntimeError(f"{len(retry)} of {len(pending)} alerts rejected: {first['create'].get('error')}")
                self.backoff.failed("bulk write of alerts", error)
            pending = retry
        return result

    def _dead_letter(self, rejected: list[tuple[Alert, dict[str, Any]]]) -> None:
        now = to_utc_iso(datetime.now(timezone.utc))
        operations: list[dict[str, Any]] = []
        for alert, outcome in rejected:
            error = outcome.get("error") or {}
            log.error(
                "alert %s for flow %s rejected by %s (status %s, %s: %s); stored in %s",
                alert.id, alert.document.get("flow_id"), alert.index, outcome.get("status"),
                error.get("type"), error.get("reason"), self.dead_letter_index,
            )
            operations.append({"index": {"_index": self.dead_letter_index, "_id": f"{alert.index}:{alert.id}"}})
            operations.append({
                "@timestamp": now,
                "flow_id": alert.document.get("flow_id"),
                "alert_index": alert.index,
                "alert_id": alert.id,
                "status": outcome.get("status"),
                "error_type": error.get("type"),
                "reason": json.dumps(error)[:2000],
                "document": alert.document,
            })
        while True:
            try:
                response = self.es.bulk(operations=operations, refresh=False)
            except Exception as error:  # noqa: BLE001 - transient ones retry, others propagate
                if not is_transient(error):
                    raise
                self.backoff.failed("write to the dead-letter index", error)
                continue
            failed = [item["index"] for item in response["items"] if item["index"].get("status", 500) >= 300]
            if not failed:
                self.backoff.succeeded("write to the dead-letter index")
                return
            # The cursor must not move past alerts that are stored nowhere.
            self.backoff.failed(
                "write to the dead-letter index",
                RuntimeError(f"{len(failed)} items rejected: {failed[0].get('error')}"),
            )
