"""rules.yaml: the shipped file, alert decisions, and one small invalid file per validation error (with its line)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from convert.dataset import DEFAULT_CLASSES
from sidecar.errors import RulesError
from sidecar.rules import (
    TECHNIQUE_ID,
    RulesValidationError,
    load_attack_techniques,
    load_rules,
    reference_url,
    signature_text,
)
from tests.helpers_model import SHIPPED_RULES, SHIPPED_XGB

# A small fake ATT&CK table, so validation tests do not depend on the pinned copy.
FAKE_TECHNIQUES = {
    "T1499": "Endpoint Denial of Service",
    "T1046": "Network Service Discovery",
    "T1071.001": "Application Layer Protocol: Web Protocols",
}

VALID = """\
prefix: CSTI ETA1
benign_classes: [BENIGN]
rules:
  - class: DoS
    technique_id: T1499
    technique_name: Endpoint Denial of Service
    signature_id: 20110002
    severity: 10
    min_confidence: 0.9
  - class: PortScan
    technique_id: T1046
    technique_name: Network Service Discovery
    signature_id: 20110003
    severity: 5
    min_confidence: 0.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, **kwargs):
    return load_rules(write(tmp_path, text), techniques=FAKE_TECHNIQUES, **kwargs)


# --- the shipped rules file ------------------------------------------------------


def test_shipped_rules_load() -> None:
    rules = load_rules(SHIPPED_RULES, collect_errors=True)
    assert rules.prefix == "CSTI ETA1"
    assert rules.benign_classes == {"BENIGN"}


def test_shipped_endpoint_dos_keeps_old_signature() -> None:
    rule = load_rules(SHIPPED_RULES).rule_for("DoS")
    assert rule is not None
    assert rule.signature_id == 20110002
    assert rule.signature == "CSTI ETA1 - ATT&CK Endpoint Denial of Service - T1499"
    assert rule.severity == 10
    assert rule.reference == "https://attack.mitre.org/techniques/T1499/"
    assert rule.technique_name == "Endpoint Denial of Service"


def test_shipped_rules_cover_default_classes() -> None:
    rules = load_rules(SHIPPED_RULES)
    rules.check_classes([c.name for c in DEFAULT_CLASSES])
    assert rules.rule_for("BENIGN") is None


def test_shipped_rules_cover_shipped_model() -> None:
    meta = SHIPPED_XGB.with_name("eta1.meta.json")
    if not meta.is_file():
        pytest.skip("no shipped model; run `eta1 train`")
    classes = json.loads(meta.read_text(encoding="utf-8"))["classes"]
    load_rules(SHIPPED_RULES).check_classes(classes)


def test_shipped_references_name_signature_technique() -> None:
    rules = load_rules(SHIPPED_RULES)
    for rule in rules.rules.values():
        assert rule.signature.endswith(f" - {rule.technique_id}"), rule
        assert rule.reference == reference_url(rule.technique_id), rule
        path_id = rule.reference.removeprefix("https://attack.mitre.org/techniques/").rstrip("/").replace("/", ".")
        assert path_id == rule.technique_id, rule


def test_shipped_mapping_matches_attack_facts() -> None:
    rules = load_rules(SHIPPED_RULES)
    expected = {
        "DoS": "T1499",
        "DDoS": "T1498",
        "PortScan": "T1046",
        "BruteForce": "T1110",
        "Exploit": "T1190",
        "XSS": "T1189",
        "Botnet": "T1071.001",
        "Infiltration": "T1204.002",
    }
    for class_name, technique_id in expected.items():
        rule = rules.rule_for(class_name)
        assert rule is not None, class_name
        assert rule.technique_id == technique_id, class_name


def test_sub_technique_reference_url() -> None:
    assert reference_url("T1071.001") == "https://attack.mitre.org/techniques/T1071/001/"
    assert signature_text("P", "T1071.001", "Application Layer Protocol: Web Protocols") == (
        "P - ATT&CK Application Layer Protocol: Web Protocols - T1071.001"
    )


def test_attack_table_is_well_formed() -> None:
    table = load_attack_techniques()
    source = json.loads(
        (Path(__file__).resolve().parent.parent / "sidecar" / "attack_techniques.json").read_text(encoding="utf-8")
    )["source"]
    assert re.search(r"version \d+", source)
    assert len(table) >= 40
    for technique_id, name in table.items():
        assert TECHNIQUE_ID.fullmatch(technique_id), technique_id
        if "." in technique_id:
            parent = technique_id.split(".")[0]
            assert parent in table, technique_id
            assert name.startswith(table[parent] + ": "), technique_id
    for technique_id in ("T1499", "T1499.002", "T1498", "T1498.001", "T1046", "T1110", "T1110.001",
                         "T1190", "T1189", "T1071", "T1071.001", "T1204", "T1204.002"):
        assert technique_id in table, technique_id


