"""Flow times in UTC, with offsets and without; alerts rendered in fixed offsets and IANA zones, across DST changes.

A time without an offset is UTC, as Elasticsearch reads it. Each flow gets
exactly one alert whatever its time looks like, and ``log_time`` is that
instant rendered in alerts.timezone, with the offset in force at that instant.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sidecar.config import Config, from_dict
from sidecar.daemon import Daemon
from sidecar.pipeline import load_detector
from tests.flowdocs import create_flow_index, delete_indices, index_docs, sample_rows
from tests.test_faults import reset

REPO_ROOT = Path(__file__).resolve().parent.parent
# US daylight saving starts 2024-03-10 at 02:00 EST (07:00 UTC); EU summer time ends 2024-10-27 at 01:00 UTC.
US_SWITCH = datetime(2024, 3, 10, 7, 0, tzinfo=timezone.utc)
EU_SWITCH = datetime(2024, 10, 27, 1, 0, tzinfo=timezone.utc)
STYLES = ("utc_z", "plus8", "naive")


def config_for(index: str, name: str, zone: str, es_url: str = "http://127.0.0.1:9") -> Config:
    return from_dict({
        "cluster": {"hosts": [es_url]},
        "source": {"index": index, "lag_seconds": 0},
        "alerts": {"index": f"eta1-alerts-{name}-%Y.%m.%d", "timezone": zone, "template_name": f"eta1-alerts-{name}"},
        "state": {"index": "eta1-state-test", "name": name, "lease_seconds": 30},
        "model": str(REPO_ROOT / "models" / "eta1.onnx"),
        "rules": str(REPO_ROOT / "rules.yaml"),
        "batch_size": 7,
        "poll_interval_seconds": 0.1,
    })


def render(moment: datetime, style: str) -> str:
    """Write one instant as a flow exporter might: with Z, with +08:00, or with no offset (meaning UTC)."""
    utc = moment.astimezone(timezone.utc)
    if style == "utc_z":
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if style == "plus8":
        return utc.astimezone(timezone(timedelta(hours=8))).isoformat(timespec="microseconds")
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds")


@pytest.fixture(scope="module")
def attack_rows(data_dir: Path) -> list[dict[str, Any]]:
    """Sample rows the shipped model alerts on."""
    rows = sample_rows(data_dir, per_file=10)
    detector = load_detector(config_for("cic_tz", "tz", "+08:00"))
    hits = [{"_index": "cic_tz", "_id": str(n), "_source": {**row, "@timestamp": "2024-01-01T00:00:00Z"}}
            for n, row in enumerate(rows)]
    alerted = {alert.document["flow_id"] for alert in detector.detect(hits).alerts}
    picked = [rows[int(flow_id)] for flow_id in sorted(alerted, key=int)]
    assert len(picked) >= 20
    return picked


def flows_around(rows: list[dict[str, Any]], switch: datetime, count: int, step: timedelta) -> list[tuple[str, dict, datetime]]:
    """count flows centred on the switch, cycling through the three time styles; returns (id, doc, instant)."""
    out = []
    start = switch - step * (count // 2) + timedelta(microseconds=123456)
    for position in range(count):
        moment = start + step * position
        style = STYLES[position % len(STYLES)]
        doc = {**rows[position % len(rows)], "@timestamp": render(moment, style)}
        out.append((f"{style}-{position}", doc, moment))
    return out


def expected_log_times(flows: list[tuple[str, dict, datetime]], zone: str) -> dict[str, str]:
    tz = ZoneInfo(zone) if "/" in zone else timezone(timedelta(hours=int(zone[:3]), minutes=int(zone[4:])))
    return {flow_id: moment.astimezone(tz).isoformat(timespec="microseconds") for flow_id, _, moment in flows}


@pytest.mark.parametrize("zone", ["+08:00", "America/New_York", "Europe/Berlin", "+00:00"])
@pytest.mark.parametrize("switch", [US_SWITCH, EU_SWITCH], ids=["us-spring", "eu-autumn"])
def test_log_time_unit(attack_rows, zone: str, switch: datetime) -> None:
    flows = flows_around(attack_rows, switch, 30, timedelta(minutes=7))
    detector = load_detector(config_for("cic_tz", "tz", zone))
    hits = [{"_index": "cic_tz", "_id": flow_id, "_source": doc} for flow_id, doc, _ in flows]

    outcome = detector.detect(hits)

    got = {alert.document["flow_id"]: alert.document["log_time"] for alert in outcome.alerts}
    assert got == expected_log_times(flows, zone)
    assert outcome.unusable == []


def test_new_york_offsets_switch(attack_rows) -> None:
    flows = flows_around(attack_rows, US_SWITCH, 12, timedelta(minutes=20))
    detector = load_detector(config_for("cic_tz", "tz", "America/New_York"))
    outcome = detector.detect([{"_index": "cic_tz", "_id": i, "_source": d} for i, d, _ in flows])
    instants = {flow_id: moment for flow_id, _, moment in flows}

    offsets = {alert.document["log_time"][-6:] for alert in outcome.alerts
               if instants[alert.document["flow_id"]] < US_SWITCH}
    after = {alert.document["log_time"][-6:] for alert in outcome.alerts
             if instants[alert.document["flow_id"]] >= US_SWITCH}
    assert offsets == {"-05:00"}
    assert after == {"-04:00"}


def test_alert_index_day_is_utc(attack_rows) -> None:
    # 23:30 at -05:00 is the next day in UTC; the alert index follows UTC, not the local zone.
    moment = datetime(2024, 3, 9, 23, 30, tzinfo=ZoneInfo("America/New_York"))
    doc = {**attack_rows[0], "@timestamp": moment.isoformat()}
    detector = load_detector(config_for("cic_tz", "tz", "America/New_York"))
    alert = detector.detect([{"_index": "cic_tz", "_id": "x", "_source": doc}]).alerts[0]
    assert alert.index == "eta1-alerts-tz-2024.03.10"
    assert alert.document["log_time"] == "2024-03-09T23:30:00.000000-05:00"
    assert alert.document["@timestamp"] == "2024-03-10T04:30:00.000000Z"


@pytest.mark.es
@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Berlin"], ids=["new_york", "berlin"])
@pytest.mark.parametrize("switch", [US_SWITCH, EU_SWITCH], ids=["us-spring", "eu-autumn"])
def test_daemon_across_switch(es, es_url, index_name, attack_rows, zone: str, switch: datetime) -> None:
    name = "tz-" + zone.split("/")[1].lower()
    reset(es, name)
    # Two hours either side of the switch, a flow every 97 s, in mixed time styles, over pages of 7.
    flows = flows_around(attack_rows, switch, 150, timedelta(seconds=97))
    create_flow_index(es, index_name)
    index_docs(es, index_name, [(flow_id, doc) for flow_id, doc, _ in flows])
    config = config_for(index_name, name, zone, es_url)
    try:
        totals = Daemon(config, es).run(until_idle=True)

        es.indices.refresh(index=f"eta1-alerts-{name}-*")
        hits = es.search(index=f"eta1-alerts-{name}-*", size=1000, _source=["flow_id", "log_time"])["hits"]["hits"]
        flow_ids = [hit["_source"]["flow_id"] for hit in hits]
        assert totals.flows == len(flows)
        assert totals.alerts_existing == 0
        assert len(flow_ids) == len(set(flow_ids)), "a flow was alerted twice"
        assert {hit["_source"]["flow_id"]: hit["_source"]["log_time"] for hit in hits} == expected_log_times(flows, zone)
    finally:
        delete_indices(es, f"eta1-alerts-{name}-*")
        reset(es, name)
