"""Bad flow documents and bad files: every flow is predicted or counted unusable, and bad files fail at load.

Unit tests run the real model through sidecar.detect.Detector on plain hit
dicts. The tests marked ``es`` run the daemon and the CLI against a real node.
Model and rules errors already covered in test_model.py and test_rules.py are
not repeated here; these cover the daemon, the CLI and reload.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import Config, from_dict
from sidecar.daemon import Daemon
from sidecar.detect import BatchOutcome, Detector
from sidecar.pipeline import load_detector
from tests.flowdocs import create_flow_index, delete_indices, index_docs, sample_rows, stamp

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_RULES = REPO_ROOT / "rules.yaml"
SHIPPED_MODEL = REPO_ROOT / "models" / "eta1.onnx"
BASE = datetime(2017, 7, 7, 10, 0, tzinfo=timezone.utc)
INDEX = "cic_badinput"

# Values that must not crash detection or spoil the rest of the page, by label.
BAD_VALUES: dict[str, Any] = {
    "null": None,
    "string": "abc",
    "infinity": "Infinity",
    "negative": -5,
    "huge": 1e308,
    "huge_string": "1e400",
    "nested": {"value": 1},
    "list": [1, 2],
    "boolean": True,
    "empty_string": "",
}


def config_for(index: str = INDEX, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "source": {"index": index, "lag_seconds": 0},
        "alerts": {"index": "eta1-alerts-badinput-%Y.%m.%d", "template_name": "eta1-alerts-badinput"},
        "state": {"index": "eta1-state-test", "name": "badinput", "lease_seconds": 30},
        "model": str(SHIPPED_MODEL),
        "rules": str(SHIPPED_RULES),
        "batch_size": 50,
        "poll_interval_seconds": 0.1,
    }
    data.update(overrides)
    return from_dict(data)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return load_detector(config_for())


@pytest.fixture(scope="module")
def docs(data_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    return stamp(sample_rows(data_dir, per_file=6), BASE, timedelta(seconds=1))


def hits_of(docs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"_index": INDEX, "_id": doc_id, "_source": doc} for doc_id, doc in docs]


def attack_doc(detector: Detector, docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Return a flow the model alerts on, to spoil in the tests."""
    outcome = detector.detect(hits_of(docs))
    alerted = {alert.document["flow_id"] for alert in outcome.alerts}
    return next(doc for doc_id, doc in docs if doc_id in alerted)


