"""Fuzz the HTTP API from its OpenAPI description, and try to reach an index outside api.allowed_indices.

schemathesis generates valid and invalid requests from sidecar/openapi.yaml
and calls the WSGI app in-process against a real node. Every response must
match the description, and none may be a 500. A real ``secret_flows``
index holds attack flows with marker values: no response may contain them,
and no alert may be written for them, whatever the index parameter looks like.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote
from wsgiref.util import setup_testing_defaults

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from sidecar.api_app import SCAN_ROUTE, DetectionApi
from sidecar.config import from_dict
from sidecar.metrics import Metrics
from sidecar.pipeline import load_detector
from tests.flowdocs import create_flow_index, delete_indices, index_docs, sample_rows, stamp

pytestmark = pytest.mark.es

ALLOWED = "cic_fuzz_20200804"
SECRET = "secret_flows"
ALERTS = "eta1-alerts-fuzz-*"
MARKER_IP = "10.66.77.88"
MARKER_ID = "SECRETFLOW"
START = datetime(2020, 8, 4, 11, 25, tzinfo=timezone(timedelta(hours=8)))
WINDOW = "start_time=2020-08-04T11:25:00.000000%2B08:00&end_time=2020-08-04T11:30:00.000000%2B08:00"
FUZZ_SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def app(es, es_url, data_dir) -> Iterator[DetectionApi]:
    rows = sample_rows(data_dir, per_file=5)
    create_flow_index(es, ALLOWED)
    index_docs(es, ALLOWED, stamp(rows, START, timedelta(seconds=1)))
    create_flow_index(es, SECRET)
    secret = [(f"{MARKER_ID}-{flow_id}", {**doc, "Src IP": MARKER_IP})
              for flow_id, doc in stamp(rows, START, timedelta(seconds=1))]
    index_docs(es, SECRET, secret)
    delete_indices(es, ALERTS)
    config = from_dict({
        "cluster": {"hosts": [es_url]},
        "source": {"index": "cic_*"},
        "alerts": {"index": "eta1-alerts-fuzz-%Y.%m.%d", "template_name": "eta1-alerts-fuzz"},
        "api": {"max_window_seconds": 3600},
    })
    detector = load_detector(config)
    yield DetectionApi(config, es, Metrics(), lambda: detector)
    for index in (ALLOWED, SECRET):
        es.options(ignore_status=404).indices.delete(index=index)
    delete_indices(es, ALERTS)
    es.options(ignore_status=404).indices.delete_index_template(name="eta1-alerts-fuzz")


def call(app: DetectionApi, query: str, path: str = SCAN_ROUTE) -> tuple[int, bytes]:
    """Call the WSGI app with the query string exactly as given."""
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
                               "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[int] = []
    body = b"".join(app(environ, lambda line, headers: status.append(int(line.split()[0]))))
    return status[0], body


def no_secret_reached(es, body: bytes) -> None:
    assert MARKER_IP.encode() not in body
    assert MARKER_ID.encode() not in body
    es.options(ignore_status=404).indices.refresh(index=ALERTS)
    leaked = es.options(ignore_status=404).count(
        index=ALERTS, query={"bool": {"should": [{"term": {"eta1.flow_index": SECRET}},
                                                 {"term": {"src_ip": MARKER_IP}}]}}
    )
    assert leaked.get("count", 0) == 0


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_openapi_fuzz(app, es, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    checked = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and not operation.query:
            continue  # nothing to make invalid in a route without parameters

        @given(case=operation.as_strategy(generation_mode=mode))
        @FUZZ_SETTINGS
        def run(case: Any) -> None:
            response = case.call()
            assert response.status_code < 500 or response.status_code == 503, response.text[:500]
            # A time that is a string but not a valid time, or a window that is too long, is a documented 400
            # that the schema cannot express, so "schema-valid data is accepted" does not apply.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
            no_secret_reached(es, response.content or b"")

        run()
        checked += 1
    assert checked >= 1


LOOKALIKES = ["\u0441", "\u0131", "\uff0a", "\u2024", "\uff0c", "\u2215", "\u00a0", "\u200b", "\u0000"]


PIECES = [*"cic_sert*,?-:/\\.<>{}%+&= ", *LOOKALIKES, "_all", "secret_flows", "%2F", "%2e%2e", "%00", "%2C", "%2A"]


@given(name=st.lists(st.sampled_from(PIECES), max_size=10).map("".join))
@FUZZ_SETTINGS
def test_index_names_fuzz(app, es, name: str) -> None:
    for raw in (name, quote(name, safe=""), "cic_" + name, f"cic_{name}{SECRET}"):
        status, body = call(app, f"index={raw}&{WINDOW}")
        assert status in (200, 400, 403, 404), body[:300]
        no_secret_reached(es, body)


TRICKS = [
    "cic_*", "cic_*,secret_flows", "cic_a,secret_flows", "*,-x", "*", "_all", "secret_flows", "secret*",
    "remote:secret_flows", "<secret_flows>", "<cic_{now/d}>", "cic_fuzz_20200804/../secret_flows",
    "cic_fuzz_20200804%2F..%2Fsecret_flows", "cic_%2e%2e%2Fsecret_flows", "%2e%2e", "cic_fuzz_20200804%00secret_flows",
    "cic_fuzz_20200804%2Csecret_flows", "cic_fuzz_20200804,secret_flows", "cic_fuzz_2020080%2A",
    "c\u0131c_x", "cic_\uff0a", "cic\u2024secret_flows", "cic_fuzz_20200804\u200b",
    "cic_fuzz_20200804&index=secret_flows", "secret_flows&index=cic_fuzz_20200804", "cic_x%26index%3Dsecret_flows",
    "cic_fuzz_20200804%20secret_flows", "cic_fuzz_20200804+secret_flows", "-secret_flows", "+secret_flows",
    "cic_fuzz_20200804/_search", "cic_fuzz_20200804#", "cic_fuzz_20200804?q=*", "CIC_FUZZ_20200804",
    "cic_fuzz_20200804%252Fsecret_flows", "cic_" + "a" * 300, "cic_fuzz_20200804%ZZ",
]


@pytest.mark.parametrize("index", TRICKS)
def test_index_tricks_rejected(app, es, index: str) -> None:
    status, body = call(app, f"index={index}&{WINDOW}")

    assert status in (400, 403, 404), body[:300]
    no_secret_reached(es, body)


@pytest.mark.parametrize("index", [ALLOWED, "%63ic_fuzz_20200804"], ids=["plain", "percent_encoded"])
def test_allowed_index_still_scans(app, es, index: str) -> None:
    status, body = call(app, f"index={index}&{WINDOW}")

    assert status == 200, body[:300]
    assert b'"flows": ' in body or b'"flows":' in body
    no_secret_reached(es, body)
