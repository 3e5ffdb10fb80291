"""``eta1 check``: load every configured piece, connect, and report what fits and what does not."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TextIO

from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch

from sidecar import schema
from sidecar.config import Config
from sidecar.errors import SchemaError, SidecarError
from sidecar.logsetup import MASK
from sidecar.source import _collect_paths

log = logging.getLogger(__name__)


TIME_TYPES = frozenset({"date", "date_nanos"})


def _field_type(properties: dict, path: str) -> str | None:
    """Return the mapped type of a dotted field path, or None when it is not mapped."""
    node: dict | None = {"properties": properties}
    for part in path.split("."):
        node = (node or {}).get("properties", {}).get(part)
        if node is None:
            return None
    return node.get("type", "object")


def check_time_field(mappings: dict, time_field: str) -> None:
    """Raise SchemaError unless the time field is a date or date_nanos in every index that maps it."""
    for name, body in sorted(mappings.items()):
        kind = _field_type(body.get("mappings", {}).get("properties", {}), time_field)
        if kind is not None and kind not in TIME_TYPES:
            raise SchemaError(
                f"index {name} maps the time field {time_field!r} as {kind}, not date; "
                "set source.time_field to a date field, or reindex with the field mapped as date"
            )


def check_source_mapping(
    es: Elasticsearch, index: str, features: Sequence[str], time_field: str | None = None
) -> int:
    """Raise SchemaError, naming the index and the missing fields, unless every matching index maps every feature.

    Returns the number of indices checked. No matching index is not an error,
    because the daemon waits for flows to arrive. A mapping it may not read
    (403, for example) skips the check with a warning, as the reader then
    fetches whole documents. Transient errors propagate, for the caller to retry.
    """
    from sidecar.sink import is_transient

    try:
        mappings = es.indices.get_mapping(index=index, allow_no_indices=True, ignore_unavailable=True).body
    except ApiError as error:
        if is_transient(error):
            raise
        log.warning("could not read the mapping of %s (%s); the model's features are not checked against it",
                    index, error)
        return 0
    if time_field is not None:
        check_time_field(mappings, time_field)
    for name, body in sorted(mappings.items()):
        present: set[str] = set()
        _collect_paths(body.get("mappings", {}).get("properties", {}), "", present)
        schema.map_columns(present, features, where=f"index {name}")
    return len(mappings)


def run_check(config: Config, out: TextIO) -> bool:
    """Print one line per check; return True when every check passed."""
    ok = True

    def report(passed: bool, text: str) -> None:
        nonlocal ok
        ok = ok and passed
        # Error texts may echo a host URL with its credentials.
        out.write(f"{'ok  ' if passed else 'FAIL'}  {MASK.mask(text)}\n")

    report(True, f"config {config.path or '(defaults)'}: cluster {', '.join(config.cluster.hosts)}, "
                 f"source {config.source.index} on {config.source.time_field}")
    detector = None
    try:
        from sidecar.pipeline import load_detector

        detector = load_detector(config)
        model = detector.model
        report(True, f"model {config.resolve(config.model)}: sha256 {model.sha256[:12]}, "
                     f"{len(model.features)} features, classes {', '.join(model.classes)}")
        report(True, f"rules {config.resolve(config.rules)}: a rule or benign entry for every class")
    except SidecarError as error:
        report(False, str(error))

    from sidecar.esclient import make_client

    es = make_client(config.cluster)
    try:
        health = es.cluster.health()
        report(True, f"cluster {health['cluster_name']}: status {health['status']}, {health['number_of_nodes']} node(s)")
    except (TransportError, ApiError) as error:
        report(False, f"cluster unreachable: {error}; check cluster.hosts, credentials and TLS settings")
        return False

    try:
        mappings = es.indices.get_mapping(index=config.source.index, allow_no_indices=True, ignore_unavailable=True).body
    except (TransportError, ApiError) as error:
        report(False, f"could not read the mapping of {config.source.index}: {error}")
        return False
    if not mappings:
        report(False, f"no index matches {config.source.index}; load flows (eta1 load) or set source.index")
        return ok
    report(True, f"{len(mappings)} index(es) match {config.source.index}")
    for index, body in sorted(mappings.items()):
        present: set[str] = set()
        _collect_paths(body.get("mappings", {}).get("properties", {}), "", present)
        if config.source.time_field not in present:
            report(False, f"{index}: time field {config.source.time_field!r} is not mapped; set source.time_field")
        else:
            try:
                check_time_field({index: body}, config.source.time_field)
            except SidecarError as error:
                report(False, str(error))
        if detector is not None:
            try:
                schema.map_columns(present, detector.model.features, where=f"index {index}")
                report(True, f"{index}: every model feature is mapped")
            except SidecarError as error:
                report(False, str(error))
    return ok
