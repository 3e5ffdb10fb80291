"""Model-card sections on generalisation: the leave-scenario-out figures, the variant table, the limits."""

from __future__ import annotations

from collections.abc import Sequence

from convert.grouped import DAY_FAMILY, GROUPED_FOLDS, HOST_FAMILY, TIME_FAMILY, GroupedEvaluation, ScenarioFigure
from convert.markdown import pct, table
from convert.report import TrainingReport, VariantPoint
from convert.variants import CANDIDATE_THRESHOLDS

# Families whose scenarios the variant table pools into one column each.
_POOLED_FAMILIES = {HOST_FAMILY: "Botnet, by host", TIME_FAMILY: "DDoS, by time block"}
# Held-out labels shown under a shorter column name in the variant table.
_SHORT_NAMES = {
    "DoS Hulk": "Hulk",
    "DoS GoldenEye": "GoldenEye",
    "DoS Slowloris": "Slowloris",
    "DoS Slowhttptest": "Slowhttptest",
    "Web Attack - Brute Force": "web brute force",
    "Infiltration - Portscan": "Infiltration - Portscan",
}


def summary_rows(report: TrainingReport) -> list[tuple[str, str]]:
    """Return the summary table's rows on the grouped evaluation."""
    grouped = report.grouped
    targets = report.targets
    return [
        (
            "macro-F1 over DoS, DDoS, PortScan, BruteForce and Botnet at the rules' thresholds, "
            f"leave-scenario-out folds (goal on an unseen network: >= {targets['grouped_macro_f1']:.2f})",
            f"**{grouped.macro_f1:.4f}**",
        ),
        (
            "the same macro-F1, leave-scenario-out folds, held-out flows that are not exact copies of a "
            "training flow (section Generalisation)",
            f"{grouped.macro_f1_unseen:.4f}",
        ),
        (
            "the same macro-F1, random folds (within the capture)",
            f"{report.cv_technique_f1:.4f}",
        ),
        (
            "benign false alerts, leave-one-day-out folds "
            f"(goal on an unseen network: <= {pct(targets['grouped_benign_alert_rate'], 0)})",
            f"**{grouped.benign_false_alerts} of {grouped.benign_rows}** ({pct(grouped.benign_false_alert_rate, 3)})",
        ),
    ]


def generalisation_section(report: TrainingReport) -> str:
    """Return the section with the shipped model's leave-scenario-out figures."""
    grouped = report.grouped
    return (
        "A random split puts flows of the same tool, host and minute in training and in test, so it "
        "measures how well the model recognises this lab. Here each row is scored by a model that never "
        "trained on its whole scenario. There are "
        f"{report.grouped_folds} folds, and each holds out at most one scenario per technique, so the "
        "technique itself stays in training:\n\n"
        "- **leave one DoS tool out**: Hulk, GoldenEye, Slowloris or Slowhttptest. The held-out tool "
        "must still alert as `DoS`.\n"
        "- **leave one brute-force tool out**: FTP-Patator, SSH-Patator or the web login brute force.\n"
        "- **leave one scanning host and day out**: `Portscan` (172.16.0.1 scanning the web server on "
        "Friday) or `Infiltration - Portscan` (mostly the infected 192.168.10.8 scanning the LAN on "
        "Thursday, plus a few flows of 172.16.0.1 scanning 192.168.10.51 that day, so the 172.16.0.1 host "
        "is not held out entirely).\n"
        "- **leave one bot host out**: the `Botnet` flows of one infected host (source address).\n"
        "- **leave one DDoS time block out**: the data has one DDoS tool (LOIC) on one afternoon, so "
        "this only tests drift within that tool.\n"
        "- **leave one benign day out**: the benign flows of one capture day, Monday to Friday. They "
        "give the benign false alerts below.\n"
        "- The rare labels (Heartbleed, SQL injection, XSS, `Infiltration`) are spread over the folds at "
        "random, so their classes stay in training. They are not part of this evaluation.\n\n"
        "Each model uses the shipped variant's features, parameters and rounds. Figures are at the "
        "rules' thresholds. An attack row is right when it alerts as its own technique. A benign row is "
        "right when it raises no alert.\n\n"
        + scenario_table(grouped.scenarios)
        + "\n\nPer technique, over all grouped out-of-fold predictions. A flow below its class's threshold "
        "counts as a BENIGN prediction, and a benign or other-attack flow that alerts as a technique counts "
        "against that technique's precision:\n\n"
        + table(
            ("technique", "precision", "recall", "F1", "rows"),
            [
                (f"`{s.name}`", f"{s.precision:.4f}", f"{s.recall:.4f}", f"{s.f1:.4f}", s.support)
                for s in grouped.technique_scores
            ],
        )
        + (f"\n\n{unseen_text(grouped)}" if grouped.unseen_recall else "")
        + f"\n\nmacro-F1 over these techniques: **{grouped.macro_f1:.4f}**. Benign false alerts: "
        f"**{grouped.benign_false_alerts} of {grouped.benign_rows}**. Precision here reflects the "
        "sample's class balance, which is about 10% benign. Real traffic is mostly benign, so there "
        "precision would be lower for the same false-alert rate."
    )


