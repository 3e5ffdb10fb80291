"""The HTTP API against a real node and the shipped model, served by waitress on an ephemeral loopback port."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from elasticsearch import Elasticsearch
from prometheus_client.parser import text_string_to_metric_families

from sidecar.api import ApiServer, start_background_server
from sidecar.api_app import SCAN_ROUTE
from sidecar.config import Config, from_dict
from sidecar.detect import Detector
from sidecar.esclient import make_client
from sidecar.metrics import Metrics
from sidecar.pipeline import load_detector
from tests.flowdocs import create_flow_index, delete_indices, index_docs, sample_rows, stamp
from tests.test_api_validation import closed_port

pytestmark = pytest.mark.es

REPO_ROOT = Path(__file__).resolve().parent.parent
CST = timezone(timedelta(hours=8))
INDEX = "cic_20200804_apitest"
CLOSED_INDEX = "cic_20200804_apitest_closed"
ALIAS = "cic_20200804_apitest_alias"
ALERT_PATTERN = "eta1-alerts-apitest-*"
TEMPLATE = "eta1-alerts-apitest"
WINDOW_START = datetime(2020, 8, 4, 11, 25, tzinfo=CST)
WINDOW_END = datetime(2020, 8, 4, 11, 30, tzinfo=CST)
OLD_EXAMPLE = (
    f"index={INDEX}&start_time=2020-08-04T11:25:00.000000%2B08:00&end_time=2020-08-04T11:30:00.000000%2B08:00"
)


def make_config(es_url: str, **api: Any) -> Config:
    return from_dict({
        "cluster": {"hosts": [es_url]},
        "alerts": {"index": "eta1-alerts-apitest-%Y.%m.%d", "timezone": "+08:00", "template_name": TEMPLATE},
        "api": {"allowed_indices": "cic_20200804*", "max_window_seconds": 3600, **api},
    })


def get(server: ApiServer, path: str, query: str = "", method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Send one request with the query exactly as given, without re-encoding. Return status, headers and body."""
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.request(method, f"{path}?{query}" if query else path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def metric_samples(server: ApiServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = get(server, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def stored_alerts(es: Elasticsearch) -> list[dict[str, Any]]:
    es.options(ignore_status=404).indices.refresh(index=ALERT_PATTERN)
    response = es.options(ignore_status=404).search(
        index=ALERT_PATTERN, size=10000, query={"term": {"eta1.flow_index": INDEX}}
    )
    if response.meta.status == 404:
        return []
    return [hit["_source"] for hit in response["hits"]["hits"]]


@pytest.fixture(scope="module")
def config(es_url: str) -> Config:
    return make_config(es_url)


@pytest.fixture(scope="module")
def detector(config: Config) -> Detector:
    return load_detector(config)


@pytest.fixture(scope="module")
def flows(es: Elasticsearch, data_dir, detector: Detector) -> Iterator[dict[str, Any]]:
    """Index sample flows inside the window, plus two flagged flows just outside it. Return the expected alerts."""
    delete_indices(es, ALERT_PATTERN)
    inside = stamp(sample_rows(data_dir, per_file=6), WINDOW_START, timedelta(seconds=2))
    hits = [{"_index": INDEX, "_id": doc_id, "_source": doc} for doc_id, doc in inside]
    expected = {alert.document["flow_id"] for alert in detector.detect(hits).alerts}
    flagged = next(doc for doc_id, doc in inside if doc_id in expected)
    outside = [
        ("before", {**flagged, "@timestamp": "2020-08-04T03:24:59.999Z"}),
        ("at_end", {**flagged, "@timestamp": "2020-08-04T03:30:00.000Z"}),
    ]
    create_flow_index(es, INDEX)
    index_docs(es, INDEX, inside + outside)
    es.indices.put_alias(index=INDEX, name=ALIAS)
    create_flow_index(es, CLOSED_INDEX)
    es.indices.close(index=CLOSED_INDEX)
    yield {"docs": dict(inside), "expected": expected}
    for name in (INDEX, CLOSED_INDEX):
        es.options(ignore_status=404).indices.delete(index=name)
    delete_indices(es, ALERT_PATTERN)
    es.options(ignore_status=404).indices.delete_index_template(name=TEMPLATE)


@pytest.fixture(scope="module")
def server(config: Config, detector: Detector, flows) -> Iterator[ApiServer]:
    es = make_client(config.cluster)
    running = start_background_server(config, es, Metrics(), detector_source=lambda: detector, port=0)
    yield running
    running.shutdown()
    es.close()


@pytest.fixture(scope="module")
def cut_off_server(es_url: str, detector: Detector) -> Iterator[ApiServer]:
    """A server whose cluster URL is a loopback port where no process listens."""
    config = make_config(f"http://127.0.0.1:{closed_port()}")
    es = make_client(config.cluster)
    running = start_background_server(config, es, Metrics(), detector_source=lambda: detector, port=0)
    yield running
    running.shutdown()
    es.close()


@pytest.mark.parametrize(
    "query",
    [
        OLD_EXAMPLE,
        f"index={INDEX}&start_time=2020-08-04T11:25:00.000000%2B08:00&end_time=2020-08-04T11:30:00.00000%2B08:00",
        f"index={INDEX}&start_time=2020-08-04T11:25:00%2B08:00&end_time=2020-08-04T11:30:00%2B08:00",
        f"index={INDEX}&start_time=2020-08-04T03:25:00Z&end_time=2020-08-04T03:30:00.000000Z",
        f"index={INDEX}&start_time=2020-08-04T11:25:00.000000+08:00&end_time=2020-08-04T11:30:00.000000+08:00",
    ],
    ids=["old-example", "five-digit-fraction", "no-fraction", "utc-z", "unencoded-plus"],
)
def test_scan_old_request_shape(server, flows, query):
    status, headers, body = get(server, SCAN_ROUTE, query)
    report = json.loads(body)
    assert status == 200, report
    assert headers["Content-Type"] == "application/json"
    assert report["index"] == INDEX
    assert report["flows"] == len(flows["docs"])
    assert report["alerts"] == len(flows["expected"])
    assert report["alerts_created"] + report["alerts_already_present"] == len(flows["expected"])
    assert report["alerts_returned"] == len(flows["expected"])
    assert report["alerts_truncated"] is False
    assert report["alerts_cap"] == 1000
    returned = {document["flow_id"] for document in report["alert_documents"]}
    assert returned == flows["expected"]
    assert "before" not in returned
    assert "at_end" not in returned


def test_scan_alert_documents_match_flows(server, flows):
    _, _, body = get(server, SCAN_ROUTE, OLD_EXAMPLE)
    for document in json.loads(body)["alert_documents"][:20]:
        flow = flows["docs"][document["flow_id"]]
        assert document["_index"].startswith("eta1-alerts-apitest-2020.08.0")
        assert document["src_ip"] == flow["Src IP"]
        assert document["dest_port"] == int(flow["Dst Port"])
        assert document["log_time"].endswith("+08:00")
        assert document["alert"]["signature"].startswith("CSTI ETA1 - ATT&CK ")


def test_scan_repeated_one_alert_per_flow(server, flows, es):
    first = json.loads(get(server, SCAN_ROUTE, OLD_EXAMPLE)[2])
    second = json.loads(get(server, SCAN_ROUTE, OLD_EXAMPLE)[2])
    alerts = stored_alerts(es)
    flow_ids = [alert["flow_id"] for alert in alerts]
    assert len(flow_ids) == len(flows["expected"])
    assert set(flow_ids) == flows["expected"]
    assert second["alerts_created"] == 0
    assert second["alerts_already_present"] == len(flows["expected"])
    assert first["alerts"] == second["alerts"]


def test_scan_returned_documents_capped(es_url, detector, flows):
    config = make_config(es_url, max_alerts_returned=3)
    es = make_client(config.cluster)
    capped = start_background_server(config, es, Metrics(), detector_source=lambda: detector, port=0)
    try:
        report = json.loads(get(capped, SCAN_ROUTE, OLD_EXAMPLE)[2])
    finally:
        capped.shutdown()
        es.close()
    assert report["alerts_cap"] == 3
    assert report["alerts_returned"] == 3
    assert len(report["alert_documents"]) == 3
    assert report["alerts_truncated"] is True
    assert report["alerts"] == len(flows["expected"])


@pytest.mark.parametrize(
    ("query", "status", "kind", "message"),
    [
        ("", 400, "invalid_parameter", "missing query parameters index, start_time, end_time"),
        (f"index={INDEX}&start_time=2020-08-04T11:25:00&end_time=2020-08-04T11:30:00%2B08:00",
         400, "invalid_parameter", "has no UTC offset"),
        (f"index={INDEX}&start_time=2020-08-04T11:25:00%2B08:00&end_time=11:30",
         400, "invalid_parameter", "is not a valid time"),
        (f"index={INDEX}&start_time=2020-08-04T11:30:00%2B08:00&end_time=2020-08-04T11:25:00%2B08:00",
         400, "invalid_parameter", "is not before end_time"),
        (f"index={INDEX}&start_time=2020-08-04T11:25:00%2B08:00&end_time=2020-08-04T11:25:00%2B08:00",
         400, "invalid_parameter", "is not before end_time"),
        (f"index={INDEX}&start_time=2020-08-04T00:00:00%2B08:00&end_time=2020-08-05T00:00:00%2B08:00",
         400, "invalid_parameter", "longer than api.max_window_seconds"),
        ("index=cic_2020*&start_time=2020-08-04T11:25:00Z&end_time=2020-08-04T11:30:00Z",
         400, "invalid_index_name", "wildcards"),
        ("index=_all&start_time=2020-08-04T11:25:00Z&end_time=2020-08-04T11:30:00Z",
         400, "invalid_index_name", "reserved"),
        ("index=.security&start_time=2020-08-04T11:25:00Z&end_time=2020-08-04T11:30:00Z",
         400, "invalid_index_name", "hidden or system"),
        ("index=other:cic_20200804&start_time=2020-08-04T11:25:00Z&end_time=2020-08-04T11:30:00Z",
         400, "invalid_index_name", "remote cluster"),
        (f"index={ALIAS}&start_time=2020-08-04T11:25:00Z&end_time=2020-08-04T11:30:00Z",
         400, "invalid_index_name", "is an alias or data stream"),
        ("index=cic_20190101&start_time=2020-08-04T11:25:00Z&end_time=2020-08-04T11:30:00Z",
         403, "index_forbidden", "outside the indices this API may read (cic_20200804*)"),
        ("index=eta1-state&start_time=2020-08-04T11:25:00Z&end_time=2020-08-04T11:30:00Z",
         403, "index_forbidden", "api.allowed_indices"),
        ("index=cic_20200804_missing&start_time=2020-08-04T11:25:00Z&end_time=2020-08-04T11:30:00Z",
         404, "index_not_found", "does not exist"),
        (f"index={CLOSED_INDEX}&start_time=2020-08-04T11:25:00Z&end_time=2020-08-04T11:30:00Z",
         409, "index_closed", "is closed; open it"),
    ],
    ids=["missing", "no-offset", "bad-time", "reversed", "empty-window", "too-long", "wildcard", "all",
         "dot-prefix", "remote", "alias", "forbidden", "forbidden-state", "not-found", "closed"],
)
def test_scan_bad_input_status(server, query, status, kind, message):
    code, headers, body = get(server, SCAN_ROUTE, query)
    data = json.loads(body)
    assert code == status, data
    assert headers["Content-Type"] == "application/json"
    assert data["error"] == kind
    assert message in data["message"]


def test_wrong_method_and_route(server):
    code, headers, _ = get(server, SCAN_ROUTE, OLD_EXAMPLE, method="POST")
    assert code == 405
    assert headers["Allow"] == "GET"
    code, _, body = get(server, "/eta_attack/api/v1.0/")
    assert code == 404
    assert json.loads(body)["error"] == "route_not_found"


def test_metrics_move_after_scan(server, flows, es):
    delete_indices(es, ALERT_PATTERN)
    before = metric_samples(server)
    status, _, _ = get(server, SCAN_ROUTE, OLD_EXAMPLE)
    after = metric_samples(server)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert status == 200
    assert moved("eta1_flows_read_total") == len(flows["docs"])
    assert moved("eta1_api_requests_total", route=SCAN_ROUTE, status="200") == 1
    assert moved("eta1_batch_seconds_count") >= 1
    written = sum(after[key] - before.get(key, 0.0) for key in after if key[0] == "eta1_alerts_written_total")
    assert written == len(flows["expected"])
    assert ("eta1_cursor_lag_seconds", ()) in after


def test_healthz_ok(server, detector):
    code, _, body = get(server, "/healthz")
    data = json.loads(body)
    assert code == 200
    assert data["status"] == "ok"
    assert data["model_loaded"] is True
    assert data["model_sha256"] == detector.model.sha256
    assert data["cluster_reachable"] is True


def test_healthz_503_cluster_unreachable(cut_off_server):
    code, _, body = get(cut_off_server, "/healthz")
    data = json.loads(body)
    assert code == 503
    assert data["model_loaded"] is True
    assert data["cluster_reachable"] is False
    assert "unreachable" in data["cluster_error"]


def test_scan_503_cluster_unreachable(cut_off_server):
    code, headers, body = get(cut_off_server, SCAN_ROUTE, OLD_EXAMPLE)
    data = json.loads(body)
    assert code == 503
    assert int(headers["Retry-After"]) > 0
    assert data["retry_after_seconds"] == int(headers["Retry-After"])


def test_openapi_routes_all_answer(server):
    code, headers, body = get(server, "/openapi.yaml")
    assert code == 200
    assert headers["Content-Type"] == "application/yaml"
    spec = yaml.safe_load(body)
    assert spec["paths"]
    for path, operations in spec["paths"].items():
        assert set(operations) == {"get"}, path
        status, _, _ = get(server, path)
        assert str(status) in operations["get"]["responses"], (path, status)


def test_scan_concurrent_calls_safe(server, flows, es):
    calls = 6
    with ThreadPoolExecutor(max_workers=calls) as pool:
        results = list(pool.map(lambda _: get(server, SCAN_ROUTE, OLD_EXAMPLE), range(calls)))
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429}
    assert 200 in statuses
    for status, _, body in results:
        if status == 200:
            assert {document["flow_id"] for document in json.loads(body)["alert_documents"]} == flows["expected"]
    flow_ids = [alert["flow_id"] for alert in stored_alerts(es)]
    assert len(flow_ids) == len(set(flow_ids))
    assert set(flow_ids) == flows["expected"]


def test_serve_command_stops_on_sigterm(es_url, flows):
    environment = {**os.environ, "ETA1_CLUSTER__HOSTS": es_url, "ETA1_API__ALLOWED_INDICES": "cic_20200804*"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--port", "0"],
        cwd=REPO_ROOT, env=environment, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            match = re.search(r"HTTP API listening on (http://\S+)", line)
            url = match.group(1) if match else None
        assert url is not None, "eta1 serve did not report its address within 30 s"
        address = urlsplit(url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
