"""A benchmark worker process: the daemon, the plain export or the naive baseline, driven over stdin.

``python -m bench.worker ROLE URL`` loads the model once, then reads one JSON
command per line from stdin and replies with one JSON line on stdout. Each
role runs in its own process, so the daemon's resident memory is its own and
the parent can interleave roles run by run. Commands:

``{"op": "window", "index": ..., "start": ISO, "end": ISO, "state": NAME, "alerts": PATTERN, "profile": false}``
    process the flows with times in [start, end) and return
    ``{"flows", "alerts", "seconds", "rss": [[flows, bytes], ...], "peak_rss"}``.
    The daemon role keeps one Daemon per (index, state, alerts), so
    consecutive windows continue from its checkpoint.
``{"op": "quit"}``
    exit.

Roles: ``daemon`` (sidecar.daemon.Daemon.run(until_idle=True)), ``daemon-stdjson``
(the same with the client's standard-library JSON serializer), ``daemon-1thread`` and
``daemon-allcores`` (the same with onnxruntime on one intra-op thread, or one
per core), ``export`` (a
plain point-in-time + search_after loop over the same fields and page size),
``baseline`` (per page: a pandas DataFrame, XGBoost ``predict``, one index
request per alert).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from bench.common import MODEL_ONNX, OUT_DIR, RULES

PAGE_SIZE = 1000
RSS_STEP = 50_000
STATE_INDEX = "eta1-bench-state"

log = logging.getLogger("bench.worker")


def bench_config(url: str, index: str, state: str, alerts: str, *, start: str = "earliest",
                 batch_size: int = PAGE_SIZE) -> Any:
    """Return the daemon configuration the benchmark uses for one index, checkpoint name and alert pattern."""
    from sidecar.config import from_dict

    return from_dict({
        "cluster": {"hosts": [url]},
        "source": {"index": index, "lag_seconds": 0, "start": start},
        "alerts": {"index": alerts, "template_name": "eta1-bench-alerts", "timezone": "+08:00"},
        "state": {"index": STATE_INDEX, "name": state, "lease_seconds": 300},
        "model": str(MODEL_ONNX),
        "rules": str(RULES),
        "batch_size": batch_size,
        "poll_interval_seconds": 0.1,
    })


class RssSampler(threading.Thread):
    """Record this process's resident memory each time the flow count passes a multiple of `step`."""

    def __init__(self, flows: Any, step: int = RSS_STEP, interval: float = 0.02):
        super().__init__(daemon=True)
        self.flows = flows
        self.step = step
        self.interval = interval
        self.samples: list[tuple[int, int]] = [(0, current_rss())]
        self.peak = self.samples[0][1]
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_mark = self.step
        while not self._stop_event.wait(self.interval):
            rss = current_rss()
            self.peak = max(self.peak, rss)
            flows = int(self.flows())
            if flows >= next_mark:
                self.samples.append((flows, rss))
                next_mark = (flows // self.step + 1) * self.step

    def stop(self) -> None:
        """Stop sampling."""
        self._stop_event.set()


def current_rss() -> int:
    """Return this process's resident set size in bytes (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE_BYTES


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def peak_rss_so_far() -> int:
    """Return this process's peak resident set size in bytes (VmHWM).

    Not getrusage's ru_maxrss: Linux keeps that across execve, so a worker
    started by a large parent would report the parent's size.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class DaemonRole:
    """Runs the real daemon over a window; one Daemon per (index, state, alerts) keeps its checkpoint."""

    def __init__(self, url: str, stdjson_client: bool = False, model_threads: int | None = None):
        self.url = url
        self.stdjson_client = stdjson_client
        self.model_threads = model_threads
        self.daemons: dict[tuple[str, str, str], Any] = {}
        self.total_flows = 0
        self._current: Any = None
        self._flows_before = 0.0
        self.sampler = RssSampler(lambda: self.total_flows + self._current_flows())
        self.sampler.start()

    def _current_flows(self) -> float:
        daemon = self._current
        return daemon.metrics.flows_read._value.get() - self._flows_before if daemon is not None else 0

    def _daemon(self, index: str, state: str, alerts: str, start: str) -> Any:
        from sidecar.daemon import Daemon
        from sidecar.esclient import make_client

        key = (index, state, alerts)
        if key not in self.daemons:
            # A new checkpoint starts at the first window's start; later windows continue from it.
            config = bench_config(self.url, index, state, alerts, start=start)
            daemon = Daemon(config, _stdjson_client(config) if self.stdjson_client else make_client(config.cluster))
            if self.model_threads is not None:
                from sidecar.model import load_model

                # The same model file and rules, with onnxruntime pinned to this many threads.
                daemon.detector.model = load_model(config.resolve(config.model), intra_op_threads=self.model_threads)
            self.daemons[key] = daemon
        return self.daemons[key]

    def window(self, command: dict[str, Any]) -> dict[str, Any]:
        daemon = self._daemon(command["index"], command["state"], command["alerts"], command["start"])
        end = datetime.fromisoformat(command["end"])
        daemon.clock = lambda: end

        before = (daemon.totals.flows, daemon.totals.alerts_created, daemon.totals.alerts_existing,
                  daemon.totals.unusable)
        self._flows_before = daemon.metrics.flows_read._value.get()
        if self.total_flows == 0:
            # The curve starts with the model loaded and the client connected.
            self.sampler.samples[0] = (0, current_rss())
        self._current = daemon

        profiler = _start_profiler() if command.get("profile") else None
        timers = WriterTimers() if profiler else None
        started = time.perf_counter()
        try:
            totals = daemon.run(until_idle=True)
        finally:
            if timers is not None:
                timers.remove()
        seconds = time.perf_counter() - started
        # Read before the profiler renders its report, which allocates far more than the daemon.
        peak_rss = max(self.sampler.peak, peak_rss_so_far())
        profile = _stop_profiler(profiler, command.get("profile_name", "daemon")) if profiler else None
        if profile is not None and timers is not None:
            profile["writer"] = timers.totals

        flows, created, existing, unusable = (
            totals.flows - before[0], totals.alerts_created - before[1],
            totals.alerts_existing - before[2], totals.unusable - before[3],
        )
        self.total_flows += flows
        self._current = None
        return {
            "flows": flows, "alerts": created, "existing": existing, "unusable": unusable, "seconds": seconds,
            "rss": self.sampler.samples,
            "peak_rss": peak_rss, "profile": profile,
        }


def _stdjson_client(config: Any) -> Any:
    """Return a client like sidecar.esclient.make_client's, but with the client's default JSON serializer."""
    from elasticsearch import Elasticsearch

    cluster = config.cluster
    return Elasticsearch(list(cluster.hosts), request_timeout=cluster.request_timeout, max_retries=0,
                         retry_on_timeout=False)


class WriterTimers:
    """Wall time inside the writer thread's stages, which pyinstrument (one thread only) does not see."""

    TARGETS = {
        "writer: bulk write of alerts (serialise, send, wait)": ("sidecar.sink", "AlertSink", "write"),
        "writer: store the cursor (checkpoint)": ("sidecar.checkpoint", "Checkpoint", "save"),
        "writer: whole page (write + cursor + counts)": ("sidecar.daemon", "Daemon", "_store"),
    }

    def __init__(self) -> None:
        import importlib

        self.totals = dict.fromkeys(self.TARGETS, 0.0)
        self._originals: list[tuple[Any, str, Any]] = []
        for label, (module, cls_name, name) in self.TARGETS.items():
            cls = getattr(importlib.import_module(module), cls_name)
            original = getattr(cls, name)
            self._originals.append((cls, name, original))
            setattr(cls, name, self._wrap(original, label))

    def _wrap(self, function: Any, label: str) -> Any:
        totals = self.totals

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - started

        return timed

    def remove(self) -> None:
        """Restore the original methods."""
        for cls, name, original in self._originals:
            setattr(cls, name, original)


class ExportRole:
    """A plain point-in-time + search_after export of the daemon's fields, with the daemon's page size."""

    def __init__(self, url: str):
        from sidecar.esclient import make_client
        from sidecar.pipeline import load_detector, needed_fields
        from sidecar.source import source_fields

        self.url = url
        self.config = bench_config(url, "cic_*", "export", "unused-%Y")
        self.es = make_client(self.config.cluster)
        self.wanted = needed_fields(load_detector(self.config), self.config)
        self._source_fields = source_fields

    def window(self, command: dict[str, Any]) -> dict[str, Any]:
        index = command["index"]
        fields = self._source_fields(self.es, index, self.wanted)
        started = time.perf_counter()
        flows = export(self.es, index, command["start"], command["end"], fields, PAGE_SIZE)
        return {"flows": flows, "alerts": 0, "seconds": time.perf_counter() - started}


def export(es: Any, index: str, start: str, end: str, fields: list[str] | None, page_size: int) -> int:
    """Read every flow in [start, end) in time order and return how many there were."""
    pit = es.open_point_in_time(index=index, keep_alive="5m")["id"]
    flows = 0
    search_after = None
    try:
        while True:
            body: dict[str, Any] = {
                "size": page_size,
                "sort": [{"@timestamp": {"order": "asc", "format": "strict_date_optional_time_nanos"}}],
                "query": {"bool": {"filter": [{"range": {"@timestamp": {"gte": start, "lt": end}}}]}},
                "track_total_hits": False,
                "pit": {"id": pit, "keep_alive": "5m"},
            }
            if fields is not None:
                body["_source"] = {"includes": [*fields, "@timestamp"]}
            if search_after is not None:
                body["search_after"] = search_after
            response = es.search(**body)
            pit = response.get("pit_id", pit)
            hits = response["hits"]["hits"]
            flows += len(hits)
            if len(hits) < page_size:
                return flows
            search_after = hits[-1]["sort"]
    finally:
        es.close_point_in_time(id=pit)


class BaselineRole:
    """The obvious implementation: DataFrame per page, XGBoost predict, one index request per alert."""

    def __init__(self, url: str):
        import xgboost as xgb

        from bench.common import MODEL_XGB
        from sidecar.esclient import make_client
        from sidecar.pipeline import load_detector

        self.config = bench_config(url, "cic_*", "baseline", "unused-%Y")
        self.es = make_client(self.config.cluster)
        self.detector = load_detector(self.config)
        self.booster = xgb.Booster()
        self.booster.load_model(str(MODEL_XGB))

    def window(self, command: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        flows, alerts = self._run(command["index"], command["start"], command["end"], command["alerts"])
        return {"flows": flows, "alerts": alerts, "seconds": time.perf_counter() - started}

    def _run(self, index: str, start: str, end: str, pattern: str) -> tuple[int, int]:
        import numpy as np
        import pandas as pd
        import xgboost as xgb

        from sidecar.alerts import build_alert
        from sidecar.timeutil import parse_time

        model = self.detector.model
        local_tz = self.config.alerts.tzinfo()
        flows = alerts = 0
        search_after = None
        pit = self.es.open_point_in_time(index=index, keep_alive="5m")["id"]
        try:
            while True:
                body: dict[str, Any] = {
                    "size": PAGE_SIZE,
                    "sort": [{"@timestamp": "asc"}],
                    "query": {"range": {"@timestamp": {"gte": start, "lt": end}}},
                    "pit": {"id": pit, "keep_alive": "5m"},
                }
                if search_after is not None:
                    body["search_after"] = search_after
                hits = self.es.search(**body)["hits"]["hits"]
                if not hits:
                    return flows, alerts
                frame = pd.DataFrame([hit["_source"] for hit in hits])
                matrix = frame[list(model.features)].astype("float32")
                probabilities = self.booster.predict(xgb.DMatrix(matrix, missing=np.nan))
                now = datetime.now(timezone.utc)
                for position, row in enumerate(probabilities):
                    best = int(row.argmax())
                    rule = self.detector.rules.rule_for(model.classes[best])
                    if rule is None or row[best] < rule.min_confidence:
                        continue
                    hit = hits[position]
                    alert = build_alert(
                        source_index=hit["_index"], flow_id=hit["_id"], source=hit["_source"],
                        flow_time=parse_time(hit["_source"]["@timestamp"]), rule=rule,
                        confidence=float(row[best]), model_sha256=model.sha256, now=now, local_tz=local_tz,
                        index_pattern=pattern,
                    )
                    self.es.index(index=alert.index, id=alert.id, document=alert.document)
                    alerts += 1
                flows += len(hits)
                search_after = hits[-1]["sort"]
        finally:
            self.es.close_point_in_time(id=pit)


def _start_profiler() -> Any:
    try:
        from pyinstrument import Profiler
    except ImportError:
        log.warning("pyinstrument is not installed, so the profile is left out; pip install pyinstrument")
        return None

    profiler = Profiler(interval=0.005, async_mode="disabled")
    profiler.start()
    return profiler


def _stop_profiler(profiler: Any, name: str) -> dict[str, Any]:
    """Stop the profiler, save its HTML and text under bench/out/, and return the top functions by own time."""
    profiler.stop()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"profile-{name}.html").write_text(profiler.output_html())
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    (OUT_DIR / f"profile-{name}.txt").write_text(text)
    return {"self": _self_times(profiler.last_session), "stages": _stage_times(profiler.last_session), "text": text}


# Pipeline stages, by the function that does each (class name, function name).
STAGES = {
    "main: wait for the prefetched page (search + decode in the prefetch thread)": ("FlowReader", "pages"),
    "main: featurise": ("FeatureExtractor", "from_records"),
    "main: model (onnxruntime)": (None, "predict_proba"),
    "main: build alert documents": (None, "build_alert"),
    "main: wait for the writer thread (previous page)": ("Future", "result"),
}


def _stage_times(session: Any) -> dict[str, float]:
    """Return the wall time inside each pipeline stage's function (outermost call only)."""
    totals = dict.fromkeys(STAGES, 0.0)
    wanted = {value: key for key, value in STAGES.items()}
    root = session.root_frame()

    def visit(frame: Any) -> None:
        key = (frame.class_name, frame.function)
        stage = wanted.get(key) or wanted.get((None, frame.function))
        if stage is not None and not frame.is_synthetic:
            totals[stage] += frame.time
            return
        for child in frame.children:
            visit(child)

    if root is not None:
        visit(root)
        totals["total"] = root.time
    return totals


def _self_times(session: Any) -> list[tuple[str, float]]:
    """Return (function, seconds) of own time, summed over the call tree, largest first."""
    totals: dict[str, float] = {}
    root = session.root_frame()

    def visit(frame: Any) -> None:
        if frame.is_synthetic:
            return
        path = _short_path(frame.file_path_short or frame.file_path or "")
        name = f"{frame.class_name}.{frame.function}" if frame.class_name else frame.function
        label = f"{name} ({path}:{frame.line_no})" if frame.line_no else f"{name} ({path})"
        totals[label] = totals.get(label, 0.0) + frame.total_self_time
        for child in frame.children:
            visit(child)

    if root is not None:
        visit(root)
    return sorted(totals.items(), key=lambda item: -item[1])[:25]


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.split("/work/main/", 1)[-1]


ROLES = {
    "daemon": DaemonRole,
    "daemon-stdjson": lambda url: DaemonRole(url, stdjson_client=True),
    "daemon-1thread": lambda url: DaemonRole(url, model_threads=1),
    "daemon-allcores": lambda url: DaemonRole(url, model_threads=0),
    "export": ExportRole,
    "baseline": BaselineRole,
}


def main(argv: list[str] | None = None) -> int:
    """Serve commands from stdin until ``quit`` or end of input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("url", help="Elasticsearch URL of the benchmark node")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    role = ROLES[args.role](args.url)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("op") == "quit":
            break
        try:
            answer = role.window(command)
        except Exception as error:  # noqa: BLE001 - reported to the parent, which stops the suite
            log.exception("command %s failed", command)
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
