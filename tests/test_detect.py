"""Detection stage with a fake model: alert fields, thresholds and unusable flows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sidecar.alerts import alert_id, alert_index
from sidecar.detect import Detector
from tests.fakes import DOS_RULE, FakeModel, FakeRules

NOW = datetime(2020, 3, 23, 5, 24, 39, 144408, tzinfo=timezone.utc)
PLUS8 = timezone(timedelta(hours=8))


def hit(flow_id: str, duration, **extra):
    source = {
        "Flow Duration": duration,
        "Dst Port": 138,
        "Src Port": 138,
        "Src IP": "192.168.70.196",
        "Dst IP": "192.168.70.1",
        "Protocol": 6,
        "@timestamp": "2020-03-11T02:02:56.762791Z",
    }
    source.update(extra)
    return {"_index": "cic_20200311", "_id": flow_id, "_source": source, "sort": ["2020-03-11T02:02:56.762Z"]}


@pytest.fixture
def detector() -> Detector:
    return Detector(
        FakeModel(), FakeRules(), time_field="@timestamp",
        alert_index_pattern="eta1-alerts-%Y.%m.%d", local_tz=PLUS8,
    )


def test_alert_document_contract_fields(detector):
    outcome = detector.detect([hit("XyPZBXEBOI2XA3yCwRPD", 95)], now=NOW)
    assert len(outcome.alerts) == 1
    alert = outcome.alerts[0]
    doc = alert.document
    assert alert.index == "eta1-alerts-2020.03.11"
    assert alert.id == alert_id("cic_20200311", "XyPZBXEBOI2XA3yCwRPD", 20110002)
    assert doc["flow_id"] == "XyPZBXEBOI2XA3yCwRPD"
    assert doc["timestamp"] == "2020-03-23T13:24:39.144408+08:00"
    assert doc["ingest_timestamp"] == "2020-03-23T05:24:39.144408Z"
    assert doc["log_time"] == "2020-03-11T10:02:56.762791+08:00"
    assert doc["event_type"] == "alert"
    assert doc["alert"] == {
        "action": "N/A", "gid": 0, "signature_id": 20110002,
        "signature": "CSTI ETA1 - ATT&CK Endpoint Denial of Service - T1499",
        "category": "Endpoint Denial of Service", "severity": 10,
    }
    assert (doc["src_ip"], doc["dest_ip"]) == ("192.168.70.196", "192.168.70.1")
    assert (doc["src_port"], doc["dest_port"]) == (138, 138)
    assert doc["proto"] == "tcp"
    assert doc["module"] == "ETA-ATTACK"
    assert doc["in_iface"] == "[From Input]"
    assert doc["log_type"] == "traffic"
    assert doc["reference"] == "https://attack.mitre.org/techniques/T1499/"
    assert doc["dump_status"] == 0
    assert doc["eta1"]["confidence"] == pytest.approx(0.95)
    assert doc["eta1"]["model_sha256"] == "f" * 64


def test_below_threshold_raises_nothing(detector):
    outcome = detector.detect([hit("a", 79), hit("b", 80), hit("c", 5)], now=NOW)
    assert [alert.document["flow_id"] for alert in outcome.alerts] == ["b"]
    assert outcome.predicted == {"DoS": 2, "BENIGN": 1}


def test_garbage_flow_counted_rest_alerted(detector):
    hits = [hit("good1", 99), hit("bad", {"nested": 1}), hit("good2", "99"), hit("words", "lots")]
    outcome = detector.detect(hits, now=NOW)
    assert sorted(alert.document["flow_id"] for alert in outcome.alerts) == ["good1", "good2"]
    assert [flow_id for _, flow_id, _ in outcome.unusable] == ["bad", "words"]
    assert "invalid value" in outcome.unusable[0][2]
    assert "'Flow Duration'" in outcome.unusable[0][2]


def test_missing_time_falls_back_to_sort(detector):
    flow = hit("t", 99)
    del flow["_source"]["@timestamp"]
    outcome = detector.detect([flow], now=NOW)
    assert outcome.alerts[0].document["log_time"] == "2020-03-11T10:02:56.762000+08:00"


def test_time_with_offset_keeps_instant(detector):
    flow = hit("t", 99)
    flow["_source"]["@timestamp"] = "2020-03-11T10:02:56.762791+08:00"
    outcome = detector.detect([flow], now=NOW)
    assert outcome.alerts[0].document["log_time"] == "2020-03-11T10:02:56.762791+08:00"
    assert outcome.alerts[0].document["@timestamp"] == "2020-03-11T02:02:56.762791Z"


def test_unknown_protocol_number_kept(detector):
    outcome = detector.detect([hit("p", 99, Protocol=253)], now=NOW)
    assert outcome.alerts[0].document["proto"] == "253"


def test_rule_threshold_array_matches_rule(detector):
    assert list(detector._thresholds) == [float("inf"), pytest.approx(DOS_RULE.min_confidence)]


@pytest.mark.parametrize(
    "pattern",
    [
        "eta1-alerts-%Y.%m.%d",
        "eta1-alerts-%Y.%m.%d.%H",
        "eta1-alerts-%Y.%m.%d.%H%M",  # minutes: not reused per hour
        "eta1-alerts-%%M-%Y",  # a literal %M after %%
        "eta1-alerts-%G.W%V",
    ],
)
def test_alert_index_matches_strftime_across_a_day(pattern):
    start = datetime(2020, 12, 31, 22, 58, 30, tzinfo=PLUS8)
    for minute in range(0, 26 * 60, 7):
        moment = start + timedelta(minutes=minute)
        expected = moment.astimezone(timezone.utc).strftime(pattern).lower()
        assert alert_index(pattern, moment) == expected, (pattern, moment)


def test_batch_time_formatted_in_each_zone(detector):
    first = detector.detect([hit("a", 95)], now=NOW).alerts[0].document
    utc_detector = Detector(
        FakeModel(), FakeRules(), time_field="@timestamp", alert_index_pattern="x-%Y", local_tz=timezone.utc,
    )
    second = utc_detector.detect([hit("b", 95)], now=NOW).alerts[0].document
    later = detector.detect([hit("c", 95)], now=NOW + timedelta(seconds=1)).alerts[0].document
    assert first["timestamp"] == "2020-03-23T13:24:39.144408+08:00"
    assert second["timestamp"] == "2020-03-23T05:24:39.144408+00:00"
    assert first["ingest_timestamp"] == second["ingest_timestamp"] == "2020-03-23T05:24:39.144408Z"
    assert later["ingest_timestamp"] == "2020-03-23T05:24:40.144408Z"
