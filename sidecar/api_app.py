"""The detection API as a WSGI application: routing, the scan route, health, metrics and error responses.

``sidecar.api`` serves it with waitress. Routes (described in ``sidecar/openapi.yaml``):

- ``GET /eta_attack/api/v1.0?index=I&start_time=T1&end_time=T2`` runs the
  daemon's stages over [T1, T2) of one index with ``sidecar.scan.run_scan`` and
  writes the alerts under the daemon's deterministic ids, so repeating a call
  creates no duplicates.
- ``GET /healthz`` reports whether the model is loaded and the cluster reachable.
- ``GET /metrics`` exposes the process's Prometheus registry.
- ``GET /openapi.yaml`` and ``GET /openapi.json`` serve the route description.

One Detector serves every request, because ONNX Runtime's ``run`` and the
Elasticsearch client are thread-safe. A semaphore bounds concurrent scans.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import math
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import yaml
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, TransportError
from elasticsearch import ApiError, Elasticsearch
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from sidecar.api_validation import (
    InvalidParameter,
    HttpError,
    IndexNotFound,
    IndexPolicy,
    InvalidIndexName,
    ScanRequest,
    parse_scan_request,
    shown,
)
from sidecar.config import Config
from sidecar.detect import Detector
from sidecar.errors import SchemaError
from sidecar.metrics import Metrics
from sidecar.pipeline import make_sink
from sidecar.scan import ScanReport, run_scan
from sidecar.sink import StopRequested

log = logging.getLogger(__name__)

SCAN_ROUTE = "/eta_attack/api/v1.0"
JSON_TYPE = "application/json"
# Routes whose successful requests are logged at DEBUG, so probes and scrapes do not flood the log.
QUIET_ROUTES = frozenset({"/healthz", "/metrics"})

StartResponse = Callable[..., Any]
DetectorSource = Callable[[], Detector | None]


# NOTE: these are not config keys yet. Their place is ApiConfig in sidecar/config.py.
@dataclass(frozen=True)
class ApiLimits:
    """Bounds on the work one process takes on."""

    # Maximum scans running at once. One more gets 429 immediately instead of queueing.
    max_concurrent_scans: int = 4
    # waitress threads beyond the scan slots, for /healthz, /metrics and rejections.
    spare_threads: int = 4
    # Total time one scan may spend retrying failed bulk writes of alerts before it returns 503.
    write_retry_seconds: float = 30.0
    # Timeout of the cluster health request behind /healthz.
    health_timeout_seconds: float = 2.0
    # Retry-After values sent with 429 (busy) and 503 (cluster or model unavailable), in seconds.
    busy_retry_after: int = 5
    unavailable_retry_after: int = 10
    # How long shutdown waits for requests in progress.
    shutdown_timeout_seconds: float = 10.0


class Busy(HttpError):
    """Every scan slot is taken."""

    status = 429
    kind = "busy"


class Unavailable(HttpError):
    """Elasticsearch unreachable or overloaded, or no model loaded. The client should retry later."""

    status = 503
    kind = "cluster_unavailable"


class ModelUnavailable(Unavailable):
    """No Detector is loaded in this process."""

    kind = "model_unavailable"


class IndexClosed(HttpError):
    """The index exists but is closed, so it cannot be searched."""

    status = 409
    kind = "index_closed"


class RouteNotFound(HttpError):
    """No route has this path."""

    status = 404
    kind = "route_not_found"


class MethodNotAllowed(HttpError):
    """The route exists but accepts only GET."""

    status = 405
    kind = "method_not_allowed"


@dataclass
class Response:
    """One HTTP response, plus the counts the request log line shows."""

    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    detail: str = ""

    def status_line(self) -> str:
        """Return the WSGI status string, such as '200 OK'."""
        return f"{self.status} {HTTPStatus(self.status).phrase}"

    def header_list(self) -> list[tuple[str, str]]:
        """Return the headers for start_response."""
        headers = {
            "Content-Type": self.content_type,
            "Content-Length": str(len(self.body)),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            **self.headers,
        }
        return list(headers.items())


def json_response(status: int, data: Any, *, headers: dict[str, str] | None = None, detail: str = "") -> Response:
    """Build a JSON response. Non-finite floats become null, so strict JSON parsers accept the body."""
    try:
        text = json.dumps(data, allow_nan=False, default=_json_default)
    except ValueError:
        text = json.dumps(_finite(data), allow_nan=False, default=_json_default)
    return Response(status, text.encode("utf-8"), headers=dict(headers or {}), detail=detail)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


@dataclass
class ApiMetrics:
    """The API's own Prometheus series, registered once per Metrics registry."""

    requests: Counter
    errors: Counter
    request_seconds: Histogram
    scans_in_progress: Gauge


