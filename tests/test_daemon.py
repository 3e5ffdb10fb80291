"""The daemon against a real node: every flagged flow alerted once, across restarts and page boundaries."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sidecar.config import from_dict
from sidecar.daemon import Daemon
from sidecar.pipeline import load_detector
from sidecar.source import Cursor, FlowReader
from sidecar.timeutil import parse_time
from tests.flowdocs import create_flow_index, delete_indices, index_docs, sample_rows, stamp

pytestmark = pytest.mark.es

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE = datetime(2017, 7, 5, 18, 12, 15, 650811, tzinfo=timezone.utc)


def make_config(index: str, name: str, **sections):
    data = {
        "source": {"index": index, "lag_seconds": 0, **sections.pop("source", {})},
        "alerts": {"index": f"eta1-alerts-{name}-%Y.%m.%d", "timezone": "+08:00", "template_name": f"eta1-alerts-{name}"},
        "state": {"index": "eta1-state-test", "name": name, "lease_seconds": 30},
        "batch_size": sections.pop("batch_size", 97),
        "poll_interval_seconds": 0.1,
    }
    data.update(sections)
    return from_dict(data)


def alerts_in(es, name: str) -> list[dict]:
    pattern = f"eta1-alerts-{name}-*"
    es.options(ignore_status=404).indices.refresh(index=pattern)
    response = es.options(ignore_status=404).search(index=pattern, size=10000, query={"match_all": {}})
    if response.meta.status == 404:
        return []
    return [hit["_source"] for hit in response["hits"]["hits"]]


def cleanup(es, name: str) -> None:
    delete_indices(es, f"eta1-alerts-{name}-*")
    es.options(ignore_status=404).delete(index="eta1-state-test", id=name)
    es.options(ignore_status=404).indices.delete_index_template(name=f"eta1-alerts-{name}")


def expected_alert_flow_ids(config, index: str, docs) -> set[str]:
    detector = load_detector(config)
    hits = [{"_index": index, "_id": doc_id, "_source": doc, "sort": [doc["@timestamp"]]} for doc_id, doc in docs]
    return {alert.document["flow_id"] for alert in detector.detect(hits).alerts}


@pytest.fixture(scope="module")
def sample(data_dir):
    return sample_rows(data_dir, per_file=40)


def test_every_flagged_flow_alerted_once(es, index_name, sample):
    name = "once"
    cleanup(es, name)
    docs = stamp(sample, BASE, timedelta(milliseconds=1))
    create_flow_index(es, index_name)
    index_docs(es, index_name, docs)
    config = make_config(index_name, name)
    expected = expected_alert_flow_ids(config, index_name, docs)
    assert len(expected) > 100, "the sample should contain many attack flows"

    totals = Daemon(config, es).run(until_idle=True)

    alerts = alerts_in(es, name)
    flow_ids = [alert["flow_id"] for alert in alerts]
    assert totals.flows == len(docs)
    assert len(flow_ids) == len(set(flow_ids))
    assert set(flow_ids) == expected
    assert totals.alerts_created == len(expected)

    by_id = dict(docs)
    for alert in alerts[:50]:
        flow = by_id[alert["flow_id"]]
        assert alert["src_ip"] == flow["Src IP"]
        assert alert["dest_ip"] == flow["Dst IP"]
        assert alert["src_port"] == int(flow["Src Port"])
        assert alert["dest_port"] == int(flow["Dst Port"])
        assert alert["proto"] == {6: "tcp", 17: "udp", 1: "icmp", 0: "hopopt"}[int(flow["Protocol"])]
        flow_time = datetime.fromisoformat(flow["@timestamp"])
        assert datetime.fromisoformat(alert["log_time"]) == flow_time
        assert alert["log_time"].endswith("+08:00")
        assert alert["event_type"] == "alert"
        assert alert["module"] == "ETA-ATTACK"
        technique = alert["alert"]["signature"].rsplit(" - ", 1)[1]
        assert alert["reference"].startswith(f"https://attack.mitre.org/techniques/{technique.split('.')[0]}/")
        assert alert["alert"]["signature"].startswith("CSTI ETA1 - ATT&CK ")
        assert alert["ingest_timestamp"].endswith("Z")
        assert 0.0 < alert["eta1"]["confidence"] <= 1.0

    state = es.get(index="eta1-state-test", id=name)["_source"]
    last = max(datetime.fromisoformat(doc["@timestamp"]) for _, doc in docs)
    # Date fields keep milliseconds, so the cursor contains the last time truncated to them.
    assert parse_time(state["cursor"]["time"]) == last.replace(microsecond=last.microsecond // 1000 * 1000)
    cleanup(es, name)


def test_restart_mid_run_no_loss_no_duplicate(es, index_name, sample):
    name = "restart"
    cleanup(es, name)
    docs = stamp(sample, BASE, timedelta(microseconds=300))
    create_flow_index(es, index_name)
    index_docs(es, index_name, docs)
    config = make_config(index_name, name, batch_size=50)
    expected = expected_alert_flow_ids(config, index_name, docs)

    crashing = Daemon(config, es)
    real_save = crashing.checkpoint.save
    calls = {"n": 0}

    def save_then_crash(cursor, now=None):
        calls["n"] += 1
        if calls["n"] == 4:
            # Alerts of this page are written, its cursor is not: the replay case.
            raise KeyboardInterrupt("simulated crash before the checkpoint write")
        real_save(cursor, now)

    crashing.checkpoint.save = save_then_crash
    with pytest.raises(KeyboardInterrupt):
        crashing.run(until_idle=True)
    partial = alerts_in(es, name)
    assert 0 < len(partial) < len(expected)

    resumed = Daemon(config, es)
    totals = resumed.run(until_idle=True)

    flow_ids = [alert["flow_id"] for alert in alerts_in(es, name)]
    assert len(flow_ids) == len(set(flow_ids))
    assert set(flow_ids) == expected
    assert totals.flows < len(docs), "the restart should resume, not start over"
    assert totals.alerts_existing > 0, "the page without a checkpoint should be replayed"
    cleanup(es, name)


@pytest.mark.parametrize("use_pit", [True, False])
def test_page_boundary_in_equal_timestamps(es, index_name, sample, use_pit):
    rows = (sample * 3)[:250]
    docs = [(f"same{position}", {**row, "@timestamp": "2017-07-05T18:12:15.650Z"}) for position, row in enumerate(rows)]
    docs += [(f"later{position}", {**rows[position], "@timestamp": "2017-07-05T18:12:16.000Z"}) for position in range(30)]
    create_flow_index(es, index_name)
    index_docs(es, index_name, docs)

    reader = FlowReader(es, index_name, time_field="@timestamp", page_size=100, use_pit=use_pit)
    seen: list[str] = []
    cursor_after_first = None
    for page in reader.pages(Cursor()):
        seen.extend(hit["_id"] for hit in page.hits)
        cursor_after_first = cursor_after_first or page.cursor
    assert len(seen) == len(docs)
    assert len(set(seen)) == len(docs)

    # A restart after the first page (no point-in-time survives it).
    fresh = FlowReader(es, index_name, time_field="@timestamp", page_size=100, use_pit=use_pit)
    rest = [hit["_id"] for page in fresh.pages(cursor_after_first) for hit in page.hits]
    assert len(rest) == len(docs) - 100
    assert set(rest) | set(seen[:100]) == {doc_id for doc_id, _ in docs}
    assert not set(rest) & set(seen[:100])


def test_garbage_flow_counted_rest_alerted(es, index_name, sample, caplog):
    name = "garbage"
    cleanup(es, name)
    attacks = [row for row in sample if row["Label"] == "DoS Hulk"][:20]
    docs = stamp(attacks, BASE, timedelta(milliseconds=5))
    garbage_id, garbage = docs[3]
    garbage["Flow Duration"] = "lots"
    sparse_id, sparse = docs[7]
    for key in list(sparse)[:70]:
        if key not in ("@timestamp", "Src IP", "Dst IP"):
            sparse.pop(key)
    # Numbers mapped with ignore_malformed keep the bad value in _source, as a
    # careless exporter's index would.
    create_flow_index(es, index_name)
    es.indices.close(index=index_name)
    es.indices.put_settings(index=index_name, settings={"index.mapping.ignore_malformed": True})
    es.indices.open(index=index_name)
    index_docs(es, index_name, docs)
    config = make_config(index_name, name, batch_size=1000)
    expected = expected_alert_flow_ids(config, index_name, [d for d in docs if d[0] not in (garbage_id, sparse_id)])

    daemon = Daemon(config, es)
    with caplog.at_level(logging.WARNING, logger="sidecar.detect"):
        totals = daemon.run(until_idle=True)

    assert totals.unusable == 2
    assert garbage_id in caplog.text
    assert "'lots' is not a number" in caplog.text
    flow_ids = {alert["flow_id"] for alert in alerts_in(es, name)}
    assert flow_ids == expected
    assert len(expected) >= 15
    assert daemon.metrics.flows_unusable.labels(reason="invalid value")._value.get() == 1
    cleanup(es, name)


def test_late_flow_inside_lag_picked_up(es, index_name, sample):
    name = "late"
    cleanup(es, name)
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    rows = sample[:3]
    create_flow_index(es, index_name)
    index_docs(es, index_name, [
        ("early", {**rows[0], "@timestamp": (now - timedelta(seconds=100)).isoformat()}),
        ("recent", {**rows[1], "@timestamp": (now - timedelta(seconds=10)).isoformat()}),
    ])
    config = make_config(index_name, name, source={"lag_seconds": 30})

    first = Daemon(config, es, clock=lambda: now).run(until_idle=True)
    assert first.flows == 1

    # Arrives after "recent" was indexed, with an older time, but inside the lag.
    index_docs(es, index_name, [("late", {**rows[2], "@timestamp": (now - timedelta(seconds=50)).isoformat()})])
    second = Daemon(config, es, clock=lambda: now).run(until_idle=True)
    assert second.flows == 1

    third = Daemon(config, es, clock=lambda: now + timedelta(seconds=60)).run(until_idle=True)
    assert third.flows == 1
    state = es.get(index="eta1-state-test", id=name)["_source"]
    assert state["cursor"]["seen"] == [{"index": index_name, "ids": ["recent"]}]
    cleanup(es, name)


def test_dry_run_leaves_checkpoint_alone(es, index_name, sample):
    name = "dryrun"
    cleanup(es, name)
    docs = stamp(sample[:60], BASE, timedelta(milliseconds=1))
    create_flow_index(es, index_name)
    index_docs(es, index_name, docs)
    config = make_config(index_name, name)

    dry = Daemon(config, es, dry_run=True).run(until_idle=True)
    assert alerts_in(es, name) == []
    real = Daemon(config, es).run(until_idle=True)

    assert dry.flows == len(docs)
    assert sum(dry.by_signature.values()) > 0
    assert real.flows == len(docs), "a dry run must not move the stored cursor"
    assert real.alerts_created == sum(dry.by_signature.values())
    cleanup(es, name)


def test_time_field_not_date_refused(es, index_name):
    from sidecar.errors import SchemaError

    es.options(ignore_status=404).indices.delete(index=index_name)
    es.indices.create(index=index_name, mappings={"properties": {"@timestamp": {"type": "keyword"}}})
    config = make_config(index_name, "keywordtime")
    with pytest.raises(SchemaError, match=r"maps the time field '@timestamp' as keyword, not date"):
        Daemon(config, es).run(until_idle=True)
