"""The daemon: poll the flow indices, classify each page, write alerts, then move the checkpoint.

Order per page: read -> classify -> bulk-write alerts (retried until every one
is stored or dead-lettered) -> store the cursor. A crash between the last two
steps replays the page on restart, and the alerts' deterministic ids turn the
replay into no-ops: flows are read at least once, alerts are written once.
The stages of neighbouring pages overlap: page k+1 is read (prefetch) and
classified while page k's alerts are written and its cursor stored in a
writer thread, which handles one page at a time, in page order.

Signals: SIGTERM and SIGINT finish the current page, store the cursor and
exit; SIGHUP reloads the model and rules, keeping the old ones if the new
files are invalid.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from collections.abc import Callable, Iterator
from typing import Any

from elasticsearch import Elasticsearch

from sidecar.checkpoint import Checkpoint
from sidecar.config import Config
from sidecar.errors import CursorConflictError, SidecarError
from sidecar.metrics import Metrics
from sidecar.pipeline import (
    ClassifiedPage, PageProcessor, PageResult, install_alert_template, load_detector, make_sink, needed_fields,
)
from sidecar.sink import Backoff, StopRequested, is_transient
from sidecar.source import FlowReader, Page, source_fields
from sidecar.timeutil import parse_time

log = logging.getLogger(__name__)

# Seconds a --until-idle run keeps retrying an unreachable cluster before it fails.
UNTIL_IDLE_GIVE_UP = 300.0


@dataclass
class CycleStats:
    """Counts for one polling cycle, logged as one summary line."""

    pages: int = 0
    flows: int = 0
    unusable: int = 0
    alerts_created: int = 0
    alerts_existing: int = 0
    dead_lettered: int = 0
    retries: int = 0
    by_signature: Counter[str] = field(default_factory=Counter)


@dataclass
class RunTotals:
    """Counts since the daemon started."""

    flows: int = 0
    unusable: int = 0
    alerts_created: int = 0
    alerts_existing: int = 0
    dead_lettered: int = 0
    by_signature: Counter[str] = field(default_factory=Counter)

    def add(self, cycle: CycleStats) -> None:
        """Add one cycle's counts."""
        self.flows += cycle.flows
        self.unusable += cycle.unusable
        self.alerts_created += cycle.alerts_created
        self.alerts_existing += cycle.alerts_existing
        self.dead_lettered += cycle.dead_lettered
        self.by_signature.update(cycle.by_signature)