# --- decisions ------------------------------------------------------------------


def test_thresholds_inf_for_benign(tmp_path) -> None:
    rules = load(tmp_path, VALID)
    thresholds = rules.thresholds(["BENIGN", "DoS", "PortScan"])
    assert thresholds.dtype == np.float32
    assert np.isinf(thresholds[0])
    assert thresholds[1] == np.float32(0.9)
    assert thresholds[2] == np.float32(0.5)


def test_decide_alerts_at_threshold(tmp_path) -> None:
    rules = load(tmp_path, VALID)
    probabilities = np.array(
        [
            [0.1, 0.9, 0.0],  # DoS exactly at 0.9: alert
            [0.2, 0.8, 0.0],  # DoS below 0.9: no alert
            [1.0, 0.0, 0.0],  # benign: never
            [0.4, 0.0, 0.6],  # PortScan above 0.5: alert
        ],
        dtype=np.float32,
    )
    decisions = rules.decide(probabilities, ["BENIGN", "DoS", "PortScan"])
    assert decisions.alert.tolist() == [True, False, False, True]
    assert decisions.predicted.tolist() == [1, 1, 0, 2]


def test_decide_rejects_wrong_width(tmp_path) -> None:
    rules = load(tmp_path, VALID)
    with pytest.raises(ValueError, match=r"expected \(n, 3\)"):
        rules.decide(np.zeros((2, 2), dtype=np.float32), ["BENIGN", "DoS", "PortScan"])


def test_check_classes_names_missing_class(tmp_path) -> None:
    rules = load(tmp_path, VALID)
    with pytest.raises(RulesError, match=r"rules\.yaml:3: model class\(es\) \['Botnet'\] have no rule"):
        rules.check_classes(["BENIGN", "DoS", "Botnet"])


def test_rule_for_unknown_class_raises(tmp_path) -> None:
    rules = load(tmp_path, VALID)
    with pytest.raises(RulesError, match="neither a rule nor an entry in benign_classes"):
        rules.rule_for("Botnet")


def test_extra_rule_for_absent_class_is_allowed(tmp_path) -> None:
    rules = load(tmp_path, VALID)
    rules.check_classes(["BENIGN", "DoS"])
    assert rules.rule_for("PortScan") is not None


# --- validation errors: one small file per case ----------------------------------


def with_rule_line(line_number: int, old: str, new: str) -> str:
    lines = VALID.splitlines()
    assert old in lines[line_number - 1], (line_number, lines[line_number - 1])
    lines[line_number - 1] = lines[line_number - 1].replace(old, new)
    return "\n".join(lines) + "\n"


