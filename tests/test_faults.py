"""Faults injected for real: SIGKILL loops against the daemon process, and a node that goes away."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from elasticsearch import Elasticsearch

from sidecar.config import from_dict
from sidecar.daemon import Daemon
from sidecar.pipeline import load_detector
from tests import es_node
from tests.flowdocs import create_flow_index, delete_indices, index_docs, sample_rows, stamp

pytestmark = pytest.mark.es

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE = datetime(2017, 7, 6, 9, 0, 0, tzinfo=timezone.utc)


def config_data(es_url: str, index: str, name: str, batch_size: int = 50) -> dict:
    return {
        "cluster": {"hosts": [es_url], "request_timeout": 10},
        "source": {"index": index, "lag_seconds": 0},
        "alerts": {"index": f"eta1-alerts-{name}-%Y.%m.%d", "template_name": f"eta1-alerts-{name}"},
        "state": {"index": "eta1-state-test", "name": name, "lease_seconds": 30},
        "model": str(REPO_ROOT / "models" / "eta1.onnx"),
        "rules": str(REPO_ROOT / "rules.yaml"),
        "batch_size": batch_size,
        "poll_interval_seconds": 0.2,
    }


def expected_flow_ids(config, index: str, docs) -> set[str]:
    detector = load_detector(config)
    hits = [{"_index": index, "_id": doc_id, "_source": doc, "sort": [doc["@timestamp"]]} for doc_id, doc in docs]
    return {alert.document["flow_id"] for alert in detector.detect(hits).alerts}


def alert_flow_ids(es: Elasticsearch, name: str) -> list[str]:
    pattern = f"eta1-alerts-{name}-*"
    es.options(ignore_status=404).indices.refresh(index=pattern)
    ids: list[str] = []
    search_after = None
    while True:
        body = {"size": 5000, "sort": [{"flow_id": "asc"}], "_source": ["flow_id"]}
        if search_after:
            body["search_after"] = search_after
        response = es.options(ignore_status=404).search(index=pattern, **body)
        if response.meta.status == 404:
            return ids
        hits = response["hits"]["hits"]
        if not hits:
            return ids
        ids.extend(hit["_source"]["flow_id"] for hit in hits)
        search_after = hits[-1]["sort"]


def reset(es: Elasticsearch, name: str) -> None:
    delete_indices(es, f"eta1-alerts-{name}-*")
    es.options(ignore_status=404).delete(index="eta1-state-test", id=name)
    es.options(ignore_status=404).indices.delete_index_template(name=f"eta1-alerts-{name}")


def checkpoint_version(es: Elasticsearch, name: str) -> int:
    response = es.options(ignore_status=404).get(index="eta1-state-test", id=name)
    return -1 if response.meta.status == 404 else int(response["_seq_no"])


def test_sigkill_loop_loses_and_duplicates_nothing(es, es_url, index_name, data_dir, tmp_path):
    name = "crashloop"
    reset(es, name)
    rows = sample_rows(data_dir, per_file=2500)
    docs = stamp(rows, BASE, timedelta(milliseconds=3))
    create_flow_index(es, index_name)
    index_docs(es, index_name, docs)
    data = config_data(es_url, index_name, name, batch_size=10)
    config_path = tmp_path / "eta1.yaml"
    config_path.write_text(yaml.safe_dump(data))
    expected = expected_flow_ids(from_dict(data), index_name, docs)

    command = [sys.executable, "-m", "sidecar.cli", "run", "--config", str(config_path), "--until-idle"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(20171)
    kills = 0
    progress = []
    for _ in range(20):
        before = checkpoint_version(es, name)
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        # Kill at a random moment after the run has stored at least one checkpoint.
        deadline = time.monotonic() + 60
        while process.poll() is None and checkpoint_version(es, name) <= before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.2))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=30)
        progress.append(len(alert_flow_ids(es, name)))

    final = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]

    flow_ids = alert_flow_ids(es, name)
    assert len(flow_ids) == len(set(flow_ids)), "an alert was written twice"
    assert set(flow_ids) == expected
    assert kills == 20, f"only {kills} of 20 runs were killed mid-run; make the index larger"
    state = es.get(index="eta1-state-test", id=name)["_source"]
    last = max(datetime.fromisoformat(doc["@timestamp"]) for _, doc in docs)
    stored = datetime.fromisoformat(state["cursor"]["time"].replace("Z", "+00:00"))
    assert stored == last.replace(microsecond=last.microsecond // 1000 * 1000)
    assert progress == sorted(progress), "alerts must only accumulate across restarts"
    reset(es, name)


def test_cluster_outage_recovers_and_logs_once(tmp_path, data_dir, caplog):
    if es_node.es_url_from_env():
        pytest.skip("needs a node of its own to stop and start; unset ETA1_ES_URL")
    home = tmp_path / "outage-node"
    url, stop = es_node.start_node(home)
    port = int(url.rsplit(":", 1)[1])
    es = Elasticsearch(url, request_timeout=30)
    name = "outage"
    index = "cic_outage"
    try:
        rows = sample_rows(data_dir, per_file=60)
        docs = stamp(rows, BASE, timedelta(milliseconds=7))
        create_flow_index(es, index)
        index_docs(es, index, docs)
        config = from_dict(config_data(url, index, name, batch_size=40))
        expected = expected_flow_ids(config, index, docs)

        from sidecar.esclient import make_client

        daemon = Daemon(config, make_client(config.cluster))
        restarted = threading.Event()
        saves = {"n": 0}
        real_save = daemon.checkpoint.save
        holder: dict = {}

        def restart_later() -> None:
            time.sleep(60)
            holder["url"], holder["stop"] = es_node.start_node(home, port=port)
            restarted.set()

        def save_and_cut(cursor, now=None):
            real_save(cursor, now)
            saves["n"] += 1
            if saves["n"] == 5:
                stop()
                threading.Thread(target=restart_later, daemon=True).start()

        daemon.checkpoint.save = save_and_cut
        with caplog.at_level(logging.WARNING):
            totals = daemon.run(until_idle=True)
        assert restarted.is_set(), "the daemon finished before the node came back"

        flow_ids = alert_flow_ids(es, name)
        assert len(flow_ids) == len(set(flow_ids))
        assert set(flow_ids) == expected
        assert totals.flows >= len(docs)
        outage_lines = [r for r in caplog.records if "retrying with backoff" in r.getMessage()]
        recovery_lines = [r for r in caplog.records if "succeeded again after" in r.getMessage()]
        assert 1 <= len(outage_lines) <= 2, [r.getMessage() for r in outage_lines]
        assert len(recovery_lines) == len(outage_lines)
        attempts = (daemon.metrics.errors.labels(kind="cluster_unavailable")._value.get()
                    + daemon.metrics.batches_retried._value.get())
        assert attempts > len(outage_lines), "the outage should have taken several attempts"
    finally:
        es.close()
        if "stop" in holder:
            holder["stop"]()
        stop()