def scenario_table(scenarios: Sequence[ScenarioFigure]) -> str:
    rows = []
    for figure in scenarios:
        seen = "-" if figure.seen is None else figure.seen
        if figure.technique:
            unseen = "-" if figure.seen is None or figure.seen == figure.rows else (
                f"{figure.right_unseen} of {figure.rows - figure.seen} ({pct(figure.share_right_unseen, 1)})"
            )
            rows.append(
                (
                    figure.family,
                    f"`{figure.held_out}`" if figure.family not in _POOLED_FAMILIES else figure.held_out,
                    figure.rows,
                    f"`{figure.technique}`",
                    f"{figure.right} ({pct(figure.share_right, 1)})",
                    figure.wrong_attack,
                    seen,
                    unseen,
                    "-",
                )
            )
        else:
            rows.append(
                (
                    figure.family,
                    f"benign flows of {figure.held_out}",
                    figure.rows,
                    "none",
                    "-",
                    "-",
                    seen,
                    "-",
                    f"{figure.wrong_attack} of {figure.rows}",
                )
            )
    return table(
        (
            "scenario",
            "held out (not in training)",
            "rows",
            "expected alert",
            "alerted as that technique",
            "alerted as another technique",
            "rows whose vector is also in training",
            "alerted as that technique, other rows",
            "benign false alerts",
        ),
        rows,
    )


def unseen_text(grouped: GroupedEvaluation) -> str:
    """Return the per-technique recall over held-out rows whose vector the fold's training rows lack."""
    if not grouped.unseen_recall:
        return ""
    parts = [
        f"`{name}` {pct(right / rows, 1)} of {rows}" if rows else f"`{name}` no such rows"
        for name, (rows, right) in grouped.unseen_recall.items()
    ]
    return (
        "Some held-out flows are exact copies, on the model's features, of flows in their fold's training "
        "rows: a port-scan probe to a closed port looks the same from any scanner, so the model recognises "
        "such a flow rather than generalising to it. The column \"rows whose vector is also in training\" "
        "counts them, and the column after it scores only the other rows. Recall at the rules' thresholds "
        "over those other rows, per technique: " + ", ".join(parts) + "."
    )


def scenario_columns(grouped: GroupedEvaluation) -> list[tuple[str, str]]:
    """Return (column name, share right) per held-out tool, with bot hosts and DDoS blocks pooled."""
    columns: list[tuple[str, str]] = []
    pooled: dict[str, list[int]] = {}
    for figure in grouped.scenarios:
        if not figure.technique or figure.family == DAY_FAMILY:
            continue
        if figure.family in _POOLED_FAMILIES:
            totals = pooled.setdefault(_POOLED_FAMILIES[figure.family], [0, 0])
            totals[0] += figure.right
            totals[1] += figure.rows
            continue
        columns.append((_SHORT_NAMES.get(figure.held_out, figure.held_out), pct(figure.share_right, 0)))
    for name, (right, rows) in pooled.items():
        columns.append((name, pct(right / rows, 0) if rows else "-"))
    return columns


