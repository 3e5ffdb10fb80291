"""Bulk writes refused for real: a mapping conflict (400) on one day's alert index, and 429 items from a proxy.

The policy under test is the README's Delivery guarantees. An item rejected
for good is logged with its flow id, counted and stored in the dead-letter
index, and the cursor moves on. A 429 item is retried alone until it is stored.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest
from elasticsearch import Elasticsearch

from sidecar.config import Config, from_dict
from sidecar.daemon import Daemon
from sidecar.pipeline import load_detector
from tests.flowdocs import create_flow_index, delete_indices, index_docs, sample_rows, stamp
from tests.http_proxy import bulk_fault_proxy
from tests.test_faults import alert_flow_ids, config_data, reset

pytestmark = pytest.mark.es

DAY_ONE = datetime(2017, 7, 3, 23, 59, 0, tzinfo=timezone.utc)
DEAD_LETTER = "eta1-dead-letter"


def two_day_docs(data_dir) -> list[tuple[str, dict]]:
    """Flows on both sides of midnight UTC, so their alerts go to two daily indices."""
    return stamp(sample_rows(data_dir, per_file=15), DAY_ONE, timedelta(seconds=1))


def expected_alerts(config: Config, index: str, docs) -> dict[str, tuple[str, str]]:
    """Alert id -> (flow id, alert index) for the given flows."""
    detector = load_detector(config)
    hits = [{"_index": index, "_id": doc_id, "_source": doc, "sort": [doc["@timestamp"]]} for doc_id, doc in docs]
    return {alert.id: (alert.document["flow_id"], alert.index) for alert in detector.detect(hits).alerts}


def dead_letters(es: Elasticsearch, alert_index: str) -> list[dict]:
    es.indices.refresh(index=DEAD_LETTER)
    response = es.search(index=DEAD_LETTER, size=1000, query={"term": {"alert_index": alert_index}})
    return [hit["_source"] for hit in response["hits"]["hits"]]


def stored_cursor_time(es: Elasticsearch, name: str) -> datetime:
    state = es.get(index="eta1-state-test", id=name)["_source"]
    return datetime.fromisoformat(state["cursor"]["time"].replace("Z", "+00:00"))


def last_time(docs) -> datetime:
    last = max(datetime.fromisoformat(doc["@timestamp"].replace("Z", "+00:00")) for _, doc in docs)
    return last.replace(microsecond=last.microsecond // 1000 * 1000)


def test_mapping_conflict_dead_letters_and_moves_on(es, es_url, index_name, data_dir, caplog) -> None:
    name = "writes-conflict"
    reset(es, name)
    docs = two_day_docs(data_dir)
    create_flow_index(es, index_name)
    index_docs(es, index_name, docs)
    config = from_dict(config_data(es_url, index_name, name, batch_size=25))
    expected = expected_alerts(config, index_name, docs)
    day_one_index = f"eta1-alerts-{name}-2017.07.03"
    doomed = {alert_id for alert_id, (_, index) in expected.items() if index == day_one_index}
    assert doomed and len(doomed) < len(expected), "the flows must give alerts on both days"
    # An operator's index for day one whose src_ip is a number: every alert for that day fails with 400.
    es.indices.create(index=day_one_index, mappings={"properties": {"src_ip": {"type": "long"}}})
    for alert_id in doomed:  # left from an earlier run (the bare test node has no _delete_by_query)
        es.options(ignore_status=404).delete(index=DEAD_LETTER, id=f"{day_one_index}:{alert_id}")
    daemon = Daemon(config, es)

    with caplog.at_level(logging.ERROR, logger="sidecar.sink"):
        totals = daemon.run(until_idle=True)

    assert totals.dead_lettered == len(doomed)
    assert daemon.metrics.alerts_dead_lettered._value.get() == len(doomed)
    assert totals.alerts_created == len(expected) - len(doomed)
    assert set(alert_flow_ids(es, name)) == {expected[a][0] for a in expected if a not in doomed}
    letters = dead_letters(es, day_one_index)
    assert {letter["alert_id"] for letter in letters} == doomed
    assert {letter["status"] for letter in letters} == {400}
    assert {letter["flow_id"] for letter in letters} == {expected[a][0] for a in doomed}
    assert all("src_ip" in letter["reason"] for letter in letters)
    logged = [record.getMessage() for record in caplog.records if "rejected by" in record.getMessage()]
    assert len(logged) == len(doomed)
    for alert_id in doomed:
        assert any(f"for flow {expected[alert_id][0]} " in line for line in logged)
    assert stored_cursor_time(es, name) == last_time(docs), "the cursor must reach the last flow"

    # A second run finds nothing new: dead letters are not retried forever.
    again = Daemon(config, es).run(until_idle=True)
    assert again.flows == 0
    assert again.dead_lettered == 0
    delete_indices(es, f"eta1-alerts-{name}-*")
    reset(es, name)


def test_429_items_retried_alone(es, es_url, index_name, data_dir, caplog) -> None:
    name = "writes-429"
    reset(es, name)
    docs = two_day_docs(data_dir)
    create_flow_index(es, index_name)
    index_docs(es, index_name, docs)
    config = from_dict(config_data(es_url, index_name, name, batch_size=25))
    expected = expected_alerts(config, index_name, docs)
    # Every third alert is refused twice with 429, then accepted.
    chosen = set(sorted(expected)[::3])
    refusals: dict[str, int] = {}

    def reject(index: str, doc_id: str) -> bool:
        if doc_id not in chosen or refusals.get(doc_id, 0) >= 2:
            return False
        refusals[doc_id] = refusals.get(doc_id, 0) + 1
        return True

    with bulk_fault_proxy(es_url, reject) as (proxy_url, faults):
        client = Elasticsearch(proxy_url, request_timeout=30)
        daemon = Daemon(config, client)
        daemon.sink.backoff.initial = 0.05
        with caplog.at_level(logging.WARNING, logger="sidecar.sink"):
            totals = daemon.run(until_idle=True)
        client.close()

    alert_bulks = [bulk for bulk in faults.bulks if bulk.items and all(kind == "create" for kind, _, _ in bulk.items)]
    assert refusals == {alert_id: 2 for alert_id in chosen}
    assert totals.alerts_created == len(expected)
    assert totals.alerts_existing == 0, "a 429 item was written although the node never saw it"
    assert totals.dead_lettered == 0
    assert daemon.metrics.batches_retried._value.get() >= 2
    for previous, retried in zip(alert_bulks, alert_bulks[1:]):
        if previous.rejected:
            # The request after a partly refused one carries exactly the refused items.
            assert [doc_id for _, _, doc_id in retried.items] == previous.rejected
    sent = [doc_id for bulk in alert_bulks for _, _, doc_id in bulk.items]
    assert len(sent) == len(expected) + 2 * len(chosen)
    flow_ids = alert_flow_ids(es, name)
    assert len(flow_ids) == len(set(flow_ids))
    assert set(flow_ids) == {flow_id for flow_id, _ in expected.values()}
    assert stored_cursor_time(es, name) == last_time(docs)
    assert "rejected by the test proxy" in caplog.text
    delete_indices(es, f"eta1-alerts-{name}-*")
    reset(es, name)

