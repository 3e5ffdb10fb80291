"""Slow and dropped connections between the daemon and the node, through a TCP proxy of the test's own.

The proxy delays some replies beyond cluster.request_timeout and cuts
others mid-reply, after the node has acted on the request. The daemon must
retry, find the alerts it already wrote (create answers 409), and end with
exactly one alert per flagged flow and the cursor at the last flow.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from sidecar.config import from_dict
from sidecar.daemon import Daemon
from sidecar.esclient import make_client
from tests.flowdocs import create_flow_index, index_docs, sample_rows, stamp
from tests.tcp_proxy import tcp_proxy
from tests.test_faults import alert_flow_ids, config_data, expected_flow_ids, reset

pytestmark = pytest.mark.es

BASE = datetime(2017, 7, 5, 9, 0, tzinfo=timezone.utc)
FAULTY_REQUESTS = 60


def fault(number: int) -> str:
    """Requests 0-5 work; of the next ones, one in seven is delayed and one in seven cut; after 60, all work."""
    if number < 6 or number >= FAULTY_REQUESTS:
        return "pass"
    if number % 7 == 2:
        return "delay"
    if number % 7 == 5:
        return "cut"
    return "pass"


def test_slow_and_cut_connections(es, es_url, index_name, data_dir, caplog) -> None:
    name = "network"
    reset(es, name)
    docs = stamp(sample_rows(data_dir, per_file=30), BASE, timedelta(milliseconds=11))
    create_flow_index(es, index_name)
    index_docs(es, index_name, docs)

    with tcp_proxy(es_url, fault, delay_seconds=2.5) as proxy:
        data = config_data(proxy.url, index_name, name, batch_size=20)
        data["cluster"]["request_timeout"] = 1
        config = from_dict(data)
        expected = expected_flow_ids(config, index_name, docs)
        client = make_client(config.cluster)
        daemon = Daemon(config, client)
        daemon.backoff.initial = daemon.sink.backoff.initial = 0.1
        with caplog.at_level(logging.WARNING):
            totals = daemon.run(until_idle=True)
        client.close()
        applied = dict(proxy.applied)

    assert applied.get("delay", 0) >= 3, applied
    assert applied.get("cut", 0) >= 3, applied
    flow_ids = alert_flow_ids(es, name)
    assert len(flow_ids) == len(set(flow_ids)), "an alert was written twice"
    assert set(flow_ids) == expected
    assert totals.flows >= len(docs)
    state = es.get(index="eta1-state-test", id=name)["_source"]
    last = max(datetime.fromisoformat(doc["@timestamp"].replace("Z", "+00:00")) for _, doc in docs)
    assert state["cursor"]["time"] == last.strftime("%Y-%m-%dT%H:%M:%S.") + f"{last.microsecond // 1000:03d}Z"
    assert "two daemons share one state.name" not in caplog.text, "a retried checkpoint write was taken for a rival"
    reset(es, name)


def test_lost_checkpoint_reply_not_a_rival(es) -> None:
    from sidecar.checkpoint import Checkpoint
    from sidecar.errors import CursorConflictError
    from sidecar.source import Cursor

    name = "network-lost-reply"
    es.options(ignore_status=404).delete(index="eta1-state-test", id=name)
    checkpoint = Checkpoint(es, index="eta1-state-test", name=name, source_index="cic_x", time_field="@timestamp",
                            lease_seconds=30)
    checkpoint.ensure_index()
    assert checkpoint.try_acquire() is None
    cursor = Cursor(time="2017-07-05T09:00:00.000Z", seen={"cic_x": ["f1"]})
    # The write lands on the node, but its reply never reaches the daemon.
    checkpoint._write(cursor, datetime.now(timezone.utc))

    checkpoint.save(cursor)

    assert checkpoint.cursor == cursor
    stored = es.get(index="eta1-state-test", id=name)
    assert stored["_source"]["owner"] == checkpoint.owner
    # A write by another owner is still a conflict.
    rival = Checkpoint(es, index="eta1-state-test", name=name, source_index="cic_x", time_field="@timestamp",
                       lease_seconds=30)
    es.index(index="eta1-state-test", id=name, document={**stored["_source"], "owner": rival.owner})
    with pytest.raises(CursorConflictError, match="two daemons share one state.name"):
        checkpoint.save(cursor)
    es.options(ignore_status=404).delete(index="eta1-state-test", id=name)
