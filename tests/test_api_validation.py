"""The API's parameter checks and error routes, without a cluster: plain functions and the WSGI app called directly."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
from datetime import datetime, timedelta, timezone
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
import yaml
from elastic_transport import ApiResponseMeta, HttpHeaders
from elasticsearch import ApiError, Elasticsearch
from prometheus_client.parser import text_string_to_metric_families

from sidecar import api_app
from sidecar.api_app import SCAN_ROUTE, ApiLimits, DetectionApi, RetryBudget, openapi_yaml
from sidecar.api_validation import (
    IndexForbidden,
    IndexPolicy,
    InvalidIndexName,
    InvalidParameter,
    check_index_name,
    parse_query,
    parse_scan_request,
    parse_window_time,
)
from sidecar.config import ApiConfig, from_dict
from sidecar.detect import Detector
from sidecar.metrics import Metrics
from sidecar.sink import StopRequested
from tests.fakes import FakeModel, FakeRules

OLD_START = "2020-08-04T11:25:00.000000%2B08:00"
OLD_END = "2020-08-04T11:30:00.000000%2B08:00"
CST = timezone(timedelta(hours=8))


def closed_port() -> int:
    """Return a loopback port that was just bound and closed, so nothing listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fake_detector() -> Detector:
    return Detector(FakeModel(), FakeRules(), time_field="@timestamp", alert_index_pattern="eta1-alerts-%Y.%m.%d",
                    local_tz=CST)


@pytest.fixture
def unreachable_es():
    client = Elasticsearch(f"http://127.0.0.1:{closed_port()}", request_timeout=2, max_retries=0)
    yield client
    client.close()


@pytest.fixture
def app(unreachable_es) -> DetectionApi:
    config = from_dict({"api": {"allowed_indices": "cic_*,-cic_private*", "max_window_seconds": 3600}})
    detector = fake_detector()
    return DetectionApi(config, unreachable_es, Metrics(), lambda: detector, limits=ApiLimits(max_concurrent_scans=2))


