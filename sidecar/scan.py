"""One-shot detection over one index and time window, as ``eta1 scan`` and the HTTP API run it.

It uses the daemon's stages and alert ids, but no checkpoint: the window's
cursor lives in memory, and a repeated scan finds its alerts already present.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from elasticsearch import Elasticsearch

from sidecar.config import Config
from sidecar.detect import Detector
from sidecar.metrics import Metrics
from sidecar.pipeline import PageProcessor, install_alert_template, needed_fields
from sidecar.sink import AlertSink
from sidecar.source import Cursor, FlowReader, source_fields

log = logging.getLogger(__name__)


@dataclass
class ScanReport:
    """Counts of one scan, and the first alert documents."""

    index: str
    start: datetime
    end: datetime
    flows: int = 0
    unusable: int = 0
    alerts: int = 0
    alerts_created: int = 0
    alerts_existing: int = 0
    dead_lettered: int = 0
    by_signature: Counter[str] = field(default_factory=Counter)
    documents: list[dict[str, Any]] = field(default_factory=list)
    documents_cap: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "index": self.index,
            "start_time": self.start.isoformat(),
            "end_time": self.end.isoformat(),
            "flows": self.flows,
            "unusable_flows": self.unusable,
            "alerts": self.alerts,
            "alerts_created": self.alerts_created,
            "alerts_already_present": self.alerts_existing,
            "alerts_dead_lettered": self.dead_lettered,
            "alerts_by_signature": dict(sorted(self.by_signature.items())),
            "alerts_returned": len(self.documents),
            "alerts_cap": self.documents_cap,
            "alert_documents": self.documents,
        }


def run_scan(
    es: Elasticsearch,
    config: Config,
    detector: Detector,
    sink: AlertSink,
    metrics: Metrics,
    *,
    index: str,
    start: datetime,
    end: datetime,
    keep_documents: int = 0,
    progress: Callable[[int], None] | None = None,
) -> ScanReport:
    """Detect over flows of ``index`` with times in [start, end) and write their alerts."""
    if not sink.dry_run:
        install_alert_template(es, config)
        sink.ensure_dead_letter_index()
    from sidecar.check import check_time_field

    mappings = es.indices.get_mapping(index=index, allow_no_indices=True, ignore_unavailable=True).body
    check_time_field(mappings, config.source.time_field)
    fields = source_fields(es, index, needed_fields(detector, config))
    reader = FlowReader(
        es,
        index,
        time_field=config.source.time_field,
        tiebreaker=config.source.tiebreaker,
        fields=fields,
        page_size=config.batch_size,
    )
    processor = PageProcessor(detector, sink, metrics, keep_documents=keep_documents)
    report = ScanReport(index=index, start=start, end=end, documents_cap=keep_documents)
    with closing(reader.pages(Cursor(), lower=start, upper=end)) as pages:
        for page in pages:
            processor.keep_documents = max(0, keep_documents - len(report.documents))
            result = processor.process(page)
            report.flows += result.flows
            report.unusable += result.unusable
            report.alerts += sum(result.by_signature.values())
            report.alerts_created += result.alerts_created
            report.alerts_existing += result.alerts_existing
            report.dead_lettered += result.dead_lettered
            report.by_signature.update(result.by_signature)
            report.documents.extend(result.alert_documents)
            if progress is not None:
                progress(report.flows)
    log.info(
        "scan of %s [%s, %s): %d flows, %d unusable, %d alerts (%d new, %d already present, %d dead-lettered)",
        index, start.isoformat(), end.isoformat(), report.flows, report.unusable, report.alerts,
        report.alerts_created, report.alerts_existing, report.dead_lettered,
    )
    return report


def terminal_progress() -> Callable[[int], None] | None:
    """Return a progress printer for stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None

    def show(flows: int) -> None:
        sys.stderr.write(f"\rscanned {flows:,} flows")
        sys.stderr.flush()

    return show
