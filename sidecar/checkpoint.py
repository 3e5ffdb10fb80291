"""The daemon's checkpoint and lease, stored in an Elasticsearch state index.

One document per daemon name holds the cursor and a lease (owner, expiry).
Every write carries ``if_seq_no``/``if_primary_term``, so when two daemons
share a name, the second one's write is rejected (409) instead of silently
moving the first one's cursor.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from elasticsearch import ConflictError, Elasticsearch, NotFoundError

from sidecar.errors import CursorConflictError
from sidecar.source import Cursor
from sidecar.timeutil import parse_time, to_utc_iso

log = logging.getLogger(__name__)

STATE_MAPPING = {
    "settings": {"number_of_shards": 1, "auto_expand_replicas": "0-1"},
    "mappings": {
        "dynamic": False,
        "properties": {
            "owner": {"type": "keyword"},
            "lease_until": {"type": "date"},
            "updated_at": {"type": "date"},
            "source_index": {"type": "keyword"},
            "time_field": {"type": "keyword"},
            # The cursor is stored, not searched.
            "cursor": {"type": "object", "enabled": False},
        },
    },
}


def new_owner_id() -> str:
    """Return an id for this process: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """Return True when the owner id names a process on this host that no longer runs.

    A daemon restarted after a crash then resumes at once instead of waiting
    for its predecessor's lease to expire. Owners on other hosts, and live or
    unknown processes, count as alive.
    """
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        # Another daemon in this process, or a predecessor that had the same
        # pid (a container restarted as pid 1): only the lease expiry can tell.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class Lease:
    """Lease on the checkpoint: owner, expiry, and the document version it was read at."""

    owner: str | None
    until: datetime | None
    seq_no: int | None
    primary_term: int | None


class Checkpoint:
    """Load and store one daemon's cursor, guarding it with a lease."""

    def __init__(
        self,
        es: Elasticsearch,
        *,
        index: str,
        name: str,
        source_index: str,
        time_field: str,
        lease_seconds: float,
        owner: str | None = None,
        read_only: bool = False,
    ):
        self.es = es
        self.index = index
        self.name = name
        self.source_index = source_index
        self.time_field = time_field
        self.lease_seconds = lease_seconds
        self.owner = owner or new_owner_id()
        self._seq_no: int | None = None
        self._primary_term: int | None = None
        self.cursor = Cursor()
        # A dry run reads the stored cursor but never writes: its cursor lives in memory.
        self.read_only = read_only

    def ensure_index(self) -> None:
        """Create the state index if it does not exist."""
        if not self.es.indices.exists(index=self.index):
            self.es.options(ignore_status=400).indices.create(index=self.index, **STATE_MAPPING)

    def read_lease(self) -> Lease:
        """Return the current lease without taking it."""
        try:
            response = self.es.get(index=self.index, id=self.name)
        except NotFoundError:
            return Lease(None, None, None, None)
        source = response["_source"]
        until = parse_time(source["lease_until"]) if source.get("lease_until") else None
        return Lease(source.get("owner"), until, response["_seq_no"], response["_primary_term"])

    def try_acquire(self, now: datetime | None = None) -> Lease | None:
        """Take the lease if it is free, expired or ours; load the stored cursor.

        Returns None on success, or the other holder's lease.
        """
        if self.read_only:
            try:
                stored = self.es.get(index=self.index, id=self.name)["_source"].get("cursor")
            except NotFoundError:
                stored = None
            self.cursor = Cursor.from_dict(stored)
            return None
        now = now or datetime.now(timezone.utc)
        try:
            response = self.es.get(index=self.index, id=self.name)
        except NotFoundError:
            response = None

        if response is None:
            body = self._body(Cursor(), now)
            try:
                result = self.es.create(index=self.index, id=self.name, document=body, refresh=False)
            except ConflictError:
                return self.read_lease()
            self._remember(result)
            self.cursor = Cursor()
            return None

        source = response["_source"]
        holder = source.get("owner")
        until = parse_time(source["lease_until"]) if source.get("lease_until") else None
        if holder not in (None, self.owner) and until is not None and until > now and not owner_is_dead(holder):
            return Lease(holder, until, response["_seq_no"], response["_primary_term"])
        self._check_source(source)
        cursor = Cursor.from_dict(source.get("cursor"))
        try:
            result = self.es.index(
                index=self.index,
                id=self.name,
                document=self._body(cursor, now),
                if_seq_no=response["_seq_no"],
                if_primary_term=response["_primary_term"],
            )
        except ConflictError:
            return self.read_lease()
        self._remember(result)
        self.cursor = cursor
        if holder not in (None, self.owner):
            log.info("took over checkpoint %s from %s (lease until %s, or its process is gone)", self.name, holder, until)
        return None

    def save(self, cursor: Cursor, now: datetime | None = None) -> None:
        """Store the cursor and renew the lease; raise CursorConflictError if another daemon wrote since."""
        if self.read_only:
            self.cursor = cursor
            return
        now = now or datetime.now(timezone.utc)
        try:
            result = self._write(cursor, now)
        except ConflictError:
            lease = self.read_lease()
            if lease.owner == self.owner and lease.seq_no is not None:
                # Our own earlier write landed but its reply was lost (a timeout or a
                # cut connection), so the stored version moved on: write on top of it.
                self._seq_no, self._primary_term = lease.seq_no, lease.primary_term
                try:
                    result = self._write(cursor, now)
                except ConflictError:
                    lease = self.read_lease()
                else:
                    self._remember(result)
                    self.cursor = cursor
                    return
            raise CursorConflictError(
                f"checkpoint {self.name!r} in index {self.index} was changed by {lease.owner or 'another writer'}; "
                "two daemons share one state.name. Give each daemon its own state.name, or stop one of them"
            ) from None
        self._remember(result)
        self.cursor = cursor

    def _write(self, cursor: Cursor, now: datetime) -> Any:
        return self.es.index(
            index=self.index,
            id=self.name,
            document=self._body(cursor, now),
            if_seq_no=self._seq_no,
            if_primary_term=self._primary_term,
        )

    def release(self) -> None:
        """Store the cursor with an expired lease, so a successor need not wait."""
        if self.read_only:
            return
        if self._seq_no is None:
            return
        past = datetime.now(timezone.utc) - timedelta(seconds=self.lease_seconds + 1)
        try:
            self.es.index(
                index=self.index,
                id=self.name,
                document={**self._body(self.cursor, past), "owner": None},
                if_seq_no=self._seq_no,
                if_primary_term=self._primary_term,
            )
        except ConflictError:
            log.warning("checkpoint %s changed before release; leaving it as it is", self.name)

    def _check_source(self, source: dict[str, Any]) -> None:
        stored = (source.get("source_index"), source.get("time_field"))
        if stored != (None, None) and stored != (self.source_index, self.time_field):
            log.warning(
                "checkpoint %s was written for index %s on field %s, now configured %s on %s; "
                "the stored cursor is reused as is",
                self.name, stored[0], stored[1], self.source_index, self.time_field,
            )

    def _body(self, cursor: Cursor, now: datetime) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "lease_until": to_utc_iso(now + timedelta(seconds=self.lease_seconds)),
            "updated_at": to_utc_iso(now),
            "source_index": self.source_index,
            "time_field": self.time_field,
            "cursor": cursor.to_dict(),
        }

    def _remember(self, result: Any) -> None:
        self._seq_no = result["_seq_no"]
        self._primary_term = result["_primary_term"]