ERROR_CASES = [
    pytest.param(
        VALID + "colour: blue\n", r"rules\.yaml:16: unknown key 'colour' in the rules file", id="unknown-top-key"
    ),
    pytest.param(
        with_rule_line(8, "severity: 10", "severity: 10\n    colour: blue"),
        r"rules\.yaml:9: unknown key 'colour' in a rule",
        id="unknown-rule-key",
    ),
    pytest.param(
        VALID.replace("    severity: 5\n", ""), r"rules\.yaml:10: missing key 'severity' in a rule", id="missing-rule-key"
    ),
    pytest.param(
        VALID.replace("prefix: CSTI ETA1\n", ""), r"rules\.yaml:1: missing key 'prefix' in the rules file", id="missing-top-key"
    ),
    pytest.param(
        with_rule_line(5, "T1499", "T149"), r"rules\.yaml:5: technique_id 'T149' is not an ATT&CK technique id", id="bad-id-format"
    ),
    pytest.param(
        with_rule_line(5, "T1499", "T1499.2"), r"rules\.yaml:5: technique_id 'T1499\.2' is not an ATT&CK technique id", id="bad-sub-id"
    ),
    pytest.param(
        with_rule_line(5, "T1499", "T1498"), r"rules\.yaml:5: technique_id 'T1498' is not in the pinned ATT&CK table", id="unknown-id"
    ),
    pytest.param(
        with_rule_line(6, "Endpoint Denial of Service", "Endpoint DoS"),
        r"rules\.yaml:6: technique_name 'Endpoint DoS' does not match T1499, which ATT&CK names 'Endpoint Denial of Service'",
        id="name-mismatch",
    ),
    pytest.param(
        with_rule_line(13, "20110003", "20110002"),
        r"rules\.yaml:13: duplicate signature_id 20110002 \(first used at line 7\)",
        id="duplicate-signature-id",
    ),
    pytest.param(
        with_rule_line(9, "0.9", "1.5"), r"rules\.yaml:9: min_confidence must be between 0 and 1, got 1\.5", id="confidence-above-1"
    ),
    pytest.param(
        with_rule_line(9, "0.9", "-0.1"), r"rules\.yaml:9: min_confidence must be between 0 and 1, got -0\.1", id="confidence-negative"
    ),
    pytest.param(
        with_rule_line(9, "0.9", "high"), r"rules\.yaml:9: min_confidence must be a number between 0 and 1, got 'high'", id="confidence-word"
    ),
    pytest.param(
        with_rule_line(9, "0.9", "true"), r"rules\.yaml:9: min_confidence must be a number between 0 and 1, got True", id="confidence-bool"
    ),
    pytest.param(
        with_rule_line(8, "10", "11"), r"rules\.yaml:8: severity must be between 1 and 10, got 11", id="severity-range"
    ),
    pytest.param(
        with_rule_line(7, "20110002", '"2011"'), r"rules\.yaml:7: 'signature_id' must be an integer, got '2011'", id="signature-id-string"
    ),
    pytest.param(
        with_rule_line(10, "PortScan", "DoS"), r"rules\.yaml:10: class 'DoS' already has a rule at line 4", id="duplicate-class"
    ),
    pytest.param(
        with_rule_line(4, "DoS", "BENIGN"),
        r"rules\.yaml:4: class 'BENIGN' is listed in benign_classes and also has a rule",
        id="benign-with-rule",
    ),
    pytest.param(
        with_rule_line(8, "severity: 10", "severity: 10\n    severity: 9"),
        r"rules\.yaml:9: duplicate key 'severity' in a rule \(first at line 8\)",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        "prefix: CSTI ETA1\nbenign_classes: [BENIGN\nrules: []\n", r"rules\.yaml:3: invalid YAML: .*fix the syntax", id="bad-yaml"
    ),
    pytest.param("", r"rules\.yaml: the rules file is empty", id="empty-file"),
    pytest.param("- just\n- a list\n", r"rules\.yaml:1: the rules file must be a mapping", id="top-level-list"),
    pytest.param(
        "prefix: CSTI ETA1\nbenign_classes: BENIGN\nrules: []\n",
        r"rules\.yaml:2: 'benign_classes' must be a list of class names",
        id="benign-not-list",
    ),
    pytest.param(
        "prefix: CSTI ETA1\nbenign_classes: []\nrules:\n  - DoS\n",
        r"rules\.yaml:4: each rule must be a mapping",
        id="rule-not-mapping",
    ),
]


@pytest.mark.parametrize(("text", "message"), ERROR_CASES)
def test_invalid_rules_file(tmp_path, text: str, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        load(tmp_path, text)


def test_valid_fixture_loads(tmp_path) -> None:
    rules = load(tmp_path, VALID)
    assert sorted(rules.rules) == ["DoS", "PortScan"]


def test_collect_errors_reports_every_problem(tmp_path) -> None:
    text = with_rule_line(5, "T1499", "T149")
    text = text.replace("min_confidence: 0.5", "min_confidence: 2")
    text = text.replace("signature_id: 20110003", "signature_id: 20110002")
    text += "colour: blue\n"

    with pytest.raises(RulesValidationError) as caught:
        load(tmp_path, text, collect_errors=True)

    lines = sorted(error.line for error in caught.value.errors if error.line is not None)
    assert lines == [5, 13, 15, 16]
    message = str(caught.value)
    assert "4 problem(s)" in message
    assert "rules.yaml:5: technique_id 'T149'" in message
    assert "rules.yaml:13: duplicate signature_id 20110002" in message
    assert "rules.yaml:15: min_confidence must be between 0 and 1, got 2" in message
    assert "rules.yaml:16: unknown key 'colour'" in message


def test_first_error_only_without_collect(tmp_path) -> None:
    text = with_rule_line(5, "T1499", "T149").replace("min_confidence: 0.5", "min_confidence: 2")
    with pytest.raises(RulesError) as caught:
        load(tmp_path, text)
    assert not isinstance(caught.value, RulesValidationError)
    assert caught.value.line == 5


def test_missing_rules_file(tmp_path) -> None:
    with pytest.raises(RulesError, match=r"absent\.yaml: rules file not found"):
        load_rules(tmp_path / "absent.yaml")