def variant_section(report: TrainingReport) -> str:
    """Return the variant table: each choice with its grouped and random-fold figures."""
    rows = []
    for result in report.variants:
        for point in result.points:
            chosen = result is report.chosen and point is report.chosen_point
            rows.append(
                (
                    f"**{result.variant.name}** (chosen)" if chosen else result.variant.name,
                    result.variant.change if point is result.points[0] else "",
                    f"{point.threshold:g}",
                    result.rounds,
                    f"{point.grouped.macro_f1:.4f}",
                    _alerts(point.grouped.benign_false_alerts, point.grouped.benign_rows),
                    f"{point.cv_technique_f1:.4f}",
                    pct(point.cv.attack_recall),
                    f"{point.cv.macro_f1_large:.4f}",
                    _alerts(point.cv.benign_false_alerts, point.cv.benign_rows),
                    _verdict(result.shippable, point),
                )
            )
    main = table(
        (
            "variant",
            "change against the row above",
            "threshold",
            "rounds",
            "grouped macro-F1",
            "grouped benign false alerts",
            "random folds: the same macro-F1",
            "random folds: attack recall",
            "random folds: macro-F1 (>= 100 rows, arg-max)",
            "random folds: benign false alerts",
            "selectable",
        ),
        rows,
    )

    header = ["variant", "threshold"]
    scenario_rows = []
    for result in report.variants:
        point = _point_at(result.points, report.chosen_point.threshold)
        if point is None:
            continue
        columns = scenario_columns(point.grouped)
        if len(header) == 2:
            header += [name for name, _ in columns]
        scenario_rows.append([result.variant.name, f"{point.threshold:g}", *(share for _, share in columns)])

    thresholds = ", ".join(f"{value:g}" for value in CANDIDATE_THRESHOLDS)
    return (
        "Each variant changes one thing against the row above it, starting from the model shipped before "
        "this evaluation existed. Its number of rounds comes from early stopping on the validation part. "
        f"It is then cross-validated twice with those rounds: over the {GROUPED_FOLDS} grouped folds "
        f"(section Generalisation) and over {report.cv_folds} random folds stratified by label. Both are "
        f"scored with one shared threshold for every attack class, at {thresholds}. The gate variant adds "
        "a binary benign-versus-attack model. It alerts when that model's P(attack) reaches the threshold, "
        "and it takes the technique from the class model. Serving it would need a second ONNX model and "
        "a change to the daemon, so it is shown for comparison only.\n\n"
        + main
        + f"\n\nSelection rule: {report.selection_rule}\n\n"
        f"Share of each held-out scenario that alerted as its own technique, at threshold "
        f"{report.chosen_point.threshold:g}:\n\n"
        + table(header, scenario_rows)
    )


def sweep_table(points: Sequence[VariantPoint]) -> str:
    rows = [
        (
            f"{p.threshold:g}",
            f"{p.grouped.macro_f1:.4f}",
            _alerts(p.grouped.benign_false_alerts, p.grouped.benign_rows),
            f"{p.cv_technique_f1:.4f}",
            _alerts(p.cv.benign_false_alerts, p.cv.benign_rows),
            pct(p.cv.attack_recall),
        )
        for p in points
    ]
    return table(
        (
            "min confidence, all classes",
            "grouped macro-F1",
            "grouped benign false alerts",
            "random folds: the same macro-F1",
            "random folds: benign false alerts",
            "random folds: attack recall",
        ),
        rows,
    )


