"""Grouped (leave-scenario-out) evaluation and variant selection, on small synthetic data."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from convert import fitting, grouped, variants
from convert.evaluate import ClassScore, Evaluation
from convert.featureset import default_features, features_with
from convert.grouped import DAY_FAMILY, HOST_FAMILY, RANDOM_SCENARIO, TIME_FAMILY, assign_folds, grouped_evaluation
from convert.report import TrainConfig, Variant, VariantPoint, VariantResult
from sidecar import schema
from sidecar.rules import Rule, RuleSet

CLASSES = ("BENIGN", "DoS", "PortScan")


def make_rules(threshold: float = 0.9) -> RuleSet:
    def rule(name: str, technique_id: str, signature_id: int) -> Rule:
        return Rule(name, technique_id, name, f"X - {name}", signature_id, 5, "https://example.invalid/", threshold)

    return RuleSet("rules.yaml", "X", {"DoS": rule("DoS", "T1499", 1), "PortScan": rule("PortScan", "T1046", 2)}, ["BENIGN"])


def synthetic_rows() -> tuple[np.ndarray, list[str], list[str]]:
    """Return labels, source addresses and timestamps of a small data set with every scenario kind."""
    labels: list[str] = []
    hosts: list[str] = []
    times: list[str] = []

    def add(label: str, count: int, host: str, day: int, minute: int = 0) -> None:
        for i in range(count):
            labels.append(label)
            hosts.append(host)
            times.append(f"2017-07-0{day} 12:{minute + i // 60:02d}:{i % 60:02d}.000001")

    for tool in ("DoS Hulk", "DoS GoldenEye", "DoS Slowloris", "DoS Slowhttptest"):
        add(tool, 6, "172.16.0.1", 5)
    add("FTP-Patator", 4, "172.16.0.1", 4)
    add("SSH-Patator", 4, "172.16.0.1", 4, minute=30)
    add("Portscan", 5, "172.16.0.1", 7)
    add("Infiltration - Portscan", 5, "192.168.10.8", 6)
    for host in ("192.168.10.5", "192.168.10.8", "192.168.10.9"):
        add("Botnet", 3, host, 7, minute=5)
    add("DDoS", 5, "172.16.0.1", 7, minute=45)  # later rows first: blocks must follow time, not row order
    add("DDoS", 5, "172.16.0.1", 7, minute=40)
    for day in (3, 4, 5, 6, 7):
        add("BENIGN", 4, f"192.168.10.{day}", day)
    add("Heartbleed", 7, "172.16.0.1", 5, minute=50)
    return np.array(labels, dtype=object), hosts, times


# --- fold assignment -------------------------------------------------------------


def test_each_dos_tool_in_own_fold() -> None:
    labels, hosts, times = synthetic_rows()
    assignment = assign_folds(labels, hosts, times, seed=1)
    folds = {tool: set(assignment.fold[labels == tool].tolist()) for tool in
             ("DoS Hulk", "DoS GoldenEye", "DoS Slowloris", "DoS Slowhttptest")}
    for tool, found in folds.items():
        assert len(found) == 1, tool
    assert len({next(iter(found)) for found in folds.values()}) == 4


def test_brute_force_and_scan_sources_split() -> None:
    labels, hosts, times = synthetic_rows()
    fold = assign_folds(labels, hosts, times, seed=1).fold
    assert set(fold[labels == "FTP-Patator"]) != set(fold[labels == "SSH-Patator"])
    assert set(fold[labels == "Portscan"]) != set(fold[labels == "Infiltration - Portscan"])


def test_benign_day_is_one_fold() -> None:
    labels, hosts, times = synthetic_rows()
    assignment = assign_folds(labels, hosts, times, seed=1)
    benign = np.flatnonzero(labels == "BENIGN")
    days = pd.to_datetime(pd.Series(times)).dt.date.to_numpy()[benign]
    for day in set(days.tolist()):
        assert len(set(assignment.fold[benign[days == day]].tolist())) == 1, day
    assert len(set(assignment.fold[benign].tolist())) == 5
    assert set(assignment.family[benign]) == {DAY_FAMILY}
    assert "2017-07-03 (Mon)" in set(assignment.held_out[benign])


def test_bot_hosts_in_separate_folds() -> None:
    labels, hosts, times = synthetic_rows()
    assignment = assign_folds(labels, hosts, times, seed=1)
    bot = np.flatnonzero(labels == "Botnet")
    by_host = {host: set(assignment.fold[[i for i in bot if hosts[i] == host]].tolist()) for host in set(hosts[i] for i in bot)}
    assert all(len(found) == 1 for found in by_host.values())
    assert len({next(iter(found)) for found in by_host.values()}) == 3
    assert set(assignment.family[bot]) == {HOST_FAMILY}


def test_ddos_blocks_are_contiguous_in_time() -> None:
    labels, hosts, times = synthetic_rows()
    assignment = assign_folds(labels, hosts, times, seed=1)
    ddos = np.flatnonzero(labels == "DDoS")
    stamps = pd.to_datetime(pd.Series(times)).to_numpy()[ddos]
    folds = assignment.fold[ddos]
    ordered = [(stamps[folds == k].min(), stamps[folds == k].max()) for k in range(grouped.GROUPED_FOLDS)]
    for (_, end), (start, _) in zip(ordered, ordered[1:]):
        assert end < start
    assert set(assignment.family[ddos]) == {TIME_FAMILY}


def test_other_labels_spread_evenly() -> None:
    labels, hosts, times = synthetic_rows()
    assignment = assign_folds(labels, hosts, times, seed=1)
    rare = labels == "Heartbleed"
    counts = np.bincount(assignment.fold[rare], minlength=grouped.GROUPED_FOLDS)
    assert counts.max() - counts.min() <= 1
    assert set(assignment.family[rare]) == {RANDOM_SCENARIO}


def test_assignment_is_reproducible() -> None:
    labels, hosts, times = synthetic_rows()
    first = assign_folds(labels, hosts, times, seed=7).fold
    second = assign_folds(labels, hosts, times, seed=7).fold
    assert first.tolist() == second.tolist()


def test_missing_context_falls_back_to_random(caplog: pytest.LogCaptureFixture) -> None:
    labels, _, _ = synthetic_rows()
    with caplog.at_level(logging.WARNING, logger="convert.grouped"):
        assignment = assign_folds(labels, None, None, seed=1)
    assert "no Src IP column" in caplog.text
    assert "no usable Timestamp column" in caplog.text
    assert set(assignment.family[labels == "BENIGN"]) == {RANDOM_SCENARIO}
    assert (assignment.fold >= 0).all()


def test_one_fold_rejected() -> None:
    labels, hosts, times = synthetic_rows()
    with pytest.raises(ValueError, match="at least 2 folds"):
        assign_folds(labels, hosts, times, seed=1, folds=1)


# --- grouped figures -------------------------------------------------------------------


def small_case() -> tuple[np.ndarray, grouped.FoldAssignment, np.ndarray]:
    y = np.array([1, 1, 1, 2, 0, 0, 0])
    family = np.array(["leave one DoS tool out"] * 3 + ["leave one scanning host and day out"] + [DAY_FAMILY] * 3, dtype=object)
    held_out = np.array(["DoS Hulk"] * 3 + ["Portscan"] + ["2017-07-03 (Mon)"] * 3, dtype=object)
    assignment = grouped.FoldAssignment(np.array([0, 0, 0, 1, 0, 0, 0]), family, held_out, 5)
    probabilities = np.array(
        [
            [0.05, 0.95, 0.0],  # DoS, alerts
            [0.3, 0.7, 0.0],  # DoS below 0.9: no alert, counts as BENIGN
            [0.0, 0.05, 0.95],  # alerts as PortScan: wrong technique
            [0.0, 0.0, 1.0],  # PortScan, alerts
            [1.0, 0.0, 0.0],
            [0.0, 0.0, 0.95],  # benign alerting as PortScan
            [0.6, 0.4, 0.0],
        ],
        dtype=np.float32,
    )
    return y, assignment, probabilities


def test_grouped_scores_alerted_class() -> None:
    y, assignment, probabilities = small_case()
    result = grouped_evaluation(y, assignment, probabilities, CLASSES, make_rules(), techniques=("DoS", "PortScan"))
    dos, scan = result.technique_scores
    assert dos.recall == pytest.approx(1 / 3)
    assert dos.precision == pytest.approx(1.0)
    assert scan.recall == pytest.approx(1.0)
    assert scan.precision == pytest.approx(1 / 3)
    assert result.macro_f1 == pytest.approx((0.5 + 0.5) / 2)
    assert result.benign_false_alerts == 1
    assert result.benign_rows == 3


def test_scenario_figures_count_outcomes() -> None:
    y, assignment, probabilities = small_case()
    result = grouped_evaluation(y, assignment, probabilities, CLASSES, make_rules(), techniques=("DoS", "PortScan"))
    hulk = result.scenario("DoS Hulk")
    assert hulk is not None
    assert (hulk.technique, hulk.rows, hulk.right, hulk.wrong_attack) == ("DoS", 3, 1, 1)
    monday = result.scenario("2017-07-03 (Mon)")
    assert monday is not None
    assert (monday.technique, monday.rows, monday.right, monday.wrong_attack) == ("", 3, 2, 1)
    assert [figure.held_out for figure in result.scenarios] == ["DoS Hulk", "Portscan", "2017-07-03 (Mon)"]


def test_seen_vectors_counted_per_fold() -> None:
    fold = np.array([0, 0, 1, 1, 2])
    groups = np.array([7, 8, 7, 9, 9])
    # row 0 and row 2 share a vector across folds; rows 3 and 4 too; row 1 is unique.
    assert grouped.seen_in_training(groups, fold).tolist() == [True, False, True, True, True]
    assert grouped.seen_in_training(groups, np.zeros(5, dtype=int)).tolist() == [False] * 5


def test_unseen_rows_scored_apart() -> None:
    y, assignment, probabilities = small_case()
    # Hulk rows 0 and 1 are fold 0; row 0 copies the Portscan row (fold 1), row 1 is unique.
    groups = np.array([3, 1, 2, 3, 4, 5, 6])
    result = grouped_evaluation(y, assignment, probabilities, CLASSES, make_rules(), ("DoS", "PortScan"), groups)
    hulk = result.scenario("DoS Hulk")
    assert (hulk.seen, hulk.right_unseen) == (1, 0)
    assert hulk.share_right_unseen == pytest.approx(0.0)
    assert result.unseen_recall["DoS"] == (2, 0)
    assert result.unseen_recall["PortScan"] == (0, 0)
    # Without the two copied rows: DoS has no right alert, and PortScan only the benign row's false alert.
    assert result.macro_f1_unseen == pytest.approx(0.0)
    assert result.macro_f1 > 0.0
    plain = grouped_evaluation(y, assignment, probabilities, CLASSES, make_rules(), ("DoS", "PortScan"))
    assert plain.scenario("DoS Hulk").seen is None
    assert plain.unseen_recall == {}


def test_absent_technique_skipped() -> None:
    y, assignment, probabilities = small_case()
    result = grouped_evaluation(y, assignment, probabilities, CLASSES, make_rules(), techniques=("DoS", "Botnet"))
    assert [score.name for score in result.technique_scores] == ["DoS"]


def test_lower_threshold_raises_recall() -> None:
    y, assignment, probabilities = small_case()
    strict = grouped_evaluation(y, assignment, probabilities, CLASSES, make_rules(0.9))
    loose = grouped_evaluation(y, assignment, probabilities, CLASSES, variants.rules_at(make_rules(0.9), 0.5))
    assert loose.scenario("DoS Hulk").right == 2
    assert strict.scenario("DoS Hulk").right == 1


def test_per_rule_points_move_one_rule_only() -> None:
    y, assignment, probabilities = small_case()
    data = SimpleNamespace(y=y, classes=CLASSES)
    thresholds = (0.5, 0.9, 0.96)
    pairs = variants.per_rule_points(data, assignment, probabilities, probabilities, make_rules(0.9), thresholds, ())
    by_key = {(name, point.threshold): point for name, point in pairs}
    # 0.9 is every rule's own threshold, so it is left out.
    assert sorted(by_key) == [("DoS", 0.5), ("DoS", 0.96), ("PortScan", 0.5), ("PortScan", 0.96)]
    # DoS at 0.5: the second Hulk row alerts; PortScan keeps 0.9, so the benign row still alerts.
    assert by_key["DoS", 0.5].grouped.scenario("DoS Hulk").right == 2
    assert by_key["DoS", 0.5].grouped.benign_false_alerts == 1
    # PortScan at 0.96: the benign row at 0.95 falls below it, the scan row at 1.0 still alerts.
    assert by_key["PortScan", 0.96].grouped.benign_false_alerts == 0
    assert by_key["PortScan", 0.96].grouped.scenario("Portscan").right == 1
    assert by_key["PortScan", 0.96].grouped.scenario("DoS Hulk").right == 1


# --- gate, thresholds and selection -------------------------------------------------------


def test_gate_alerts_exactly_at_gate_threshold() -> None:
    classes = np.array([[0.9, 0.02, 0.08], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4]], dtype=np.float32)
    attack = np.array([0.95, 0.4, 0.8], dtype=np.float32)
    folded = fitting.gate_probabilities(classes, attack, benign_index=0)
    rules = variants.rules_at(make_rules(), 0.8)
    decisions = rules.decide(folded, CLASSES)
    assert decisions.alert.tolist() == [True, False, True]
    assert decisions.predicted.tolist() == [2, 0, 2]
    np.testing.assert_allclose(folded.sum(axis=1), 1.0, rtol=1e-6)


def test_rules_at_sets_every_threshold() -> None:
    shared = variants.rules_at(make_rules(0.9), 0.5)
    assert {rule.min_confidence for rule in shared.rules.values()} == {0.5}
    assert shared.benign_classes == frozenset({"BENIGN"})


@pytest.mark.parametrize(
    ("recall", "f1_large", "cv_rate", "grouped_rate", "expected"),
    [
        (0.99, 0.98, 0.005, 0.005, True),
        (0.989, 0.99, 0.0, 0.0, False),
        (1.0, 0.979, 0.0, 0.0, False),
        (1.0, 1.0, 0.0051, 0.0, False),
        (1.0, 1.0, 0.0, 0.0051, False),
    ],
)
def test_feasibility_boundaries(recall: float, f1_large: float, cv_rate: float, grouped_rate: float, expected: bool) -> None:
    assert variants.is_feasible(recall, f1_large, cv_rate, grouped_rate) is expected


def fake_point(threshold: float, grouped_f1: float, cv_alerts: int, feasible: bool) -> VariantPoint:
    scores = [ClassScore("DoS", 1.0, 1.0, 1.0, 1)]
    generalisation = grouped.GroupedEvaluation(scores, grouped_f1, 100, 0, [])
    cv = Evaluation(CLASSES, [], 1.0, 1.0, CLASSES, np.zeros((3, 3)), 100, cv_alerts, 10, 10, 10)
    return VariantPoint(threshold, generalisation, cv, feasible)


def fake_result(name: str, points: list[VariantPoint], shippable: bool = True) -> VariantResult:
    variant = Variant(name, "", ("Flow Duration",), TrainConfig(2, 1.0, 1.0), gate=not shippable)
    return VariantResult(variant, 10, 0.1, points, shippable)


def test_select_best_grouped_among_feasible() -> None:
    results = [
        fake_result("a", [fake_point(0.5, 0.95, 0, False), fake_point(0.9, 0.85, 3, True)]),
        fake_result("b", [fake_point(0.9, 0.88, 5, True), fake_point(0.99, 0.80, 1, True)]),
        fake_result("gate", [fake_point(0.9, 0.99, 0, True)], shippable=False),
    ]
    chosen, point = variants.select(results)
    assert chosen.variant.name == "b"
    assert point.threshold == 0.9


def test_select_tie_takes_fewer_alerts() -> None:
    results = [fake_result("a", [fake_point(0.8, 0.85, 4, True), fake_point(0.9, 0.85, 2, True)])]
    _, point = variants.select(results)
    assert point.threshold == 0.9


def test_select_near_best_takes_fewer_alerts() -> None:
    results = [
        fake_result("a", [fake_point(0.8, 0.885, 5, True)]),
        fake_result("b", [fake_point(0.8, 0.880, 2, True)]),
    ]
    chosen, _ = variants.select(results)
    assert chosen.variant.name == "b"


def test_select_tie_takes_fewer_features() -> None:
    small = fake_result("small", [fake_point(0.8, 0.88, 2, True)])
    large = fake_result("large", [fake_point(0.8, 0.88, 2, True)])
    large.variant = Variant("large", "", ("Flow Duration", "Flow Bytes/s"), TrainConfig(2, 1.0, 1.0))
    chosen, _ = variants.select([large, small])
    assert chosen.variant.name == "small"


def test_select_without_feasible_warns(caplog: pytest.LogCaptureFixture) -> None:
    results = [fake_result("a", [fake_point(0.5, 0.7, 9, False), fake_point(0.9, 0.6, 1, False)])]
    with caplog.at_level(logging.WARNING, logger="convert.variants"):
        _, point = variants.select(results)
    assert point.threshold == 0.5
    assert "no variant meets the targets" in caplog.text


def test_select_needs_shippable_variant() -> None:
    with pytest.raises(ValueError, match="no shippable variant"):
        variants.select([fake_result("gate", [fake_point(0.9, 0.9, 0, True)], shippable=False)])


def test_variant_rows_change_one_thing() -> None:
    table = variants.default_variants()
    assert table[0].config == variants.PREVIOUS_CONFIG
    for above, row in zip(table, table[1:]):
        changed = (above.features != row.features) + (above.config != row.config) + (above.gate != row.gate)
        assert changed == 1, row.name
    assert variants.quick_variants()[0].features == table[-1].features


def test_features_with_adds_groups_in_order() -> None:
    assert features_with(()) == default_features()
    wider = features_with(variants.LEFT_OUT_GROUPS)
    for name in ("Flow IAT Min", "Bwd IAT Mean", "Total Length of Fwd Packet"):
        assert name in wider, name
        assert name not in default_features(), name
    order = [schema.CONTRACT_NUMERIC_FIELDS.index(name) for name in wider]
    assert order == sorted(order)


def test_features_with_unknown_group() -> None:
    with pytest.raises(ValueError, match="unknown feature group"):
        features_with(["Timing"])
