"""Build alert documents in the old service's shape (nested ``alert`` object, Suricata EVE style)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timezone, tzinfo
from typing import Any

from sidecar import schema
from sidecar.rules import Rule
from sidecar.timeutil import to_local_iso, to_utc_iso

# IANA protocol numbers -> the lowercase names Suricata writes in "proto".
PROTOCOL_NAMES = {
    0: "hopopt", 1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 41: "ipv6",
    47: "gre", 50: "esp", 51: "ah", 58: "ipv6-icmp", 89: "ospf", 132: "sctp",
}


@dataclass(frozen=True)
class Alert:
    """One alert ready for the bulk API."""

    index: str
    id: str
    document: dict[str, Any]


def protocol_name(value: Any) -> str:
    """Return the lowercase protocol name for a number (6 -> tcp); unknown numbers stay as digits."""
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        return str(value).lower() if value not in (None, "") else "unknown"
    return PROTOCOL_NAMES.get(number, str(number))


def alert_id(source_index: str, flow_id: str, signature_id: int) -> str:
    """Derive the alert's ``_id`` from the flow's index and ``_id`` and the rule, so replays overwrite nothing."""
    digest = hashlib.blake2b(f"{source_index}\x00{flow_id}\x00{signature_id}".encode(), digest_size=18).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")


# strftime directives whose value depends only on the date and the hour, so
# that alert_index can reuse one result for every flow of the same UTC hour.
_HOURLY_DIRECTIVES = frozenset("YmdyjHbBaAUWGVuwe%")


@lru_cache(maxsize=64)
def _is_hourly(pattern: str) -> bool:
    directives = pattern.split("%")[1:]
    escaped = False
    for part in directives:
        if escaped:
            escaped = False
            continue
        if not part:  # "%%": the next part is literal text
            escaped = True
            continue
        if part[0] not in _HOURLY_DIRECTIVES:
            return False
    return True


@lru_cache(maxsize=1024)
def _hourly_index(pattern: str, year: int, month: int, day: int, hour: int) -> str:
    return datetime(year, month, day, hour, tzinfo=timezone.utc).strftime(pattern).lower()


def alert_index(pattern: str, flow_time: datetime) -> str:
    """Return the alert index for a flow: the strftime pattern applied to the flow's UTC time.

    Using the flow's time, not the wall clock, keeps a replayed flow's alert in
    the same index, where its deterministic id makes the write a no-op.
    """
    utc = flow_time.astimezone(timezone.utc)
    if _is_hourly(pattern):
        return _hourly_index(pattern, utc.year, utc.month, utc.day, utc.hour)
    return utc.strftime(pattern).lower()


def _port(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _field(source: Mapping[str, Any], canonical: str) -> Any:
    value = source.get(canonical)
    if value is None:
        for name in schema.accepted_names(canonical)[1:]:
            if name in source:
                return source[name]
    return value


@lru_cache(maxsize=8)
def _formatted_now(now: datetime, local_tz: tzinfo) -> tuple[str, str]:
    """Return ``now`` in the local zone and in UTC; every alert of a batch shares one ``now``."""
    return to_local_iso(now, local_tz), to_utc_iso(now)


def build_alert(
    *,
    source_index: str,
    flow_id: str,
    source: Mapping[str, Any],
    flow_time: datetime,
    rule: Rule,
    confidence: float,
    model_sha256: str,
    now: datetime,
    local_tz: tzinfo,
    index_pattern: str,
) -> Alert:
    """Build the alert for one flow that a rule fired on."""
    now_local, now_utc = _formatted_now(now, local_tz)
    document: dict[str, Any] = {
        "@timestamp": to_utc_iso(flow_time),
        "flow_id": flow_id,
        "timestamp": now_local,
        "event_type": "alert",
        "alert": {
            "action": "N/A",
            "gid": 0,
            "signature_id": rule.signature_id,
            "signature": rule.signature,
            "category": rule.technique_name,
            "severity": rule.severity,
        },
        "src_ip": _field(source, schema.SRC_IP),
        "dest_ip": _field(source, schema.DST_IP),
        "src_port": _port(_field(source, schema.SRC_PORT)),
        "dest_port": _port(_field(source, schema.DST_PORT)),
        "proto": protocol_name(_field(source, schema.PROTOCOL)),
        "module": "ETA-ATTACK",
        "in_iface": "[From Input]",
        "log_type": "traffic",
        "reference": rule.reference,
        "log_time": to_local_iso(flow_time, local_tz),
        "dump_status": 0,
        "ingest_timestamp": now_utc,
        "eta1": {
            "class": rule.class_name,
            "confidence": round(float(confidence), 6),
            "technique_id": rule.technique_id,
            "model_sha256": model_sha256,
            "flow_index": source_index,
        },
    }
    return Alert(
        index=alert_index(index_pattern, flow_time),
        id=alert_id(source_index, flow_id, rule.signature_id),
        document=document,
    )


def alert_template(index_pattern: str) -> dict[str, Any]:
    """Return the index template body for alert indices: keyword, ip and date types for the contract's fields."""
    wildcard = _pattern_wildcard(index_pattern)
    keyword = {"type": "keyword"}
    return {
        "index_patterns": [wildcard],
        "priority": 200,
        "template": {
            # One replica where the cluster has a second node, none on a single node (stays green).
            "settings": {"number_of_shards": 1, "auto_expand_replicas": "0-1"},
            "mappings": {
                "dynamic_templates": [{"strings": {"match_mapping_type": "string", "mapping": keyword}}],
                "properties": {
                    "@timestamp": {"type": "date"},
                    "flow_id": keyword,
                    "timestamp": {"type": "date"},
                    "event_type": keyword,
                    "alert": {
                        "properties": {
                            "action": keyword,
                            "gid": {"type": "long"},
                            "signature_id": {"type": "long"},
                            "signature": keyword,
                            "category": keyword,
                            "severity": {"type": "long"},
                        }
                    },
                    "src_ip": {"type": "ip"},
                    "dest_ip": {"type": "ip"},
                    "src_port": {"type": "long"},
                    "dest_port": {"type": "long"},
                    "proto": keyword,
                    "module": keyword,
                    "in_iface": keyword,
                    "log_type": keyword,
                    "reference": keyword,
                    "log_time": {"type": "date"},
                    "dump_status": {"type": "long"},
                    "ingest_timestamp": {"type": "date"},
                    "eta1": {
                        "properties": {
                            "class": keyword,
                            "confidence": {"type": "float"},
                            "technique_id": keyword,
                            "model_sha256": keyword,
                            "flow_index": keyword,
                        }
                    },
                },
            },
        },
        # Bump the version when the mapping changes, so running daemons update the template.
        "_meta": {"managed_by": "eta1", "version": 2},
    }


def _pattern_wildcard(pattern: str) -> str:
    """Turn an strftime index pattern into an index-template wildcard: eta1-alerts-%Y.%m.%d -> eta1-alerts-*."""
    head = pattern.split("%", 1)[0]
    return (head + "*").lower()