def per_rule_section(report: TrainingReport) -> str:
    """Return the per-rule threshold table: each technique's threshold moved alone, the others kept."""
    shipped = report.chosen_point
    best_f1 = max((point.grouped.macro_f1 for _, point in report.per_rule), default=shipped.grouped.macro_f1)
    gain = best_f1 - report.grouped.macro_f1
    rows = [
        (
            f"`{name}`",
            f"{point.threshold:g}",
            f"{point.grouped.macro_f1:.4f}",
            _alerts(point.grouped.benign_false_alerts, point.grouped.benign_rows),
            pct(point.cv.attack_recall),
            _alerts(point.cv.benign_false_alerts, point.cv.benign_rows),
        )
        for name, point in report.per_rule
    ]
    return (
        "Each row moves one technique's `min_confidence` and keeps every other rule at the rules file's "
        "value, scored on the same out-of-fold predictions as the shipped figures "
        f"(grouped macro-F1 {report.grouped.macro_f1:.4f}, {report.grouped.benign_false_alerts} grouped "
        "benign false alerts).\n\n"
        + table(
            (
                "rule",
                "its min confidence",
                "grouped macro-F1",
                "grouped benign false alerts",
                "random folds: attack recall",
                "random folds: benign false alerts",
            ),
            rows,
        )
        + f"\n\nThe best single change moves grouped macro-F1 by {gain:+.4f}. The rules keep one shared "
        "threshold: each technique has only two to five held-out scenarios here, so a threshold tuned per "
        "rule would fit those few scenarios, and differences of a few hundredths are within what another "
        "seed or sample changes (see the limits below). A lower threshold also lets more of an unfamiliar "
        "network's benign traffic alert. Operators can still set a rule's `min_confidence` in `rules.yaml` "
        "and read its effect off this table."
    )


def _gate_text(report: TrainingReport) -> str:
    threshold = report.chosen_point.threshold
    gate = next((result for result in report.variants if result.variant.gate), None)
    point = _point_at(gate.points, threshold) if gate else None
    if point is None:
        return "**Benign-versus-attack gate.** Not in this run's variant table (`--grid quick`)."
    shipped = report.chosen_point.grouped
    return (
        f"**Benign-versus-attack gate.** Measured as the `{gate.variant.name}` row. At threshold {threshold:g} "
        f"it scored grouped macro-F1 {point.grouped.macro_f1:.4f} with {point.grouped.benign_false_alerts} "
        f"grouped benign false alerts, against {shipped.macro_f1:.4f} and {shipped.benign_false_alerts} for "
        "the shipped model. The per-scenario table shows which held-out tools the gate turns away although "
        "the class model names them. It would also need a second ONNX model in the daemon."
    )


def choices_section(report: TrainingReport) -> str:
    """Return the modelling choices the variant table does not show as rows of their own."""
    items = [
        (
            "**Interaction constraints.** `max_depth` bounds how many features one path of a tree combines: "
            f"the shipped {report.params.get('max_depth')} is the constraint used here, and the depth rows of "
            "the variant table show what each step bought on the grouped folds. Explicit "
            "`interaction_constraints` would need a list of feature groups allowed to interact, and no grouping "
            "of these fields holds for every technique."
        ),
        (
            "**Monotone constraints.** Not used. No feature moves in one direction for every attack: floods "
            "raise packet rates and slow-rate DoS lowers them, and brute force has short flows where "
            "Slowloris has long ones. A monotone constraint would force one of them into the wrong shape."
        ),
        _gate_text(report),
        (
            "**Calibration.** Not applied. The thresholds are chosen on out-of-fold probabilities, so they "
            "already sit on the model's own probability scale. A monotone recalibration of the confidence "
            "(Platt or isotonic) would change the threshold values but not which flows alert at the chosen "
            "point. A per-class recalibration, which could reorder flows, would be fitted on the same few "
            "held-out scenarios as per-rule thresholds."
        ),
    ]
    return "\n".join(f"- {item}" for item in items)


