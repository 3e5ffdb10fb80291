"""Read flow documents in time order with a resumable cursor.

Ordering: sort on (time field, optional tiebreaker field) inside a
point-in-time, whose implicit ``_shard_doc`` key makes ``search_after`` exact
within one polling cycle even when thousands of flows share a timestamp.

Resuming: a point-in-time does not survive a restart, so the stored cursor is
the last time value read plus the ``_id`` of every flow already read at exactly
that time, per index. A new cycle queries ``time >= cursor.time`` minus those
ids. That neither skips nor repeats a flow at a page boundary inside a run of
equal timestamps, and needs no unique field in indices ETA1 did not write
(Elasticsearch 8 refuses to sort on ``_id`` by default).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from elasticsearch import ApiError, Elasticsearch

from sidecar import schema
from sidecar.timeutil import to_utc_iso

log = logging.getLogger(__name__)

# Sort values are requested in this format so date and date_nanos fields both
# keep their full precision in the cursor.
TIME_FORMAT = "strict_date_optional_time_nanos"
PIT_KEEP_ALIVE = "5m"

# NOTE: a cursor keeps the ids of every flow read at its exact time value. Past
# this many, the resume query grows unwieldy; flows sharing one timestamp
# beyond it are still read once per cycle but a restart inside such a run
# re-reads it (alerts stay unique thanks to their deterministic ids).
MAX_SEEN_IDS = 20000


@dataclass
class Cursor:
    """Resume point: last time value read and the flows already read at exactly that time."""

    time: str | None = None
    seen: dict[str, list[str]] = field(default_factory=dict)  # index -> flow _ids

    def to_dict(self) -> dict[str, Any]:
        """Return the cursor as a JSON-ready dict."""
        return {"time": self.time, "seen": [{"index": k, "ids": v} for k, v in sorted(self.seen.items())]}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Cursor:
        """Rebuild a cursor stored by to_dict."""
        if not data:
            return cls()
        seen = {item["index"]: list(item["ids"]) for item in data.get("seen", [])}
        return cls(time=data.get("time"), seen=seen)

    def seen_count(self) -> int:
        """Return how many flow ids the cursor keeps."""
        return sum(len(ids) for ids in self.seen.values())

    def advance(self, hits: list[dict[str, Any]]) -> Cursor:
        """Return the cursor after reading these hits (in sort order)."""
        if not hits:
            return self
        last_time = hits[-1]["sort"][0]
        seen: dict[str, list[str]] = (
            {k: list(v) for k, v in self.seen.items()} if last_time == self.time else {}
        )
        for hit in reversed(hits):
            if hit["sort"][0] != last_time:
                break
            seen.setdefault(hit["_index"], []).append(hit["_id"])
        if sum(len(ids) for ids in seen.values()) > MAX_SEEN_IDS:
            log.warning(
                "more than %d flows share the timestamp %s; a restart inside this run may re-read some of them",
                MAX_SEEN_IDS, last_time,
            )
            seen = {index: ids[-MAX_SEEN_IDS:] for index, ids in seen.items()}
        return Cursor(time=last_time, seen=seen)


@dataclass
class Page:
    """One page of flow hits and the cursor after it."""

    hits: list[dict[str, Any]]
    cursor: Cursor


def source_fields(es: Elasticsearch, index: str, wanted: Iterable[str]) -> list[str] | None:
    """Return the field names, as mapped in the index, that carry the wanted canonical fields.

    Returns None when the mapping cannot be read, meaning "fetch the whole _source".
    """
    try:
        mappings = es.indices.get_mapping(index=index, allow_no_indices=True, ignore_unavailable=True)
    except ApiError as error:
        log.warning("could not read the mapping of %s (%s); fetching whole documents", index, error)
        return None
    present: set[str] = set()
    for body in mappings.body.values():
        _collect_paths(body.get("mappings", {}).get("properties", {}), "", present)
    wanted_set = set(wanted)
    chosen = sorted(name for name in present if (schema.canonical_name(name) or name) in wanted_set)
    return chosen or None


def _collect_paths(properties: dict[str, Any], prefix: str, out: set[str]) -> None:
    for name, spec in properties.items():
        path = prefix + name
        out.add(path)
        if "properties" in spec:
            _collect_paths(spec["properties"], path + ".", out)


class FlowReader:
    """Pages through one index pattern in (time, tiebreaker) order from a cursor."""

    def __init__(
        self,
        es: Elasticsearch,
        index: str,
        *,
        time_field: str,
        tiebreaker: str | None = None,
        fields: list[str] | None = None,
        page_size: int = 1000,
        use_pit: bool = True,
        prefetch: bool = False,
    ):
        self.es = es
        self.index = index
        self.time_field = time_field
        self.tiebreaker = tiebreaker
        self.fields = fields
        self.page_size = page_size
        self.use_pit = use_pit
        # Request the next page in a background thread while the caller handles this one.
        self.prefetch = prefetch

    def _sort(self) -> list[dict[str, Any]]:
        sort: list[dict[str, Any]] = [{self.time_field: {"order": "asc", "format": TIME_FORMAT}}]
        if self.tiebreaker:
            sort.append({self.tiebreaker: {"order": "asc", "unmapped_type": "keyword", "missing": "_last"}})
        return sort

    def _query(self, cursor: Cursor, lower: datetime | None, upper: datetime | None) -> dict[str, Any]:
        time_range: dict[str, Any] = {}
        if cursor.time is not None:
            time_range["gte"] = cursor.time
        elif lower is not None:
            time_range["gte"] = to_utc_iso(lower)
        if lower is not None and cursor.time is not None:
            # The window's start still applies when the cursor lies before it.
            filters_lower = {"range": {self.time_field: {"gte": to_utc_iso(lower)}}}
        else:
            filters_lower = None
        if upper is not None:
            time_range["lt"] = to_utc_iso(upper)
        filters: list[dict[str, Any]] = [{"exists": {"field": self.time_field}}]
        if time_range:
            filters.append({"range": {self.time_field: time_range}})
        if filters_lower:
            filters.append(filters_lower)
        must_not = [
            {"bool": {"filter": [{"term": {"_index": index}}, {"ids": {"values": ids}}]}}
            for index, ids in cursor.seen.items()
            if ids
        ]
        return {"bool": {"filter": filters, "must_not": must_not}}

    def pages(
        self,
        cursor: Cursor,
        *,
        lower: datetime | None = None,
        upper: datetime | None = None,
    ) -> Iterator[Page]:
        """Yield pages after the cursor, with times in [lower, upper), until none are left.

        The caller stores each page's cursor only after handling its flows;
        stopping the iteration early loses nothing. With ``prefetch``, the
        request for the next page is sent before a page is yielded, so it runs
        while the caller handles that page. A page fetched but never yielded
        is dropped, and an error of the prefetch is raised at the next
        iteration, where it would have occurred without prefetching.
        """
        pit_id = self._open_pit() if self.use_pit else None
        # Inside a point-in-time, search_after moves on and the query stays
        # as the cycle began; without one, each query restarts from the cursor.
        query = self._query(cursor, lower, upper)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eta1-prefetch") if self.prefetch else None
        try:
            search_after: list[Any] | None = None
            pending = self._submit(pool, self._search, query, pit_id, search_after)
            while True:
                response = pending.result() if isinstance(pending, Future) else pending
                pit_id = response.get("pit_id", pit_id)
                hits = response["hits"]["hits"]
                if not hits:
                    return
                cursor = cursor.advance(hits)
                search_after = hits[-1]["sort"]
                more = len(hits) >= self.page_size
                if more:
                    if pit_id is None:
                        # Without a point-in-time, the next query starts from the
                        # cursor itself, which is exact but re-sorts from there.
                        query = self._query(cursor, lower, upper)
                        search_after = None
                    pending = self._submit(pool, self._search, query, pit_id, search_after)
                yield Page(hits, cursor)
                if not more:
                    return
        finally:
            if pool is not None:
                # Waits for a prefetch still in flight, so the point-in-time is closed after it.
                pool.shutdown(wait=True, cancel_futures=True)
            if pit_id is not None:
                self._close_pit(pit_id)

    @staticmethod
    def _submit(pool: ThreadPoolExecutor | None, function: Any, *args: Any) -> Any:
        """Run function now, or in the pool (returning its Future) when prefetching."""
        return pool.submit(function, *args) if pool is not None else function(*args)

    def _search(self, query: dict[str, Any], pit_id: str | None, search_after: list[Any] | None) -> Any:
        """Send one page request and return the response."""
        body: dict[str, Any] = {
            "size": self.page_size,
            "sort": self._sort(),
            "query": query,
            "track_total_hits": False,
        }
        if self.fields is not None:
            body["_source"] = {"includes": self.fields + [self.time_field]}
        if pit_id is not None:
            body["pit"] = {"id": pit_id, "keep_alive": PIT_KEEP_ALIVE}
            if search_after is not None:
                body["search_after"] = search_after
            return self.es.search(**body)
        return self.es.search(index=self.index, ignore_unavailable=True, allow_no_indices=True, **body)

    def _open_pit(self) -> str | None:
        try:
            response = self.es.open_point_in_time(
                index=self.index, keep_alive=PIT_KEEP_ALIVE, ignore_unavailable=True
            )
            return str(response["id"])
        except ApiError as error:
            if error.status_code in (400, 404, 405):
                log.info("point-in-time not available on %s (%s); paging without it", self.index, error.message)
                self.use_pit = False
                return None
            raise

    def _close_pit(self, pit_id: str) -> None:
        try:
            self.es.close_point_in_time(id=pit_id)
        except Exception as error:  # noqa: BLE001 - closing is best effort; the PIT expires anyway
            log.debug("could not close point-in-time: %s", error)
