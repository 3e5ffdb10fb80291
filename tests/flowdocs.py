"""Build flow documents from the sample CSVs and index them, for integration tests."""

from __future__ import annotations

import gzip
import csv
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch, helpers

from sidecar import schema

NUMERIC_TYPES = {name: {"type": "double"} for name in schema.CONTRACT_NUMERIC_FIELDS}


def sample_rows(data_dir: Path, per_file: int, files: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Return up to per_file rows of each sample CSV, keyed by canonical names, values as in the file."""
    rows: list[dict[str, Any]] = []
    for path in sorted(data_dir.glob("*.csv.gz")):
        if files is not None and not any(path.name.startswith(prefix) for prefix in files):
            continue
        with gzip.open(path, "rt", newline="") as handle:
            reader = csv.DictReader(handle)
            for count, row in enumerate(reader):
                if count >= per_file:
                    break
                doc: dict[str, Any] = {}
                for key, value in row.items():
                    canonical = schema.canonical_name(key) or key
                    if canonical in NUMERIC_TYPES:
                        doc[canonical] = float(value)
                    else:
                        doc[canonical] = value
                rows.append(doc)
    return rows


def create_flow_index(es: Elasticsearch, index: str, time_field: str = "@timestamp") -> None:
    """Create a flow index with numeric features, ip addresses and a date time field."""
    properties: dict[str, Any] = dict(NUMERIC_TYPES)
    properties.update({
        schema.SRC_IP: {"type": "ip"},
        schema.DST_IP: {"type": "ip"},
        "Flow ID": {"type": "keyword"},
        "Label": {"type": "keyword"},
        "Timestamp": {"type": "keyword"},
    })
    if "." in time_field:
        head, tail = time_field.split(".", 1)
        properties[head] = {"properties": {tail: {"type": "date"}}}
    else:
        properties[time_field] = {"type": "date"}
    es.options(ignore_status=404).indices.delete(index=index)
    es.indices.create(
        index=index,
        settings={"number_of_shards": 1, "number_of_replicas": 0},
        mappings={"dynamic_templates": [{"s": {"match_mapping_type": "string", "mapping": {"type": "keyword"}}}],
                  "properties": properties},
    )


def index_docs(es: Elasticsearch, index: str, docs: list[tuple[str, dict[str, Any]]]) -> None:
    """Index (id, document) pairs and refresh."""
    actions = ({"_op_type": "index", "_index": index, "_id": doc_id, "_source": doc} for doc_id, doc in docs)
    ok, errors = helpers.bulk(es, actions, refresh="wait_for", raise_on_error=False)
    assert not errors, errors[:3]


def stamp(rows: list[dict[str, Any]], start: datetime, step: timedelta, time_field: str = "@timestamp") -> list[tuple[str, dict[str, Any]]]:
    """Give rows consecutive times from start, and ids f0, f1, ..."""
    out = []
    for position, row in enumerate(rows):
        doc = dict(row)
        moment = (start + step * position).astimezone(timezone.utc)
        doc[time_field] = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out.append((f"f{position}", doc))
    return out


def delete_indices(es: Elasticsearch, pattern: str) -> None:
    """Delete the indices matching a wildcard, one name at a time (wildcard deletes are refused by default)."""
    names = list(es.options(ignore_status=404).indices.get(index=pattern, allow_no_indices=True).body or {})
    for name in names:
        es.options(ignore_status=404).indices.delete(index=name)
