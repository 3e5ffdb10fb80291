"""Parse and format the times that flow exporters, the old API's clients and Elasticsearch use."""

from __future__ import annotations

import re
from datetime import datetime, timezone, tzinfo

# A '+' sent unencoded in a query string arrives as a space: "11:25:00 08:00".
_SPACE_OFFSET = re.compile(r"^(.*\d)[ ](\d{2}:?\d{2})$")

# Day-first formats of CICFlowMeter exports (CIC-IDS2017 CSVs, CSE-CIC-IDS2018).
_DAY_FIRST_FORMATS = (
    "%d/%m/%Y %H:%M:%S.%f",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %I:%M:%S %p",
    "%d/%m/%Y %H:%M",
)


def parse_time(text: str, default_tz: tzinfo | None = None) -> datetime:
    """Parse a timestamp into an aware datetime.

    Accepts ISO-8601 with any number of fractional digits (the old API's
    clients send five or six), with ``Z``, ``+HH:MM`` or an offset whose ``+``
    became a space, and the day-first formats of CICFlowMeter CSVs. A time with
    no offset takes ``default_tz``; without one, it raises ValueError.
    """
    if not isinstance(text, str):
        raise ValueError(f"invalid time {text!r}: expected a string")
    value = text.strip()
    if not value:
        raise ValueError("invalid time '': empty")
    match = _SPACE_OFFSET.match(value)
    if match and ("T" in value or value.count(" ") == 2):
        value = f"{match.group(1)}+{match.group(2)}"
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        for pattern in _DAY_FIRST_FORMATS:
            try:
                parsed = datetime.strptime(value, pattern)
                break
            except ValueError:
                continue
    if parsed is None:
        raise ValueError(
            f"invalid time {text!r}: expected ISO-8601 such as 2020-08-04T11:25:00.000000+08:00"
        )
    if parsed.tzinfo is None:
        if default_tz is None:
            raise ValueError(f"time {text!r} has no UTC offset; add one such as +08:00 or Z")
        parsed = parsed.replace(tzinfo=default_tz)
    return parsed


def to_utc_iso(moment: datetime) -> str:
    """Format as UTC with microseconds and a ``Z``: ``2020-03-23T05:24:39.144408Z``."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def to_local_iso(moment: datetime, zone: tzinfo) -> str:
    """Format in a zone with microseconds and ``+HH:MM``: ``2020-03-23T13:24:39.144408+08:00``."""
    return moment.astimezone(zone).isoformat(timespec="microseconds")


def from_epoch_millis(millis: float) -> datetime:
    """Convert Elasticsearch's epoch-milliseconds sort value to an aware UTC datetime."""
    return datetime.fromtimestamp(millis / 1000.0, tz=timezone.utc)
