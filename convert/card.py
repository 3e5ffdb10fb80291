"""Write the model card (Markdown) and the confusion-matrix PNG from a training report.

Every figure in the card comes from the TrainingReport that ``convert.train``
builds; nothing in it is typed by hand.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import beta

from convert import card_grouped
from convert.evaluate import Evaluation
from convert.featureset import FEATURE_GROUPS
from convert.markdown import pct as _pct
from convert.markdown import table as _table
from convert.report import TrainingReport
from sidecar.rules import load_rules

logger = logging.getLogger(__name__)


def upper_bound_95(events: int, trials: int) -> float:
    """One-sided 95% Clopper-Pearson upper bound of a rate observed as events/trials."""
    if trials == 0:
        return float("nan")
    if events >= trials:
        return 1.0
    return float(beta.ppf(0.95, events + 1, trials - events))


def plot_confusion(evaluation: Evaluation, path: Path, title: str) -> None:
    """Draw the confusion matrix (counts, colour = share of the true class) to a PNG."""
    counts = evaluation.confusion
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts, dtype=float), where=totals > 0)
    size = 1.0 + 0.75 * len(evaluation.classes)
    # A bare Figure (no pyplot) needs no display and leaves no global state behind.
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(evaluation.classes))
    axes.set_xticks(ticks, evaluation.classes, rotation=45, ha="right")
    axes.set_yticks(ticks, evaluation.classes)
    axes.set_xlabel("predicted class (arg-max)")
    axes.set_ylabel("true class")
    axes.set_title(title)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[i, j]:
                colour = "white" if shares[i, j] > 0.5 else "black"
                axes.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    figure.colorbar(image, ax=axes, label="share of the true class")
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    os.replace(temporary, path)


def _class_section(report: TrainingReport) -> str:
    rules = load_rules(report.rules_path)
    rows = []
    for name in report.classes:
        rule = rules.rule_for(name)
        technique = "no alert (benign)" if rule is None else f"{rule.technique_id} {rule.technique_name}"
        threshold = "-" if rule is None else f"{rule.min_confidence:g}"
        labels = ", ".join(f"`{label}`" for label in report.class_labels[name])
        rows.append((f"`{name}`", labels, report.class_counts[name], technique, threshold, report.class_reasons[name]))
    table = _table(("class", "dataset labels", "rows", "alert", "min confidence", "why"), rows)

    parts = [table]
    for comparison in report.comparisons:
        mine = comparison.shipped
        other = comparison.evaluation
        scan_rows = [
            (f"`{score.name}`", f"{score.f1:.3f}", score.support)
            for score in other.scores
            if score.f1 < 0.99
        ]
        parts.append(
            f"Validation figures with {comparison.name} ({len(comparison.classes)} classes) against the "
            f"shipped class set ({len(report.classes)} classes). {comparison.note}\n\n"
            + _table(
                ("class set", "macro-F1", "macro-F1, classes >= 100 rows", "benign false alerts", "attack recall"),
                [
                    (
                        "shipped",
                        f"{mine.macro_f1:.4f}",
                        f"{mine.macro_f1_large:.4f}",
                        f"{mine.benign_false_alerts} of {mine.benign_rows}",
                        _pct(mine.attack_recall),
                    ),
                    (
                        comparison.name,
                        f"{other.macro_f1:.4f}",
                        f"{other.macro_f1_large:.4f}",
                        f"{other.benign_false_alerts} of {other.benign_rows}",
                        _pct(other.attack_recall),
                    ),
                ],
            )
        )
        if scan_rows:
            parts.append(
                f"Classes below F1 0.99 with {comparison.name} (validation):\n\n"
                + _table(("class", "F1", "validation rows"), scan_rows)
            )
    return "\n\n".join(parts)


def _feature_section(report: TrainingReport) -> str:
    rows = []
    for group in FEATURE_GROUPS:
        fields = ", ".join(f"`{name}`" for name in group.fields)
        rows.append((group.name, "used" if group.used else "left out", fields, group.reason))
    return (
        "Candidates are the numeric fields the production flow documents carry. The RST, bulk, "
        "ICMP and `Total TCP Flow Time` columns of the training CSVs are not in those documents, "
        "so they are not candidates.\n\n"
        + _table(("group", "", "fields", "why"), rows)
        + f"\n\nThe model uses {len(report.features)} features, in this order: "
        + ", ".join(f"`{name}`" for name in report.features)
        + "."
    )


def _training_section(report: TrainingReport) -> str:
    params = ", ".join(f"`{key}={value}`" for key, value in report.params.items())
    return (
        f"Shipped variant: **{report.chosen.variant.name}** at shared threshold "
        f"{report.chosen_point.threshold:g}. XGBoost parameters of the shipped model: {params}.\n\n"
        "Row weights: each row weighs (rows of the largest dataset label / rows of its own label) "
        "to the power `label_weight_power`, times `benign_weight` for BENIGN rows, normalised to mean 1. "
        "Weights go by dataset label, so a small label inside a merged class (web brute force "
        "inside `BruteForce`) still counts.\n\n"
        "### Variant table\n\n" + card_grouped.variant_section(report)
        + "\n\n### Per-rule thresholds\n\n" + card_grouped.per_rule_section(report)
        + "\n\n### Other choices\n\n" + card_grouped.choices_section(report)
    )


def _scores_table(evaluation: Evaluation) -> str:
    rows = [
        (f"`{s.name}`", f"{s.precision:.4f}", f"{s.recall:.4f}", f"{s.f1:.4f}", s.support) for s in evaluation.scores
    ]
    return _table(("class", "precision", "recall", "F1", "rows"), rows)


def _by_label_table(by_label: dict[str, tuple[int, int]]) -> str:
    rows = [(f"`{label}`", total, right, _pct(right / total) if total else "-") for label, (total, right) in by_label.items()]
    return _table(("dataset label", "rows", "right outcome", "share"), rows)


def _false_alert_section(report: TrainingReport) -> str:
    table = report.cv_false_alerts
    if table.empty:
        return "No benign flow raised an alert in cross-validation."
    columns = list(table.columns)
    rows = []
    for record in table.to_dict("records"):
        rows.append(
            tuple(
                f"{record[column]:.4f}" if column == "confidence" else record[column]
                for column in columns
            )
        )
    return (
        "Every benign flow that raised an alert in cross-validation, with the flow's identifiers "
        "(not model features) so each can be checked against the capture. `inside attack` names an "
        "attack label whose flows join the same two hosts within that label's time span: such a "
        "BENIGN row is probably attack traffic with the wrong label.\n\n" + _table(columns, rows)
    )


def _limits_section(report: TrainingReport) -> str:
    cv = report.cv
    bound = upper_bound_95(cv.benign_false_alerts, cv.benign_rows)
    table = report.cv_false_alerts
    inside = int((table["inside attack"] != "").sum()) if "inside attack" in table.columns else 0
    inside_text = ""
    if len(table):
        inside_text = (
            f"{inside} of the {len(table)} benign false alerts join the same two hosts as an attack label's "
            "flows, inside that attack's time span (column `inside attack` above). Such rows are probably "
            "attack traffic labelled BENIGN, for example the reply direction of a scan. "
        )
    argmax_total = sum(report.cv_benign_argmax.values())
    argmax_text = ", ".join(f"`{name}` {count}" for name, count in report.cv_benign_argmax.items()) or "none"
    small = [
        f"`{s.name}` ({report.class_counts[s.name]} rows, {s.support} in the test part)"
        for s in report.test.scores
        if report.class_counts[s.name] < 100
    ]
    items = [
        (f"**Benign sample size.** Cross-validation scores all {cv.benign_rows} benign rows. With "
        f"{cv.benign_false_alerts} false alerts observed, the benign false-alert rate is below "
        f"{_pct(bound, 3)} with 95% confidence (one-sided Clopper-Pearson). At that bound, one million "
        f"benign flows would raise about {bound * 1e6:,.0f} alerts. This data cannot show a rate near zero."),
        (f"**Benign rows that look like attacks.** {inside_text}{report.benign_attack_conflicts} feature "
        "vector(s) occur both as BENIGN and as an attack row, so no model on these features can get both right."),
        ("**Behaviour features cost some false alerts.** The model sees no operating-system fingerprint "
        "fields, no destination port and none of the other lab-specific groups (see Features), so a "
        "benign flow that behaves like an attack, "
        "for example a long connection that sends little, as slow-rate DoS does, gets an attack class. "
        f"With arg-max alone (no threshold), cross-validation gave {argmax_total} benign rows an attack "
        f"class ({argmax_text}); at the rules' thresholds {cv.benign_false_alerts} of them raise an alert. "
        "With the fingerprint fields the "
        "lab's attacking host would be recognisable: the count would be lower here but would not carry "
        "over to other networks."),
        "**Tiny classes.** " + ", ".join(small) + ": their per-class figures rest on a handful of rows "
        "and can swing by a whole row's worth. The data has no further rows for them."
        if small
        else "**Tiny classes.** None below 100 rows.",
        ("**Sampled class balance.** Classes were capped at 2,500 rows, so precision here does not "
        "reflect real traffic, which is mostly benign. Benign false alerts are counted per benign row "
        "for that reason."),
        ("**Rounds were chosen on the validation part,** which is also part of both cross-validations, "
        "so their figures are slightly optimistic."),
        *card_grouped.single_lab_limits(report),
    ]
    return "\n".join(f"- {item}" for item in items)


def render(report: TrainingReport, confusion_png: str) -> str:
    """Return the model card as Markdown."""
    test, cv = report.test, report.cv
    bound = upper_bound_95(cv.benign_false_alerts, cv.benign_rows)
    file_rows = [(f"`{path.name}`",) for path in report.files]
    label_rows = [(f"`{label}`", count) for label, count in report.label_counts.items()]
    dropped = (
        ", ".join(f"{reason}: {count}" for reason, count in report.dropped.items()) if report.dropped else "none"
    )
    thresholds = ", ".join(
        f"`{name}` {value:g}" for name, value in report.thresholds.items() if np.isfinite(value)
    )
    targets = report.targets
    cv_rate = cv.benign_false_alerts / cv.benign_rows if cv.benign_rows else float("nan")
    grouped = report.grouped
    target_rows = [
        (f"attack recall, random folds >= {_pct(targets['attack_recall'], 0)}", cv.attack_recall >= targets["attack_recall"]),
        (
            f"macro-F1 over classes with >= 100 rows, test part >= {targets['macro_f1_large']}",
            test.macro_f1_large >= targets["macro_f1_large"],
        ),
        (f"benign false alerts, random folds <= {_pct(targets['benign_alert_budget'])}", cv_rate <= targets["benign_alert_budget"]),
        (
            f"benign false alerts, leave-one-day-out <= {_pct(targets['benign_alert_budget'])}",
            grouped.benign_false_alert_rate <= targets["benign_alert_budget"],
        ),
        (f"grouped macro-F1 >= {targets['grouped_macro_f1']}", grouped.macro_f1 >= targets["grouped_macro_f1"]),
    ]
    targets_text = "; ".join(f"{name}: {'met' if met else '**not met**'}" for name, met in target_rows)

    sections = [
        "# ETA1 default model: model card",
        "Written by `convert/train.py` from the run below; do not edit by hand, re-run training instead.",
        card_grouped.threshold_note(report).strip(),
        "## Summary\n\n"
        + _table(
            ("figure", "value"),
            [
                *card_grouped.summary_rows(report),
                ("macro-F1, held-out test part, all classes", f"{test.macro_f1:.4f}"),
                (f"macro-F1, held-out test part, classes with >= 100 rows ({len(test.large_classes)})", f"{test.macro_f1_large:.4f}"),
                (
                    f"benign false alerts at the rules' thresholds, {report.cv_folds}-fold cross-validation over all benign rows",
                    (f"**{cv.benign_false_alerts} of {cv.benign_rows}** ({_pct(cv.benign_false_alerts / cv.benign_rows, 3)}; "
                    f"95% upper bound {_pct(bound, 3)})"),
                ),
                ("attack recall at the rules' thresholds, cross-validation (any attack alert)", _pct(cv.attack_recall)),
                ("attack recall with the right class, cross-validation", _pct(cv.attack_recall_right_class)),
                ("benign false alerts, held-out test part", f"{test.benign_false_alerts} of {test.benign_rows}"),
                ("attack recall, held-out test part", _pct(test.attack_recall)),
                ("rules' thresholds (min confidence)", thresholds),
                ("targets", targets_text),
                ("model file", f"`{report.model_path.name}`, {report.model_bytes:,} bytes, sha256 `{report.model_sha256}`"),
                ("training time", f"{report.seconds_total:.0f} s for the whole run, {report.seconds_final_fit:.1f} s for the shipped model's fit"),
            ],
        ),
        ("## Intended use\n\n"
        "Classify CICFlowMeter-4 flow records, as ETA1 reads them from Elasticsearch, into benign "
        "traffic or one ATT&CK technique. The daemon raises an alert when the arg-max class has a "
        "rule in `rules.yaml` and its probability reaches that rule's `min_confidence`. The model "
        "sees one flow at a time, so it cannot see attacks spread over many benign-looking flows."),
        "## Data\n\n"
        f"Directory `{report.data_dir.name}` ({len(report.files)} files): improved CIC-IDS2017 "
        "(Engelen, Rimmer and Joosen, 2021; re-extracted from the CIC-IDS2017 captures of Sharafaldin, "
        "Habibi Lashkari and Ghorbani, 2018), randomly sampled to at most 2,500 flows per label.\n\n"
        f"Rows used: {report.rows}. Rows left out: {dropped}. `- Attempted` labels "
        f"(attack attempts without payload): `--attempted {report.attempted_policy}`.\n\n"
        + _table(("dataset label", "rows"), label_rows)
        + f"\n\nDuplicates: {report.duplicate_rows} rows share their feature vector with another row. "
        f"{report.conflicting_vectors} distinct vectors occur under more than one class, "
        f"{report.benign_attack_conflicts} of them under BENIGN and an attack class. Splits keep identical "
        "vectors in one part.\n\n"
        f"Split (seed {report.seed}), stratified by dataset label: "
        + ", ".join(f"{part} {rows} rows" for part, rows in report.split_sizes.items())
        + ".",
        "## Class set\n\n"
        "One class per ATT&CK technique that the data covers, plus BENIGN. The alert carries only the "
        "technique, so separate classes for tools of one technique would split its probability "
        "between near-identical classes and lower the confidence that the threshold tests.\n\n"
        + _class_section(report),
        "## Features\n\n" + _feature_section(report),
        "## Generalisation: leave-scenario-out evaluation\n\n" + card_grouped.generalisation_section(report),
        "## Training and selection\n\n" + _training_section(report),
        "## Held-out test part\n\n"
        "The shipped model was trained on the training and validation parts and scored once on the "
        "test part. Precision, recall and F1 use the arg-max class, with no threshold.\n\n"
        + _scores_table(test)
        + f"\n\nmacro-F1 {test.macro_f1:.4f} over all {len(test.classes)} classes; {test.macro_f1_large:.4f} "
        f"over the classes with >= 100 rows ({', '.join(test.large_classes)}).\n\n"
        f"![Confusion matrix, held-out test part]({confusion_png})\n\n"
        "Outcome per dataset label at the rules' thresholds (attack: its own class's alert; benign: no alert):\n\n"
        + _by_label_table(report.test_by_label),
        "## Benign false alerts: cross-validation over all rows\n\n"
        f"{report.cv_folds}-fold cross-validation (the random folds of the variant table), stratified by dataset label, with identical "
        "vectors kept in one fold, using the shipped model's parameters and number of rounds. Every "
        f"row gets a prediction from a model that did not train on it.\n\n"
        f"**{cv.benign_false_alerts} of {cv.benign_rows} benign flows raised an alert** at the rules' thresholds. "
        f"Attack recall was {_pct(cv.attack_recall)} (any attack alert) and {_pct(cv.attack_recall_right_class)} "
        "(alert of the right class).\n\n"
        + _scores_table(cv)
        + "\n\n"
        + _by_label_table(report.cv_by_label)
        + "\n\nThe chosen variant's figures if every attack class had one shared threshold, from the same "
        "out-of-fold predictions (grouped folds and random folds):\n\n"
        + card_grouped.sweep_table(report.sweep)
        + "\n\n"
        + _false_alert_section(report),
        "## What the model is not expected to detect\n\n" + card_grouped.not_detected_section(report),
        "## What limits these figures\n\n" + _limits_section(report),
        "## Reproduce\n\n"
        f"```\n{report.command}\n```\n\n"
        "Versions: " + ", ".join(f"{name} {version}" for name, version in report.versions.items()) + ". "
        f"Data files: {', '.join(name for (name,) in file_rows)}.",
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def write_card(report: TrainingReport, card_path: Path, confusion_path: Path) -> None:
    """Write the confusion-matrix PNG and the model card; each goes to a temporary file first."""
    card_path.parent.mkdir(parents=True, exist_ok=True)
    plot_confusion(report.test, confusion_path, "Held-out test part")
    text = render(report, os.path.relpath(confusion_path, card_path.parent))
    temporary = card_path.with_name(f".{card_path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, card_path)
    logger.info("wrote %s and %s", card_path, confusion_path)