def bad_variants(detector: Detector, base: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """Spoiled copies of one attack flow, each with an id naming the spoiling."""
    feature = detector.model.features[1]
    variants: list[tuple[str, dict[str, Any] | None]] = []
    for label, value in BAD_VALUES.items():
        variants.append((f"bad_{label}", {**base, feature: value}))
    variants.append(("bad_missing_field", {key: value for key, value in base.items() if key != feature}))
    variants.append(("bad_all_features_null", {**base, **{name: None for name in detector.model.features}}))
    variants.append(("bad_extra_fields", {**base, "zz extra": {"deep": [1, {"x": None}]}, "Label2": "?"}))
    variants.append(("bad_empty_source", {}))
    variants.append(("bad_none_source", None))
    variants.append(("bad_no_time", {key: value for key, value in base.items() if key != "@timestamp"}))
    variants.append(("bad_time_garbage", {**base, "@timestamp": "yesterday"}))
    return variants


def accounted(outcome: BatchOutcome, total: int) -> None:
    """Assert that every flow got a prediction or was counted unusable, and not both."""
    time_problems = [item for item in outcome.unusable if item[2].startswith("invalid time")]
    feature_problems = len(outcome.unusable) - len(time_problems)
    assert sum(outcome.predicted.values()) + feature_problems == total


def test_bad_flows_leave_batch_alone(detector, docs) -> None:
    clean = detector.detect(hits_of(docs))
    base = attack_doc(detector, docs)
    spoiled = bad_variants(detector, base)
    mixed = hits_of(docs) + [{"_index": INDEX, "_id": flow_id, "_source": source} for flow_id, source in spoiled]

    outcome = detector.detect(mixed)

    good_ids = {doc_id for doc_id, _ in docs}
    good_alerts = {a.id: a.document["alert"]["signature"] for a in outcome.alerts if a.document["flow_id"] in good_ids}
    assert good_alerts == {a.id: a.document["alert"]["signature"] for a in clean.alerts}
    accounted(outcome, len(mixed))


@pytest.mark.parametrize("label", [*BAD_VALUES, "missing_field", "all_features_null", "extra_fields",
                                   "empty_source", "none_source", "no_time", "time_garbage"])
def test_bad_flow_accounted(detector, docs, label: str) -> None:
    base = attack_doc(detector, docs)
    flow_id, source = next(item for item in bad_variants(detector, base) if item[0] == f"bad_{label}")

    outcome = detector.detect([{"_index": INDEX, "_id": flow_id, "_source": source}])

    alerted = [alert.document["flow_id"] for alert in outcome.alerts]
    unusable = [(index, unusable_id) for index, unusable_id, _ in outcome.unusable]
    assert alerted == [flow_id] or sum(outcome.predicted.values()) == 1 or unusable == [(INDEX, flow_id)]
    assert not (alerted and unusable), "a flow got an alert and was counted unusable"
    accounted(outcome, 1)


@pytest.mark.parametrize(("label", "reason"), [
    ("string", "invalid value: 'abc' is not a number"),
    ("nested", "invalid value: dict where a number belongs"),
    ("list", "invalid value: list where a number belongs"),
    ("empty_source", "too many missing features"),
    ("none_source", "too many missing features"),
    ("all_features_null", "too many missing features"),
    ("no_time", "invalid time"),
    ("time_garbage", "invalid time"),
])
def test_unusable_reason_and_log(detector, docs, caplog, label: str, reason: str) -> None:
    base = attack_doc(detector, docs)
    flow_id, source = next(item for item in bad_variants(detector, base) if item[0] == f"bad_{label}")

    with caplog.at_level(logging.WARNING, logger="sidecar.detect"):
        outcome = detector.detect([{"_index": INDEX, "_id": flow_id, "_source": source}])

    assert len(outcome.unusable) == 1
    assert outcome.unusable[0][1] == flow_id
    assert outcome.unusable[0][2].startswith(reason)
    assert f"{INDEX}/{flow_id}: {reason}" in caplog.text


@pytest.mark.parametrize("label", ["null", "infinity", "huge", "huge_string", "negative", "boolean",
                                   "missing_field", "extra_fields", "empty_string"])
def test_odd_numbers_still_predicted(detector, docs, label: str) -> None:
    base = attack_doc(detector, docs)
    flow_id, source = next(item for item in bad_variants(detector, base) if item[0] == f"bad_{label}")

    outcome = detector.detect([{"_index": INDEX, "_id": flow_id, "_source": source}])

    assert outcome.unusable == []
    assert sum(outcome.predicted.values()) == 1


# -- bad files: the CLI refuses at start-up; reload keeps the old files ------


def write_config(tmp_path: Path, es_url: str, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "cluster": {"hosts": [es_url], "request_timeout": 5},
        "source": {"index": INDEX, "lag_seconds": 0},
        "alerts": {"index": "eta1-alerts-badinput-%Y.%m.%d", "template_name": "eta1-alerts-badinput"},
        "state": {"index": "eta1-state-test", "name": "badinput", "lease_seconds": 30},
        "model": str(SHIPPED_MODEL),
        "rules": str(SHIPPED_RULES),
    }
    data.update(overrides)
    path = tmp_path / "eta1.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def shipped_rules_with(old: str, new: str) -> str:
    text = SHIPPED_RULES.read_text()
    assert old in text, f"{old!r} is no longer in rules.yaml; update this test"
    return text.replace(old, new, 1)


def bad_files(tmp_path: Path) -> dict[str, tuple[dict[str, str], str]]:
    """Broken model and rules files, with the config keys that select them and the expected stderr."""
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(SHIPPED_MODEL.read_bytes()[:4000])
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"PK\x03\x04 this is a zip file, not ONNX")
    cases = {
        "truncated_model": ({"model": str(truncated)}, r"truncated\.onnx: not a loadable ONNX model.*re-create it"),
        "foreign_model": ({"model": str(foreign)}, r"foreign\.onnx: not a loadable ONNX model.*re-create it"),
    }
    rule_edits = {
        "bad_yaml": (("benign_classes: [BENIGN]", "benign_classes: [BENIGN"), r"rules\.yaml:\d+: invalid YAML"),
        "missing_class": (("benign_classes: [BENIGN]", "benign_classes: []"), r"rules\.yaml.*'BENIGN'.*"),
        "duplicate_signature": (("signature_id: 20110001", "signature_id: 20110002"),
                                r"rules\.yaml:\d+: .*20110002"),
        "bad_technique": (("technique_id: T1498", "technique_id: T9999"), r"rules\.yaml:\d+: .*T9999"),
    }
    for label, ((old, new), expected) in rule_edits.items():
        path = tmp_path / label / "rules.yaml"
        path.parent.mkdir()
        path.write_text(shipped_rules_with(old, new))
        cases[label] = ({"rules": str(path)}, expected)
    return cases


