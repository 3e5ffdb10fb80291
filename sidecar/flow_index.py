"""Index template for flow indices: field types for CICFlowMeter flow documents.

The template maps every numeric field listed in ``sidecar.schema`` as a
number, ``Src IP``/``Dst IP`` as ``ip``, the configured time field as ``date``
and every other string as ``keyword``. Counts, ports, flags, header lengths,
window sizes and ``Flow Duration`` (integer microseconds in CICFlowMeter-4) are
``long``. Byte totals, packet-length statistics, rates, IATs, ratios and
Active/Idle values are ``double``, because CICFlowMeter writes them with a
fraction (``2683.0``, ``1.596511622913498E15``).

A ``long`` field indexes a fractional value truncated, but ``_source`` keeps
the value as sent, and ETA1's featuriser reads ``_source``.

The defaults (1 shard, 0 replicas) suit a single local or demo node. A
production cluster should raise the replica count (``replicas=``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from elasticsearch import Elasticsearch, NotFoundError

from sidecar import schema

log = logging.getLogger(__name__)

TEMPLATE_NAME = "eta1-flows"

# Above the priority (100) of Elasticsearch's built-in logs-*/metrics-* templates,
# so a pattern that overlaps one of them still gets these mappings.
TEMPLATE_PRIORITY = 200

# Integer-valued fields. Every other numeric field in sidecar.schema is a double.
LONG_FIELDS: frozenset[str] = frozenset({
    schema.SRC_PORT, schema.DST_PORT, schema.PROTOCOL,
    "Flow Duration", "Total Fwd Packet", "Total Bwd packets",
    "Fwd PSH Flags", "Bwd PSH Flags", "Fwd URG Flags", "Bwd URG Flags",
    "Fwd Header Length", "Bwd Header Length",
    "FIN Flag Count", "SYN Flag Count", "RST Flag Count", "PSH Flag Count",
    "ACK Flag Count", "URG Flag Count", "CWR Flag Count", "ECE Flag Count",
    "Subflow Fwd Packets", "Subflow Fwd Bytes", "Subflow Bwd Packets", "Subflow Bwd Bytes",
    "Fwd Init Win Bytes", "Bwd Init Win Bytes", "Fwd Act Data Pkts", "Fwd Seg Size Min",
})

IP_FIELDS: frozenset[str] = frozenset({schema.SRC_IP, schema.DST_IP})

# Canonical fields that contain text. Timestamp keeps the CSV's original string,
# and the parsed time goes to the configured time field.
KEYWORD_FIELDS: frozenset[str] = frozenset({schema.TIMESTAMP, schema.FLOW_ID, schema.LABEL})


def field_type(canonical: str) -> str:
    """Return the Elasticsearch type of a canonical flow field: long, double, ip or keyword."""
    if canonical in IP_FIELDS:
        return "ip"
    if canonical in KEYWORD_FIELDS:
        return "keyword"
    if canonical in LONG_FIELDS:
        return "long"
    return "double"


def time_field_path(time_field: str) -> tuple[str, ...]:
    """Split a time field such as ``event.ingested`` into its object path, or raise ValueError if it cannot be used."""
    parts = tuple(time_field.split("."))
    if not time_field or any(not part.strip() for part in parts):
        raise ValueError(
            f"invalid time field {time_field!r}: use a name such as @timestamp or a dotted path such as event.ingested"
        )
    if parts[0] in schema.CANONICAL_FIELDS:
        raise ValueError(
            f"invalid time field {time_field!r}: {parts[0]!r} is a flow column "
            f"({'it keeps the CSV text' if parts[0] == schema.TIMESTAMP else 'it has its own type'}); "
            "use another name such as @timestamp or event.ingested"
        )
    return parts


def _time_mapping(path: Sequence[str]) -> dict[str, Any]:
    """Build the properties that map a (possibly dotted) time field as a date."""
    mapping: dict[str, Any] = {"type": "date"}
    for part in reversed(path[1:]):
        mapping = {"properties": {part: mapping}}
    return {path[0]: mapping}


def flow_template(
    index_patterns: Sequence[str],
    *,
    time_field: str = "@timestamp",
    shards: int = 1,
    replicas: int = 0,
    priority: int = TEMPLATE_PRIORITY,
) -> dict[str, Any]:
    """Build the body of the flow index template (the arguments of ``indices.put_index_template``)."""
    properties: dict[str, Any] = {}
    for name in schema.CANONICAL_FIELDS:
        kind = field_type(name)
        properties[name] = {"type": kind, "ignore_above": 1024} if kind == "keyword" else {"type": kind}
    properties.update(_time_mapping(time_field_path(time_field)))

    mappings = {
        # Unknown string columns (a ground-truth label, row ids) stay exact-match
        # keywords. Date detection is off, so a date-like string never becomes a date.
        "date_detection": False,
        "dynamic_templates": [
            {"strings_as_keywords": {"match_mapping_type": "string",
                                     "mapping": {"type": "keyword", "ignore_above": 1024}}},
        ],
        "properties": properties,
    }
    body: dict[str, Any] = {
        "index_patterns": list(index_patterns),
        "priority": priority,
        "template": {
            "settings": {"number_of_shards": shards, "number_of_replicas": replicas},
            "mappings": mappings,
        },
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    body["_meta"] = {"managed_by": "eta1", "description": "CICFlowMeter flow documents", "body_sha256": digest}
    return body


def split_patterns(index: str) -> list[str]:
    """Split a comma-separated index pattern setting (``source.index``) into patterns."""
    patterns = [part.strip() for part in index.split(",") if part.strip()]
    if not patterns:
        raise ValueError(f"invalid index pattern {index!r}: expected a pattern such as cic_*")
    return patterns


def put_index_template(
    es: Elasticsearch,
    index_patterns: Sequence[str],
    *,
    time_field: str = "@timestamp",
    name: str = TEMPLATE_NAME,
    shards: int = 1,
    replicas: int = 0,
) -> bool:
    """Install or update the flow template. Returns False when an identical template is already installed.

    Idempotent: the body's hash is stored in the template's ``_meta``, and an
    unchanged template is not written again. The template applies to indices
    created after it, so an existing index keeps its mappings.
    """
    body = flow_template(index_patterns, time_field=time_field, shards=shards, replicas=replicas)
    try:
        current = es.indices.get_index_template(name=name)
    except NotFoundError:
        current = None
    if current is not None:
        for entry in current.get("index_templates", []):
            meta = entry.get("index_template", {}).get("_meta") or {}
            if entry.get("name") == name and meta.get("body_sha256") == body["_meta"]["body_sha256"]:
                log.debug("index template %s is up to date", name)
                return False
    es.indices.put_index_template(name=name, **body)
    log.info("installed index template %s for %s (time field %s)", name, ",".join(index_patterns), time_field)
    return True