class Daemon:
    """Runs polling cycles until stopped."""

    def __init__(
        self,
        config: Config,
        es: Elasticsearch,
        *,
        metrics: Metrics | None = None,
        dry_run: bool = False,
        clock: Callable[[], datetime] | None = None,
    ):
        self.config = config
        self.es = es
        self.metrics = metrics or Metrics()
        self.dry_run = dry_run
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self.totals = RunTotals()
        self.detector = load_detector(config)
        self.sink = make_sink(es, should_stop=self.stop_event.is_set, dry_run=dry_run)
        self.backoff = Backoff(should_stop=self.stop_event.is_set)
        self.checkpoint = Checkpoint(
            es,
            index=config.state.index,
            name=config.state.name,
            source_index=config.source.index,
            time_field=config.source.time_field,
            lease_seconds=config.state.lease_seconds,
            read_only=dry_run,
        )

    # -- signals ---------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Route SIGTERM/SIGINT to a graceful stop and SIGHUP to a reload."""
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.request_stop("SIGINT"))
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def request_stop(self, why: str = "request") -> None:
        """Finish the current page, store the cursor, and exit the loop."""
        if not self.stop_event.is_set():
            log.info("stop requested (%s); finishing the current batch", why)
        self.stop_event.set()

    def reload(self) -> bool:
        """Reload the model and rules; keep the running ones if the new files are invalid."""
        self.reload_requested.clear()
        try:
            detector = load_detector(self.config)
        except SidecarError as error:
            self.metrics.errors.labels(kind="reload").inc()
            log.error("reload rejected, keeping model %s and the old rules: %s", self.detector.model.sha256[:12], error)
            return False
        self.detector = detector
        log.info("reloaded model %s (%d classes) and rules from %s",
                 detector.model.sha256[:12], len(detector.model.classes), self.config.rules)
        return True

    # -- main loop -------------------------------------------------------

    def run(self, *, until_idle: bool = False) -> RunTotals:
        """Run cycles until stopped; with until_idle, stop after the first cycle that reads nothing.

        With until_idle, an outage longer than UNTIL_IDLE_GIVE_UP seconds raises
        instead of retrying forever, so batch runs (cron, make demo) end with an error.
        """
        if until_idle:
            self.backoff.give_up_after = UNTIL_IDLE_GIVE_UP
            self.sink.backoff.give_up_after = UNTIL_IDLE_GIVE_UP
        log.info(
            "eta1 daemon starting: source %s on %s, alerts %s, model %s, checkpoint %s/%s%s",
            self.config.source.index, self.config.source.time_field, self.config.alerts.index,
            self.detector.model.sha256[:12], self.config.state.index, self.config.state.name,
            " (dry run: no alerts are written)" if self.dry_run else "",
        )
        try:
            self._retrying("preparing indices", self._prepare)
            self._acquire_lease()
            while not self.stop_event.is_set():
                if self.reload_requested.is_set():
                    self.reload()
                try:
                    cycle = self._cycle()
                except CursorConflictError as error:
                    log.error("%s; standing by", error)
                    self.metrics.errors.labels(kind="checkpoint_conflict").inc()
                    self._acquire_lease()
                    continue
                if cycle is None:
                    continue
                self.totals.add(cycle)
                if until_idle and cycle.flows == 0:
                    break
                if cycle.flows == 0:
                    self._sleep(self.config.poll_interval_seconds)
        except StopRequested:
            pass
        finally:
            self._release()
        log.info(
            "eta1 daemon stopped: %d flows read, %d unusable, %d alerts written, %d already present, %d dead-lettered",
            self.totals.flows, self.totals.unusable, self.totals.alerts_created,
            self.totals.alerts_existing, self.totals.dead_lettered,
        )
        return self.totals

    def _prepare(self) -> None:
        from sidecar.check import check_source_mapping

        # A model whose features the flow indices lack would mark every flow unusable: refuse to start.
        check_source_mapping(
            self.es, self.config.source.index, self.detector.model.features, self.config.source.time_field
        )
        self.checkpoint.ensure_index()
        if not self.dry_run:
            install_alert_template(self.es, self.config)
            self.sink.ensure_dead_letter_index()

    def _acquire_lease(self) -> None:
        announced = False
        while not self.stop_event.is_set():
            holder = self._retrying("reading the checkpoint", self.checkpoint.try_acquire)
            if holder is None:
                log.info("checkpoint %s acquired by %s; resuming at %s",
                         self.config.state.name, self.checkpoint.owner, self.checkpoint.cursor.time or "the start")
                return
            if not announced:
                log.warning(
                    "checkpoint %s is held by %s until %s; standing by until its lease expires "
                    "(give each daemon its own state.name to run both)",
                    self.config.state.name, holder.owner, holder.until,
                )
                announced = True
            self._sleep(min(5.0, self.config.state.lease_seconds / 4))
        raise StopRequested()

    def _release(self) -> None:
        try:
            self.checkpoint.release()
        except Exception as error:  # noqa: BLE001 - the lease then simply expires
            log.warning("could not release checkpoint %s: %s", self.config.state.name, error)

    def _cycle(self) -> CycleStats | None:
        """Read every page up to now - lag; return the counts, or None if the cycle was cut short."""
        config = self.config
        now = self.clock()
        upper = now - timedelta(seconds=config.source.lag_seconds)
        lower = None if config.source.start == "earliest" else parse_time(config.source.start)
        detector = self.detector
        fields = self._retrying(
            "reading the source mapping", source_fields, self.es, config.source.index, needed_fields(detector, config)
        )
        reader = FlowReader(
            self.es,
            config.source.index,
            time_field=config.source.time_field,
            tiebreaker=config.source.tiebreaker,
            fields=fields,
            page_size=config.batch_size,
            # The next page is read while this one is classified and its alerts are written.
            prefetch=True,
        )
        processor = PageProcessor(detector, self.sink, self.metrics)
        stats = CycleStats()
        try:
            # closing() ends the reader in this thread when processing stops early. Left to the garbage
            # collector, its clean-up could run in the prefetch thread, where joining that thread fails.
            with closing(reader.pages(self.checkpoint.cursor, lower=lower, upper=upper)) as pages:
                self._process_pages(pages, processor, stats)
            if stats.pages == 0:
                # Nothing new: renew the lease so a standby daemon keeps waiting.
                self.checkpoint.save(self.checkpoint.cursor)
                self.backoff.succeeded("polling the cluster")
        except StopRequested:
            self.totals.add(stats)  # the pages stored before the stop still count
            raise
        except CursorConflictError:
            self.totals.add(stats)
            raise
        except Exception as error:  # noqa: BLE001 - transient errors retry, the rest stop the daemon
            if not is_transient(error):
                self.metrics.errors.labels(kind=type(error).__name__).inc()
                raise
            # The pages stored before the failure count; the cycle's summary line is skipped.
            self.totals.add(stats)
            self.metrics.errors.labels(kind="cluster_unavailable").inc()
            self.backoff.failed("polling the cluster", error)
            return None
        if stats.pages:
            log.info(
                "cycle: %d flows in %d pages, %d unusable, %d alerts written, %d already present, "
                "%d dead-lettered, %d retries; cursor at %s",
                stats.flows, stats.pages, stats.unusable, stats.alerts_created, stats.alerts_existing,
                stats.dead_lettered, stats.retries, self.checkpoint.cursor.time,
            )
        return stats

    def _process_pages(self, pages: Iterator[Page], processor: PageProcessor, stats: CycleStats) -> None:
        """Classify each page and hand it to the writer thread; add each stored page to stats.

        Page k's alerts are written and its cursor stored in a writer thread
        while page k+1 is classified. One writer thread, and one page in
        flight, keep the writes and the checkpoints in page order. On an
        error, stats holds the pages stored before it.
        """
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eta1-writer")
        pending: Future[PageResult] | None = None
        try:
            for page in pages:
                classified = processor.classify(page)
                if pending is not None:
                    done, pending = pending, None
                    self._count(stats, done.result())
                pending = writer.submit(self._store, processor, classified)
                if self.stop_event.is_set() or self.reload_requested.is_set():
                    break
            if pending is not None:
                done, pending = pending, None
                self._count(stats, done.result())
        except BaseException:
            if pending is not None:
                self._drain(pending, stats)
            raise
        finally:
            writer.shutdown(wait=True)

    def _store(self, processor: PageProcessor, classified: ClassifiedPage) -> PageResult:
        """Write a classified page's alerts, then store its cursor (runs in the writer thread)."""
        result = processor.store(classified)
        # Alerts are stored; only now may the cursor move past these flows.
        self.checkpoint.save(classified.page.cursor)
        self.backoff.succeeded("polling the cluster")
        self._update_lag(classified.page.cursor.time)
        return result

    @staticmethod
    def _count(stats: CycleStats, result: PageResult) -> None:
        stats.pages += 1
        stats.flows += result.flows
        stats.unusable += result.unusable
        stats.alerts_created += result.alerts_created
        stats.alerts_existing += result.alerts_existing
        stats.dead_lettered += result.dead_lettered
        stats.retries += result.retries
        stats.by_signature.update(result.by_signature)

    @staticmethod
    def _drain(pending: Future[PageResult], stats: CycleStats) -> None:
        """Wait for the page being written when another error cuts the cycle short; count it, or log its own failure."""
        try:
            result = pending.result()
        except BaseException as error:  # noqa: BLE001 - the error already propagating is the one to raise
            log.warning("writing the alerts of the previous page failed too: %s", error)
            return
        # Its alerts and cursor are stored: count the page, or the run's totals miss it.
        Daemon._count(stats, result)

    def _update_lag(self, cursor_time: str | None) -> None:
        if cursor_time is None:
            return
        try:
            moment = parse_time(cursor_time, default_tz=timezone.utc)
        except ValueError:
            return
        self.metrics.cursor_lag.set((datetime.now(timezone.utc) - moment).total_seconds())

    def _retrying(self, what: str, function: Any, *args: Any) -> Any:
        while True:
            if self.stop_event.is_set():
                raise StopRequested()
            try:
                value = function(*args)
            except Exception as error:  # noqa: BLE001 - transient errors retry, the rest propagate
                if not is_transient(error):
                    raise
                self.metrics.errors.labels(kind="cluster_unavailable").inc()
                self.backoff.failed(what, error)
                continue
            self.backoff.succeeded(what)
            return value

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set() and not self.reload_requested.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.stop_event.wait(min(remaining, 0.5))