_API_METRICS: weakref.WeakKeyDictionary[Metrics, ApiMetrics] = weakref.WeakKeyDictionary()
_API_METRICS_LOCK = threading.Lock()


def api_metrics(metrics: Metrics) -> ApiMetrics:
    """Return the API series on this registry, registering them on first use."""
    with _API_METRICS_LOCK:
        existing = _API_METRICS.get(metrics)
        if existing is not None:
            return existing
        registry = metrics.registry
        created = ApiMetrics(
            requests=Counter(
                "eta1_api_requests", "HTTP API requests, by route and status", ["route", "status"], registry=registry
            ),
            errors=Counter("eta1_api_errors", "HTTP API error responses, by kind", ["kind"], registry=registry),
            request_seconds=Histogram(
                "eta1_api_request_seconds", "HTTP API request duration, in seconds, by route", ["route"],
                buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
                registry=registry,
            ),
            scans_in_progress=Gauge("eta1_api_scans_in_progress", "Detection scans running now", registry=registry),
        )
        _API_METRICS[metrics] = created
        return created


@functools.lru_cache(maxsize=1)
def openapi_yaml() -> bytes:
    """Return the checked-in OpenAPI description, read once from the package."""
    return importlib.resources.files("sidecar").joinpath("openapi.yaml").read_bytes()


@functools.lru_cache(maxsize=1)
def openapi_json() -> bytes:
    """Return the OpenAPI description converted to JSON."""
    return json.dumps(yaml.safe_load(openapi_yaml())).encode("utf-8")