def call(app: DetectionApi, path: str, query: str = "", method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Call the WSGI app once. Return the status code, headers and body."""
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                               "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        captured["status"] = int(status.split()[0])
        captured["headers"] = dict(headers)

    body = b"".join(app(environ, start_response))
    return captured["status"], captured["headers"], body


def scan_query(index: str = "cic_20200804", start: str = OLD_START, end: str = OLD_END) -> str:
    return f"index={index}&start_time={start}&end_time={end}"


# -- index names -------------------------------------------------------------

@pytest.mark.parametrize("name", ["cic_20200804", "cic_2020.08.04", "cic-x-1", "0cic", "cic_" + "a" * 251])
def test_index_name_plain_accepted(name):
    check_index_name(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("cic_*", "wildcards"),
        ("cic_2020080?", "wildcards"),
        ("cic_a,cic_b", "comma"),
        ("_all", "reserved"),
        ("_cat", "reserved"),
        ("-cic_a", "excludes"),
        ("+cic_a", "leading '\\+'"),
        (".security", "hidden or system"),
        ("..", "hidden or system"),
        ("cic..x", "'\\.\\.'"),
        ("cic_a/../x", "'\\.\\.'"),
        ("cic_a/_search", "path separator"),
        ("cic\\a", "not allowed"),
        ("remote:cic_a", "remote cluster"),
        ("<cic_{now/d}>", "date math"),
        ("cic a", "whitespace"),
        ("cic\ta", "whitespace"),
        ("Cic_a", "lowercase"),
        ("cic#a", "not allowed"),
        ('cic"a', "not allowed"),
        ("cic|a", "not allowed"),
        ("cic>a", "date math"),
        ("cic_é", "characters other than"),
        ("cic\x00a", "characters other than"),
        ("c" * 256, "longer than 255 bytes"),
    ],
)
def test_index_name_rejected(name, reason):
    with pytest.raises(InvalidIndexName, match=reason) as caught:
        check_index_name(name)
    assert caught.value.status == 400
    assert caught.value.parameter == "index"
    assert "cic_20200804" in caught.value.message


# -- times -------------------------------------------------------------------

EXPECTED_START = datetime(2020, 8, 4, 11, 25, tzinfo=CST)


@pytest.mark.parametrize(
    "raw",
    [
        "2020-08-04T11:25:00.000000+08:00",
        "2020-08-04T11:25:00.00000+08:00",
        "2020-08-04T11:25:00+08:00",
        "2020-08-04T11:25:00.000000 08:00",
        "2020-08-04T11:25:00 08:00",
        "2020-08-04T03:25:00Z",
        "2020-08-04T03:25:00.000000Z",
    ],
)
def test_time_formats_accepted(raw):
    assert parse_window_time("start_time", raw) == EXPECTED_START


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("2020-08-04T11:25:00.000000", "has no UTC offset; append one such as \\+08:00"),
        ("2020-08-04T11:25:00", "has no UTC offset"),
        ("yesterday", "is not a valid time"),
        ("2020-13-04T11:25:00+08:00", "is not a valid time"),
        ("2020-08-04T11:25:00+25:00", "is not a valid time"),
        ("", "is not a valid time"),
        ("2020-08-04T11:25:00+08:00" + "0" * 60, "longer than 64 characters"),
        ("0001-01-01T00:00:00+08:00", "out of range in UTC"),
    ],
)
def test_time_rejected(raw, message):
    with pytest.raises(InvalidParameter, match=message) as caught:
        parse_window_time("start_time", raw)
    assert caught.value.parameter == "start_time"
    assert "YYYY-mm-ddTHH:MM:SS" in (caught.value.expected or "")


# -- whole query ---------------------------------------------------------------

POLICY = IndexPolicy.from_config(ApiConfig(allowed_indices="cic_*,-cic_private*"), "ignored-*")


def test_query_old_example_parsed():
    request = parse_scan_request(scan_query(), ApiConfig(), POLICY)
    assert request.index == "cic_20200804"
    assert request.start == EXPECTED_START
    assert request.end == datetime(2020, 8, 4, 11, 30, tzinfo=CST)


def test_query_unencoded_plus_read_as_offset():
    request = parse_scan_request(scan_query(start="2020-08-04T11:25:00.000000+08:00"), ApiConfig(), POLICY)
    assert request.start == EXPECTED_START


def test_query_missing_parameters_named():
    with pytest.raises(InvalidParameter, match="missing query parameters start_time, end_time") as caught:
        parse_query("index=cic_a")
    assert caught.value.parameter == "start_time"


def test_query_repeated_parameter_rejected():
    with pytest.raises(InvalidParameter, match="index is given 2 times"):
        parse_query(scan_query() + "&index=cic_b")


def test_query_too_many_fields_rejected():
    with pytest.raises(InvalidParameter, match="more than 20 parameters"):
        parse_query("&".join(f"x{i}=1" for i in range(30)))


def test_window_start_not_before_end():
    with pytest.raises(InvalidParameter, match="is not before end_time") as caught:
        parse_scan_request(scan_query(start=OLD_END, end=OLD_END), ApiConfig(), POLICY)
    assert caught.value.parameter == "start_time"


def test_window_longer_than_limit():
    with pytest.raises(InvalidParameter, match="longer than api.max_window_seconds \\(60 s\\)"):
        parse_scan_request(scan_query(), ApiConfig(max_window_seconds=60), POLICY)


def test_window_limit_zero_means_none():
    request = parse_scan_request(scan_query(end="2020-09-04T11:30:00Z"), ApiConfig(max_window_seconds=0), POLICY)
    assert request.end.month == 9


def test_policy_defaults_to_source_index():
    policy = IndexPolicy.from_config(ApiConfig(), "cic_*")
    assert policy.allows("cic_20200804")
    assert not policy.allows("flows_20200804")


def test_policy_exclusion_applies():
    with pytest.raises(IndexForbidden, match="outside the indices this API may read \\(cic_\\*,-cic_private\\*\\)"):
        parse_scan_request(scan_query(index="cic_private_1"), ApiConfig(), POLICY)


def test_bad_name_is_400_before_403():
    with pytest.raises(InvalidIndexName):
        parse_scan_request(scan_query(index="secret*"), ApiConfig(), POLICY)


# -- the WSGI app, with a cluster address where nothing listens -----------------

@pytest.mark.parametrize(
    ("query", "status", "kind", "parameter", "message"),
    [
        ("", 400, "invalid_parameter", "index", "missing query parameters index, start_time, end_time"),
        (scan_query(start="2020-08-04T11:25:00"), 400, "invalid_parameter", "start_time", "has no UTC offset"),
        (scan_query(end="soon"), 400, "invalid_parameter", "end_time", "is not a valid time"),
        (scan_query(start=OLD_END, end=OLD_START), 400, "invalid_parameter", "start_time", "is not before"),
        (scan_query(end="2020-08-05T11:30:00Z"), 400, "invalid_parameter", "end_time", "max_window_seconds"),
        (scan_query(index="cic_*"), 400, "invalid_index_name", "index", "wildcards"),
        (scan_query(index="_all"), 400, "invalid_index_name", "index", "reserved"),
        (scan_query(index="remote:cic_a"), 400, "invalid_index_name", "index", "remote cluster"),
        (scan_query(index="%3Ccic_%7Bnow%2Fd%7D%3E"), 400, "invalid_index_name", "index", "date math"),
        (scan_query(index="cic_a%2Ccic_b"), 400, "invalid_index_name", "index", "comma"),
        (scan_query(index="flows_20200804"), 403, "index_forbidden", "index", "api.allowed_indices"),
        (scan_query(index="cic_private_1"), 403, "index_forbidden", "index", "outside the indices"),
    ],
)
def test_app_rejects_bad_input(app, query, status, kind, parameter, message):
    code, headers, body = call(app, SCAN_ROUTE, query)
    data = json.loads(body)
    assert code == status
    assert headers["Content-Type"] == "application/json"
    assert data["status"] == status
    assert data["error"] == kind
    assert data["parameter"] == parameter
    assert message in data["message"]


def test_app_unknown_route_404(app):
    code, _, body = call(app, "/eta_attack/api/v2.0")
    data = json.loads(body)
    assert code == 404
    assert data["error"] == "route_not_found"
    assert SCAN_ROUTE in data["message"]


def test_app_wrong_method_405(app):
    code, headers, body = call(app, SCAN_ROUTE, scan_query(), method="POST")
    assert code == 405
    assert headers["Allow"] == "GET"
    assert json.loads(body)["error"] == "method_not_allowed"


def test_app_cluster_down_503_retry_after(app):
    code, headers, body = call(app, SCAN_ROUTE, scan_query())
    data = json.loads(body)
    assert code == 503
    assert headers["Retry-After"] == "10"
    assert data["error"] == "cluster_unavailable"
    assert data["retry_after_seconds"] == 10
    assert "retry after 10 s" in data["message"]


def test_app_saturated_429(app):
    for _ in range(app.limits.max_concurrent_scans):
        assert app._scan_slots.acquire(blocking=False)
    code, headers, body = call(app, SCAN_ROUTE, scan_query())
    assert code == 429
    assert headers["Retry-After"] == "5"
    assert "scan slots are busy" in json.loads(body)["message"]


def test_app_no_model_503(unreachable_es):
    app = DetectionApi(from_dict({}), unreachable_es, Metrics(), lambda: None)
    code, headers, body = call(app, SCAN_ROUTE, scan_query())
    assert code == 503
    assert "Retry-After" in headers
    assert json.loads(body)["error"] == "model_unavailable"


def test_app_unexpected_error_500_with_id(app, monkeypatch, caplog):
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app, "_check_index", explode)
    with caplog.at_level(logging.INFO, logger="sidecar.api_app"):
        code, _, body = call(app, SCAN_ROUTE, scan_query())
    data = json.loads(body)
    assert code == 500
    assert data["error"] == "internal"
    assert "secret internals" not in body.decode()
    assert "Traceback" not in body.decode()
    error_records = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert data["error_id"] in error_records[0].getMessage()
    assert error_records[0].exc_info is not None
    assert f"error_id={data['error_id']}" in caplog.text


def test_app_request_log_line(app, caplog):
    with caplog.at_level(logging.INFO, logger="sidecar.api_app"):
        call(app, SCAN_ROUTE, scan_query(index="flows_x") + "&token=hunter2")
    line = caplog.records[-1].getMessage()
    assert "GET /eta_attack/api/v1.0 403" in line
    assert "error=index_forbidden" in line
    assert "hunter2" not in caplog.text


def test_app_healthz_503_cluster_down(app):
    code, _, body = call(app, "/healthz")
    data = json.loads(body)
    assert code == 503
    assert data["model_loaded"] is True
    assert data["cluster_reachable"] is False
    assert data["status"] == "unavailable"


def test_app_metrics_count_requests(app):
    call(app, SCAN_ROUTE, "")
    call(app, "/nowhere")
    code, headers, body = call(app, "/metrics")
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    assert samples[("eta1_api_requests_total", (("route", SCAN_ROUTE), ("status", "400")))] == 1
    assert samples[("eta1_api_requests_total", (("route", "other"), ("status", "404")))] == 1
    assert samples[("eta1_api_errors_total", (("kind", "invalid_parameter"),))] == 1
    assert ("eta1_flows_read_total", ()) in samples


def test_api_metrics_registered_once_per_registry(unreachable_es):
    metrics = Metrics()
    first = DetectionApi(from_dict({}), unreachable_es, metrics, fake_detector)
    second = DetectionApi(from_dict({}), unreachable_es, metrics, fake_detector)
    assert first._api_metrics is second._api_metrics


def test_openapi_lists_served_routes(app):
    spec = yaml.safe_load(openapi_yaml())
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == set(app._routes)
    code, headers, body = call(app, "/openapi.json")
    assert code == 200
    assert json.loads(body) == spec


def test_json_body_has_no_nan():
    response = api_app.json_response(200, {"value": float("nan"), "nested": [float("inf")]})
    assert json.loads(response.body) == {"value": None, "nested": [None]}


def test_app_write_retries_exhausted_503(app, monkeypatch):
    def give_up(*args: Any, **kwargs: Any) -> None:
        raise StopRequested()

    monkeypatch.setattr(app, "_check_index", lambda index: None)
    monkeypatch.setattr(api_app, "run_scan", give_up)
    code, headers, body = call(app, SCAN_ROUTE, scan_query())
    data = json.loads(body)
    assert code == 503
    assert headers["Retry-After"] == "10"
    assert "writing alerts to Elasticsearch kept failing for 30 s" in data["message"]


def test_app_cluster_overloaded_503(app, monkeypatch):
    def overloaded(*args: Any, **kwargs: Any) -> None:
        meta = ApiResponseMeta(status=429, http_version="1.1", headers=HttpHeaders(), duration=0.0, node=None)
        raise ApiError("es_rejected_execution_exception", meta=meta, body={})

    monkeypatch.setattr(app, "_check_index", lambda index: None)
    monkeypatch.setattr(api_app, "run_scan", overloaded)
    code, _, body = call(app, SCAN_ROUTE, scan_query())
    assert code == 503
    assert "status 429" in json.loads(body)["message"]


def test_retry_budget_starts_at_first_failure():
    clock = iter([100.0, 110.0, 131.0])
    budget = RetryBudget(30.0, threading.Event(), clock=lambda: next(clock))
    assert budget.exhausted() is False
    assert budget.exhausted() is False
    assert budget.exhausted() is True


def test_retry_budget_stops_with_server():
    stopping = threading.Event()
    budget = RetryBudget(30.0, stopping)
    stopping.set()
    assert budget.exhausted() is True