BAD_FILE_CASES = ["truncated_model", "foreign_model", "bad_yaml", "missing_class", "duplicate_signature",
                  "bad_technique"]


@pytest.mark.es
@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("case", BAD_FILE_CASES)
def test_cli_refuses_bad_file(tmp_path, es_url, case: str, command: str) -> None:
    overrides, expected = bad_files(tmp_path)[case]
    config = write_config(tmp_path, es_url, **overrides)
    args = [sys.executable, "-m", "sidecar.cli", command, "--config", str(config), "--log-level", "ERROR"]
    if command == "run":
        args.append("--until-idle")

    result = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    if command == "run":
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("eta1 run: error: ")
        assert "Traceback" not in result.stderr
        text = lines[0]
    else:
        text = result.stdout
        assert "FAIL" in text
    import re

    assert re.search(expected, text), text


def mismatched_index(es, index: str, drop: list[str]) -> None:
    """A flow index whose mapping lacks some model features."""
    from tests.flowdocs import NUMERIC_TYPES

    create_flow_index(es, index)
    es.indices.delete(index=index)
    properties = {name: spec for name, spec in NUMERIC_TYPES.items() if name not in drop}
    properties["@timestamp"] = {"type": "date"}
    es.indices.create(index=index, mappings={"dynamic": False, "properties": properties})