class RetryBudget:
    """Stop condition for the alert sink's retries: total retry time spent, or the server stopping.

    The sink calls ``exhausted`` only while it waits between retries, so the
    clock starts at the first failed write, not at the start of the scan.
    """

    def __init__(self, seconds: float, stopping: threading.Event, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.stopping = stopping
        self.clock = clock
        self._first_failure: float | None = None

    def exhausted(self) -> bool:
        """Return True when the sink should stop retrying."""
        now = self.clock()
        if self._first_failure is None:
            self._first_failure = now
        return self.stopping.is_set() or now - self._first_failure > self.seconds


class DetectionApi:
    """The WSGI application: route, validate, run the scan, and turn every failure into a JSON status."""

    def __init__(
        self,
        config: Config,
        es: Elasticsearch,
        metrics: Metrics,
        detector_source: DetectorSource,
        *,
        limits: ApiLimits = ApiLimits(),
    ):
        self.config = config
        self.es = es
        self.metrics = metrics
        self.detector_source = detector_source
        self.limits = limits
        self.policy = IndexPolicy.from_config(config.api, config.source.index)
        self.stopping = threading.Event()
        self._api_metrics = api_metrics(metrics)
        self._scan_slots = threading.BoundedSemaphore(limits.max_concurrent_scans)
        self._routes: dict[str, Callable[[dict[str, Any]], Response]] = {
            SCAN_ROUTE: self.scan,
            "/healthz": self.healthz,
            "/metrics": self.prometheus,
            "/openapi.yaml": self.openapi_yaml,
            "/openapi.json": self.openapi_json,
        }

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        method = str(environ.get("REQUEST_METHOD", "GET"))
        path = str(environ.get("PATH_INFO", "")) or "/"
        handler = self._routes.get(path)
        route = path if handler is not None else "other"
        try:
            if handler is None:
                raise RouteNotFound(f"no route for path {shown(path)}; use one of {', '.join(self._routes)}")
            if method != "GET":
                raise MethodNotAllowed(f"{route} accepts only GET, not {shown(method, 20)}", headers={"Allow": "GET"})
            response = handler(environ)
        except HttpError as error:
            response = self._error_response(error)
        except Exception:  # noqa: BLE001 - the client gets an error id, the log gets the traceback
            error_id = uuid.uuid4().hex[:12]
            log.exception("internal error %s on %s %s", error_id, method, route)
            response = self._internal_error(error_id)

        elapsed = time.perf_counter() - started
        self._api_metrics.requests.labels(route=route, status=str(response.status)).inc()
        self._api_metrics.request_seconds.labels(route=route).observe(elapsed)
        quiet = route in QUIET_ROUTES and response.status < 400
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s %s %d %.3fs%s",
            environ.get("REMOTE_ADDR", "-"),
            method if method.isalpha() else shown(method, 20),
            route if handler is not None else shown(path),
            response.status, elapsed, f" {response.detail}" if response.detail else "",
        )
        start_response(response.status_line(), response.header_list())
        return [response.body]

    # -- routes ------------------------------------------------------------

    def scan(self, environ: dict[str, Any]) -> Response:
        """Run detection over one index and window, write the alerts, and return counts and documents."""
        request = parse_scan_request(str(environ.get("QUERY_STRING", "")), self.config.api, self.policy)
        window = f"index={request.index} start={request.start.isoformat()} end={request.end.isoformat()}"
        try:
            return self._scan(request, window)
        except HttpError as error:
            error.context = window
            raise

    def _scan(self, request: ScanRequest, window: str) -> Response:
        detector = self._detector()
        if not self._scan_slots.acquire(blocking=False):
            raise Busy(
                f"all {self.limits.max_concurrent_scans} scan slots are busy; retry after "
                f"{self.limits.busy_retry_after} s",
                headers={"Retry-After": str(self.limits.busy_retry_after)},
            )
        self._api_metrics.scans_in_progress.inc()
        started = time.perf_counter()
        try:
            report = self._run_scan(request, detector)
        except (TransportError, ApiError, StopRequested) as error:
            translated = self._cluster_error(error, request)
            if translated is None:
                raise
            raise translated from error
        except SchemaError as error:
            raise InvalidParameter(str(error), parameter="index") from error
        finally:
            self._api_metrics.scans_in_progress.dec()
            self._scan_slots.release()

        body = report.to_dict()
        body["alerts_truncated"] = report.alerts > len(report.documents)
        body["took_ms"] = round((time.perf_counter() - started) * 1000)
        detail = (
            f"{window} flows={report.flows} unusable={report.unusable} alerts={report.alerts} "
            f"new={report.alerts_created} existing={report.alerts_existing} dead_lettered={report.dead_lettered}"
        )
        return json_response(200, body, detail=detail)

    def healthz(self, environ: dict[str, Any]) -> Response:
        """Report whether the model is loaded and the cluster responds, with 200 only when both hold."""
        body: dict[str, Any] = {}
        try:
            detector = self.detector_source()
        except Exception as error:  # noqa: BLE001 - a failing source means no model, reported in the body
            log.warning("health check: the detector source failed: %s", error)
            detector = None
        body["model_loaded"] = detector is not None
        if detector is not None:
            body["model_sha256"] = detector.model.sha256
        try:
            health = self.es.options(request_timeout=self.limits.health_timeout_seconds).cluster.health()
            body["cluster_reachable"] = True
            body["cluster_status"] = health.get("status")
        except (TransportError, ApiError) as error:
            body["cluster_reachable"] = False
            body["cluster_error"] = _describe_cluster_error(error)
        healthy = body["model_loaded"] and body["cluster_reachable"]
        body["status"] = "ok" if healthy else "unavailable"
        return json_response(200 if healthy else 503, body)

    def prometheus(self, environ: dict[str, Any]) -> Response:
        """Return every series of the process's registry in the Prometheus text format."""
        return Response(200, generate_latest(self.metrics.registry), content_type=CONTENT_TYPE_LATEST)

    def openapi_yaml(self, environ: dict[str, Any]) -> Response:
        """Return the OpenAPI description as YAML."""
        return Response(200, openapi_yaml(), content_type="application/yaml")

    def openapi_json(self, environ: dict[str, Any]) -> Response:
        """Return the OpenAPI description as JSON."""
        return Response(200, openapi_json())

    # -- helpers -----------------------------------------------------------

    def _detector(self) -> Detector:
        detector = self.detector_source()
        if detector is None:
            raise ModelUnavailable(
                f"no model is loaded in this process; retry after {self.limits.unavailable_retry_after} s, "
                "and check the service log (eta1 validate checks the model and rules)",
                headers={"Retry-After": str(self.limits.unavailable_retry_after)},
            )
        return detector

    def _run_scan(self, request: ScanRequest, detector: Detector) -> ScanReport:
        self._check_index(request.index)
        budget = RetryBudget(self.limits.write_retry_seconds, self.stopping)
        return run_scan(
            self.es,
            self.config,
            detector,
            make_sink(self.es, should_stop=budget.exhausted),
            self.metrics,
            index=request.index,
            start=request.start,
            end=request.end,
            keep_documents=self.config.api.max_alerts_returned,
        )

    def _check_index(self, index: str) -> None:
        """Raise unless index names one existing, open, concrete index: 404, 409 when closed, 400 for an alias."""
        response = self.es.options(ignore_status=404).indices.get(
            index=index, expand_wildcards="none", features="settings"
        )
        if response.meta.status == 404:
            raise IndexNotFound(
                f"index {shown(index)} does not exist; check the name (daily flow indices are named cic_YYYYMMDD)",
                parameter="index",
            )
        if list(response.body) != [index]:
            raise InvalidIndexName(
                f"{shown(index)} is an alias or data stream, not a concrete index; pass a concrete index name",
                parameter="index",
            )
        # Elasticsearch (checked on 8.19) sets this on closing an index and removes it on opening.
        # A closed index would otherwise be skipped silently by the scan's ignore_unavailable searches.
        settings = response.body[index].get("settings", {}).get("index", {})
        if settings.get("verified_before_close") == "true":
            raise IndexClosed(
                f"index {shown(index)} is closed; open it (POST /{index}/_open) and retry", parameter="index"
            )

    def _cluster_error(self, error: BaseException, request: ScanRequest) -> HttpError | None:
        """Translate an Elasticsearch failure during a scan into 503, 404 or 409, or return None for anything else."""
        retry = {"Retry-After": str(self.limits.unavailable_retry_after)}
        hint = f"retry after {self.limits.unavailable_retry_after} s"
        if isinstance(error, StopRequested):
            log.warning("scan of %s stopped: writing alerts kept failing for %.0f s",
                        request.index, self.limits.write_retry_seconds)
            return Unavailable(
                f"writing alerts to Elasticsearch kept failing for {self.limits.write_retry_seconds:g} s; {hint}. "
                "Alerts written so far are kept, and a repeated call does not duplicate them",
                headers=retry,
            )
        if isinstance(error, (TransportConnectionError, ConnectionTimeout)):
            log.warning("scan of %s failed: Elasticsearch unreachable: %s", request.index, error)
            return Unavailable(
                f"Elasticsearch is unreachable; {hint}, and run eta1 check if it persists", headers=retry
            )
        if isinstance(error, ApiError):
            kind = error.error if isinstance(error.error, str) else ""
            if error.status_code in (429, 502, 503, 504):
                log.warning("scan of %s failed: Elasticsearch returned status %s (%s)", request.index, error.status_code, kind)
                return Unavailable(f"Elasticsearch is overloaded or unavailable (status {error.status_code}); {hint}",
                                   headers=retry)
            if kind == "index_not_found_exception":
                return IndexNotFound(f"index {shown(request.index)} does not exist", parameter="index")
            if kind == "index_closed_exception":
                return IndexClosed(
                    f"index {shown(request.index)} is closed; open it (POST /{request.index}/_open) and retry",
                    parameter="index",
                )
        return None

    def _error_response(self, error: HttpError) -> Response:
        self._api_metrics.errors.labels(kind=error.kind).inc()
        body = error.to_dict()
        if "Retry-After" in error.headers:
            body["retry_after_seconds"] = int(error.headers["Retry-After"])
        if error.status >= 500:
            # Server-side failures also count in the errors series shared with the daemon.
            self.metrics.errors.labels(kind=f"api_{error.kind}").inc()
        detail = f"{error.context} error={error.kind}" if error.context else f"error={error.kind}"
        return json_response(error.status, body, headers=error.headers, detail=detail)

    def _internal_error(self, error_id: str) -> Response:
        self._api_metrics.errors.labels(kind="internal").inc()
        self.metrics.errors.labels(kind="api_internal").inc()
        body = {
            "status": 500,
            "error": "internal",
            "error_id": error_id,
            "message": f"internal error; the service log has the details under error id {error_id}",
        }
        return json_response(500, body, detail=f"error=internal error_id={error_id}")


def _describe_cluster_error(error: BaseException) -> str:
    if isinstance(error, ApiError):
        return f"Elasticsearch returned status {error.status_code} ({error.error}); check cluster.hosts and credentials"
    return f"Elasticsearch is unreachable ({type(error).__name__}); check cluster.hosts and that the cluster is up"
