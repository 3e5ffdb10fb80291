"""Assemble the stages (source -> features -> model -> rules -> sink) and run one page through them.

The daemon, the one-shot scan and the HTTP API share this, so all three write
the same alerts under the same ids.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from elasticsearch import Elasticsearch

from sidecar import schema
from sidecar.alerts import alert_template
from sidecar.config import Config
from sidecar.detect import BatchOutcome, Detector
from sidecar.errors import SidecarError
from sidecar.metrics import Metrics
from sidecar.sink import AlertSink, Backoff
from sidecar.source import Page

log = logging.getLogger(__name__)


def load_detector(config: Config) -> Detector:
    """Load the model and rules named in the config and check that they fit each other."""
    from sidecar.model import load_model
    from sidecar.rules import load_rules

    model = load_model(str(config.resolve(config.model)), intra_op_threads=config.model_threads)
    rules = load_rules(str(config.resolve(config.rules)))
    rules.check_classes(model.classes)
    return Detector(
        model,
        rules,
        time_field=config.source.time_field,
        flow_time_field=config.source.flow_time_field,
        alert_index_pattern=config.alerts.index,
        local_tz=config.alerts.tzinfo(),
    )


def needed_fields(detector: Detector, config: Config) -> list[str]:
    """Return the canonical fields a page must carry: the model's features and what alerts copy."""
    wanted = list(dict.fromkeys([*detector.model.features, *schema.ALERT_SOURCE_FIELDS]))
    if config.source.flow_time_field:
        wanted.append(config.source.flow_time_field)
    return wanted


def install_alert_template(es: Elasticsearch, config: Config) -> None:
    """Install or update the alert index template.

    A template that ETA1 installed (``_meta.managed_by: eta1``) is replaced
    when it differs, for example after alerts.index changed. A template of
    the same name without that mark is the operator's and stays as it is.
    """
    name = config.alerts.template_name
    wanted = alert_template(config.alerts.index)
    response = es.options(ignore_status=404).indices.get_index_template(name=name)
    existing = response.body.get("index_templates", []) if response.meta.status == 200 else []
    if existing:
        current = existing[0]["index_template"]
        if current.get("_meta", {}).get("managed_by") != "eta1":
            log.info("index template %s is not managed by ETA1; leaving it as it is", name)
            return
        if current.get("index_patterns") == wanted["index_patterns"] and current.get("_meta") == wanted["_meta"]:
            return
    es.indices.put_index_template(name=name, **wanted)
    log.info("installed index template %s for alert indices %s", name, wanted["index_patterns"][0])


@dataclass
class PageResult:
    """Counts for one processed page."""

    flows: int = 0
    unusable: int = 0
    alerts_created: int = 0
    alerts_existing: int = 0
    dead_lettered: int = 0
    retries: int = 0
    by_signature: Counter[str] = field(default_factory=Counter)
    alert_documents: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ClassifiedPage:
    """A page with its detection outcome, ready for its alerts to be written."""

    page: Page
    outcome: BatchOutcome
    seconds: float  # time spent classifying, added to the batch_seconds metric


class PageProcessor:
    """Classify a page and write its alerts; the caller moves the cursor afterwards."""

    def __init__(self, detector: Detector, sink: AlertSink, metrics: Metrics, keep_documents: int = 0):
        self.detector = detector
        self.sink = sink
        self.metrics = metrics
        self.keep_documents = keep_documents

    def process(self, page: Page, now: datetime | None = None) -> PageResult:
        """Detect, write, and count one page; raises only if alerts could not be stored."""
        return self.store(self.classify(page, now))

    def classify(self, page: Page, now: datetime | None = None) -> ClassifiedPage:
        """Detect one page: the first half of process(), which touches no cluster."""
        started = time.perf_counter()
        return ClassifiedPage(page, self.detector.detect(page.hits, now=now), time.perf_counter() - started)

    def store(self, classified: ClassifiedPage) -> PageResult:
        """Write a classified page's alerts and count the page: the second half of process().

        Raises only if the alerts could not be stored. The daemon runs this in
        a writer thread while it classifies the next page.
        """
        started = time.perf_counter()
        outcome = classified.outcome
        written = self.sink.write(outcome.alerts)

        result = PageResult(
            flows=outcome.flows,
            unusable=len(outcome.unusable),
            alerts_created=written.created,
            alerts_existing=written.existing,
            dead_lettered=written.dead_lettered,
            retries=written.retries,
        )
        for alert in outcome.alerts:
            result.by_signature[alert.document["alert"]["signature"]] += 1
        room = self.keep_documents
        if room:
            result.alert_documents = [
                {"_index": alert.index, "_id": alert.id, **alert.document} for alert in outcome.alerts[:room]
            ]

        metrics = self.metrics
        metrics.flows_read.inc(outcome.flows)
        for reason, count in outcome.unusable_reasons().items():
            metrics.flows_unusable.labels(reason=reason).inc(count)
        for signature, count in written.created_by_signature.items():
            metrics.alerts_written.labels(signature=signature).inc(count)
        metrics.alerts_existing.inc(written.existing)
        metrics.alerts_dead_lettered.inc(written.dead_lettered)
        metrics.batches_retried.inc(written.retries)
        metrics.batch_seconds.observe(classified.seconds + time.perf_counter() - started)
        return result


def make_sink(es: Elasticsearch, should_stop: Any = None, dry_run: bool = False) -> AlertSink:
    """Return an alert sink whose retries stop waiting when should_stop() turns true."""
    backoff = Backoff(should_stop=should_stop or (lambda: False))
    return AlertSink(es, backoff=backoff, dry_run=dry_run)


def utcnow() -> datetime:
    """Return the current time in UTC (a seam for tests)."""
    return datetime.now(timezone.utc)


class PipelineError(SidecarError):
    """A stage failed in a way the caller must report."""