def not_detected_section(report: TrainingReport) -> str:
    """Return what the model is not expected to detect, with the grouped scenarios it mostly missed."""
    missed = [
        f"`{figure.held_out}` ({pct(figure.share_right, 0)} alerted as `{figure.technique}`)"
        for figure in report.grouped.scenarios
        if figure.technique and figure.family not in _POOLED_FAMILIES and figure.share_right < 0.5
    ]
    missed_text = (
        "In the grouped evaluation the model mostly missed these held-out tools: " + ", ".join(missed) + ". "
        if missed
        else "No held-out tool fell below half detected in the grouped evaluation, but that covers only the tools in the data. "
    )
    rare = [name for name, count in report.class_counts.items() if count < 100]
    rare_counts = [report.class_counts[name] for name in rare]
    rare_text = (
        f"**Rare classes.** {', '.join(f'`{name}`' for name in rare)} have {min(rare_counts)} to "
        f"{max(rare_counts)} rows each. Their rows are spread at random over the grouped folds, so no figure "
        "here says how they do on another network."
        if rare
        else "**Rare classes.** None below 100 rows."
    )
    items = [
        (
            "**Attack types absent from the data.** The model knows only the techniques in the class table. "
            "Exfiltration, lateral movement, DNS tunnelling, ransomware and UDP or ICMP floods are among the "
            "behaviours it never saw. Such flows get whichever class they resemble. In the grouped evaluation, the "
            "held-out tools it missed mostly landed in BENIGN. Every "
            "DoS and DDoS flow in the data is a TCP connection to one web server, so volumetric floods of other "
            "protocols are unknown to it."
        ),
        (
            "**Attacks spread over many benign-looking flows.** The model scores one flow at a time. A slow "
            "scan, a brute force with one attempt per connection from many sources, or a bot that beacons like "
            "a browser gives no single flow that stands out. A DDoS is told from a DoS only by how one tool's "
            "flows look, not by counting sources."
        ),
        (
            "**Tools whose flows look like the lab's benign traffic.** "
            + missed_text
            + "In these fields a single HTTP request of a flood, or a failed FTP login, looks much like a normal "
            "request or login. So a tool unlike the ones in training tends to land in BENIGN rather than alert. "
            "Brute force against services other than FTP, SSH and one web form, and bot families other than "
            "Ares, were never seen."
        ),
        rare_text,
    ]
    return "\n".join(f"- {item}" for item in items)


def single_lab_limits(report: TrainingReport) -> list[str]:
    """Return the limits-section items about evaluating on one lab."""
    return [
        (
            "**One lab, one week.** All flows come from the CIC-IDS2017 testbed (July 2017), exported by one "
            "CICFlowMeter build. The grouped folds hold out tools, hosts and days, but not the lab. Every "
            "held-out DoS and brute-force tool still ran from 172.16.0.1 against the same web server, and both "
            "scan sources scanned hosts of the same LAN. So the grouped figures measure transfer between tools and days of "
            "one network, and they are an upper bound for a network nobody has seen. Features that single out "
            "the lab as a whole, for example the victim server's reply sizes shared by every HTTP attack, "
            "cannot be caught by this evaluation. Only data from another network can measure that."
        ),
        (
            "**Single DDoS and bot tools.** The DDoS rows are one LOIC run and the bot rows are one Ares "
            "deployment with one command server. Their grouped figures test other time blocks and other "
            "infected hosts of the same tool, not other tools."
        ),
        (
            "**Choice made on the same figures.** The variant and the threshold were picked on the grouped and "
            f"random-fold figures this card prints: {sum(len(r.points) for r in report.variants if r.shippable)} "
            "points of variants the daemon can serve, "
            f"{sum(p.feasible for r in report.variants if r.shippable for p in r.points)} of them selectable. The chosen point's figures are therefore slightly optimistic, and differences of a few "
            "hundredths of macro-F1 between variants are within what another seed or sample would change."
        ),
    ]


def threshold_note(report: TrainingReport) -> str:
    """Return a warning line when the rules file's thresholds differ from the chosen shared threshold."""
    used = sorted({value for value in report.thresholds.values() if value != float("inf")})
    chosen = report.chosen_point.threshold
    if len(used) == 1 and abs(used[0] - chosen) < 1e-6:
        return ""
    shown = ", ".join(f"{value:g}" for value in used)
    return (
        f"**Warning:** the rules file uses min_confidence {shown}, but the variant table chose {chosen:g}. "
        "The figures at the rules' thresholds below differ from the chosen point. Set min_confidence to "
        f"{chosen:g} for every attack rule in `{report.rules_path.name}` and train again.\n\n"
    )


def _point_at(points: Sequence[VariantPoint], threshold: float) -> VariantPoint | None:
    return next((point for point in points if abs(point.threshold - threshold) < 1e-9), None)


def _alerts(count: int, rows: int) -> str:
    return f"{count} of {rows}"


def _verdict(shippable: bool, point: VariantPoint) -> str:
    if not shippable:
        return "no (needs a second model)"
    return "yes" if point.feasible else "no"