@pytest.mark.es
@pytest.mark.parametrize("command", ["run", "check"])
def test_cli_refuses_model_index_mismatch(tmp_path, es, es_url, command: str) -> None:
    index = "cic_badinput_mismatch"
    dropped = ["Flow Duration", "Fwd IAT Total"]
    mismatched_index(es, index, dropped)
    config = write_config(tmp_path, es_url, source={"index": index, "lag_seconds": 0},
                          state={"index": "eta1-state-test", "name": f"mismatch-{command}"})
    args = [sys.executable, "-m", "sidecar.cli", command, "--config", str(config), "--log-level", "ERROR"]
    if command == "run":
        args.append("--until-idle")
    try:
        result = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    finally:
        es.options(ignore_status=404).indices.delete(index=index)
        es.options(ignore_status=404).delete(index="eta1-state-test", id=f"mismatch-{command}")

    assert result.returncode == 1, result.stdout + result.stderr
    text = result.stderr if command == "run" else result.stdout
    for name in dropped:
        assert repr(name) in text
    assert index in text
    if command == "run":
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.es
def test_reload_keeps_old_rules(tmp_path, es, es_url, docs, caplog) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(SHIPPED_RULES.read_text())
    config = config_for(cluster={"hosts": [es_url]}, rules=str(rules),
                        state={"index": "eta1-state-test", "name": "badinput-reload", "lease_seconds": 30})
    delete_indices(es, "eta1-alerts-badinput-*")
    es.options(ignore_status=404).delete(index="eta1-state-test", id="badinput-reload")
    create_flow_index(es, INDEX)
    index_docs(es, INDEX, docs[: len(docs) // 2])
    daemon = Daemon(config, es)
    try:
        daemon.run(until_idle=True)
        first = daemon.detector

        rules.write_text(shipped_rules_with("benign_classes: [BENIGN]", "benign_classes: [BENIGN"))
        with caplog.at_level(logging.ERROR, logger="sidecar.daemon"):
            daemon.reload_requested.set()
            index_docs(es, INDEX, docs[len(docs) // 2:])
            daemon.stop_event.clear()
            totals = daemon.run(until_idle=True)

        assert daemon.detector is first
        assert "reload rejected" in caplog.text
        assert str(rules) in caplog.text
        assert totals.flows == len(docs), "the second run read the second half"
        expected = {a.id for a in first.detect(hits_of(docs)).alerts}
        es.indices.refresh(index="eta1-alerts-badinput-*")
        stored = es.search(index="eta1-alerts-badinput-*", size=1000, _source=False)["hits"]["hits"]
        assert {hit["_id"] for hit in stored} == expected

        rules.write_text(SHIPPED_RULES.read_text())
        assert daemon.reload() is True
        assert daemon.detector is not first
    finally:
        es.options(ignore_status=404).indices.delete(index=INDEX)
        delete_indices(es, "eta1-alerts-badinput-*")
        es.options(ignore_status=404).delete(index="eta1-state-test", id="badinput-reload")


def clear_daemon_state(es, index: str, state_name: str) -> None:
    """Delete a test's flow index, its alert indices and its checkpoint."""
    es.options(ignore_status=404).indices.delete(index=index)
    delete_indices(es, "eta1-alerts-badinput-*")
    es.options(ignore_status=404).delete(index="eta1-state-test", id=state_name)


def create_numeric_flow_index(es, index: str, settings: dict[str, Any] | None = None) -> None:
    """Create a flow index that maps only the features (as numbers) and @timestamp."""
    from tests.flowdocs import NUMERIC_TYPES

    es.indices.create(index=index, settings=settings or {},
                      mappings={"dynamic": False, "properties": {**NUMERIC_TYPES, "@timestamp": {"type": "date"}}})


@pytest.mark.es
def test_daemon_run_with_bad_flows(es, es_url, docs, detector) -> None:
    index = "cic_badinput_daemon"
    base = attack_doc(detector, docs)
    spoiled = [(flow_id, {**(source or {}), "@timestamp": base["@timestamp"]})
               for flow_id, source in bad_variants(detector, base)
               # No index stores these; the unit tests above cover them.
               if flow_id not in ("bad_no_time", "bad_time_garbage", "bad_none_source", "bad_nested")]
    config = config_for(index, cluster={"hosts": [es_url]},
                        state={"index": "eta1-state-test", "name": "badinput-daemon", "lease_seconds": 30})
    clear_daemon_state(es, index, "badinput-daemon")
    # ignore_malformed stores the bad values as sent.
    create_numeric_flow_index(es, index, settings={"index.mapping.ignore_malformed": True})
    try:
        index_docs(es, index, docs + spoiled)
        daemon = Daemon(config, es)
        totals = daemon.run(until_idle=True)

        assert totals.flows == len(docs) + len(spoiled)
        hits = [{"_index": index, "_id": flow_id, "_source": source} for flow_id, source in docs + spoiled]
        expected = detector.detect(hits)
        assert totals.unusable == len(expected.unusable)
        es.indices.refresh(index="eta1-alerts-badinput-*")
        stored = es.search(index="eta1-alerts-badinput-*", size=1000, _source=["flow_id"])["hits"]["hits"]
        assert sorted(hit["_id"] for hit in stored) == sorted(a.id for a in expected.alerts)
        clean = [{"_index": index, "_id": flow_id, "_source": source} for flow_id, source in docs]
        assert {a.id for a in detector.detect(clean).alerts} <= {hit["_id"] for hit in stored}
    finally:
        clear_daemon_state(es, index, "badinput-daemon")


@pytest.mark.es
def test_daemon_reads_json_orjson_rejects(es, es_url, docs, detector) -> None:
    """Check that JSON orjson rejects does not fail a page of the daemon's own client."""
    from sidecar.esclient import FastJsonSerializer, make_client

    index = "cic_badinput_json"
    config = config_for(index, cluster={"hosts": [es_url]},
                        state={"index": "eta1-state-test", "name": "badinput-json", "lease_seconds": 30})
    # Neither odd field is mapped, so both stay in _source as sent. Elasticsearch returns a lone
    # surrogate as bytes that are not UTF-8.
    surrogate = {**docs[1][1], "zz note": "\ud800"}
    # orjson rejects a number beyond a double's range. A Python float cannot hold the literal 1e400,
    # so this document is sent as text.
    big_number = json.dumps(docs[0][1])[:-1] + ', "zz note": 1e400}'
    clear_daemon_state(es, index, "badinput-json")
    create_numeric_flow_index(es, index)
    try:
        index_docs(es, index, [*docs, ("odd_surrogate", surrogate)])
        es.index(index=index, id="odd_big_number", document=big_number, refresh=True)
        client = make_client(config.cluster)
        assert isinstance(client.transport.serializers.get_serializer("application/json"), FastJsonSerializer)

        raw = client.search(index=index, query={"ids": {"values": ["odd_big_number", "odd_surrogate"]}})
        notes = sorted(str(hit["_source"]["zz note"]) for hit in raw["hits"]["hits"])
        assert notes == ["inf", "\ud800"]

        totals = Daemon(config, client).run(until_idle=True)
        assert totals.flows == len(docs) + 2
        assert totals.unusable == 0
    finally:
        clear_daemon_state(es, index, "badinput-json")
