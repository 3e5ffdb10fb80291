"""Prometheus metrics shared by the daemon, one-shot scans and the HTTP API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One registry per process (tests build their own to stay independent)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.flows_read = Counter("eta1_flows_read", "Flow documents read from the source", registry=self.registry)
        self.flows_unusable = Counter(
            "eta1_flows_unusable", "Flows that got no prediction, by reason", ["reason"], registry=self.registry
        )
        self.alerts_written = Counter(
            "eta1_alerts_written", "Alerts created, by signature", ["signature"], registry=self.registry
        )
        self.alerts_existing = Counter(
            "eta1_alerts_existing", "Alerts already present (replayed flows)", registry=self.registry
        )
        self.alerts_dead_lettered = Counter(
            "eta1_alerts_dead_lettered", "Alerts rejected by the cluster and stored in the dead-letter index",
            registry=self.registry,
        )
        self.batches_retried = Counter(
            "eta1_batches_retried", "Bulk requests retried after a transient failure", registry=self.registry
        )
        self.errors = Counter("eta1_errors", "Errors caught, by kind", ["kind"], registry=self.registry)
        self.batch_seconds = Histogram(
            "eta1_batch_seconds", "Time to classify and alert one batch, in seconds",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.cursor_lag = Gauge(
            "eta1_cursor_lag_seconds", "Seconds between now and the newest flow time processed",
            registry=self.registry,
        )
