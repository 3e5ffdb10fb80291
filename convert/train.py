"""Train the default XGBoost model, choose it on the leave-scenario-out evaluation, and write the model card.

Steps (``eta1 train``, wrapped by ``make train``):

1. Read the labelled CSVs and map labels to the class set (``convert.dataset``).
2. Make three partitions of the rows. A 60/20/20 split into train, validation
   and test, stratified by dataset label, with identical feature vectors in
   one part. Random cross-validation folds, built the same way. Grouped folds
   that hold out whole tools, hosts and days (``convert.grouped``).
3. Score every variant of the variant table (``convert.variants``). Early
   stopping on validation sets its rounds. Then it is cross-validated over
   the grouped folds and over the random folds, at several shared thresholds.
   Pick the variant and threshold to ship (``variants.select``).
4. Train the chosen variant on train + validation and score it on test. This
   is the shipped model, so the test figures describe the shipped file.
5. Score the chosen variant's out-of-fold predictions at the rules'
   thresholds. The random folds give every BENIGN row an out-of-fold
   prediction, so the within-capture false-alert count has the largest n the
   data allows. The grouped folds give the generalisation figures.
6. Write the model, its metadata, the model card and the confusion matrix.

Every random choice takes ``--seed``; the same data and seed give the same model.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
import xgboost as xgb
from sklearn.model_selection import StratifiedGroupKFold

from convert import card, dataset, fitting, grouped, variants, xgbmodel
from convert.dataset import AttemptedPolicy, Dataset, LabelMapper
from convert.evaluate import LARGE_CLASS_ROWS, evaluate, recall_by_label
from convert.fitting import MAX_ROUNDS, fit, predict, xgb_params
from convert.report import ClassSetComparison, TrainConfig, TrainingReport
from sidecar import schema
from sidecar.errors import SidecarError
from sidecar.rules import RuleSet, load_rules

logger = logging.getLogger(__name__)

DEFAULT_MODEL = dataset.REPO_ROOT / "models" / "eta1.json"
DEFAULT_RULES = dataset.REPO_ROOT / "rules.yaml"
DEFAULT_SEED = 20170703  # first day of the CIC-IDS2017 capture

SWEEP_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class Split:
    """Row indices of the three parts."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_rows(data: Dataset, seed: int) -> Split:
    """Split 60/20/20, stratified by dataset label, keeping identical feature vectors in one part."""
    everything = np.arange(len(data.y))
    outer = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    rest, test = next(outer.split(everything, data.labels, data.groups))
    inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed)
    train_pos, validation_pos = next(inner.split(rest, data.labels[rest], data.groups[rest]))
    return Split(rest[train_pos], rest[validation_pos], test)


def large_classes(data: Dataset) -> list[str]:
    return [name for name, count in data.class_counts().items() if count >= LARGE_CLASS_ROWS]


def compare_label_classes(
    data: Dataset,
    split: Split,
    config: TrainConfig,
    rules: RuleSet,
    seed: int,
    threads: int,
    max_rounds: int = MAX_ROUNDS,
) -> ClassSetComparison:
    """Train the chosen variant with one class per dataset label, for the card's class-set comparison.

    Each label class gets the threshold of the merged class that contains it, so
    the alert figures are comparable with the shipped class set.
    """
    label_names = tuple(sorted(set(data.labels.tolist()), key=lambda name: (name != dataset.BENIGN, name)))
    index = {name: i for i, name in enumerate(label_names)}
    relabelled = replace(data, classes=label_names, y=np.array([index[name] for name in data.labels], dtype=np.int64))

    label_rules = {}
    for name in label_names:
        merged_class = data.classes[int(data.y[np.flatnonzero(data.labels == name)[0]])]
        rule = rules.rule_for(merged_class)
        if rule is not None:
            label_rules[name] = replace(rule, class_name=name)
    benign = [name for name in label_names if name not in label_rules]
    label_rule_set = RuleSet(rules.path, rules.prefix, label_rules, benign)

    booster, _, _ = fit(relabelled, split.train, config, seed, threads, max_rounds, split.validation)
    probabilities = predict(booster, relabelled, split.validation)
    evaluation = evaluate(
        relabelled.y[split.validation], probabilities, label_names, label_rule_set, large_classes(relabelled)
    )
    shipped_booster, _, _ = fit(data, split.train, config, seed, threads, max_rounds, split.validation)
    shipped = evaluate(
        data.y[split.validation], predict(shipped_booster, data, split.validation), data.classes, rules, large_classes(data)
    )
    return ClassSetComparison(
        name="one class per dataset label",
        classes=label_names,
        shipped=shipped,
        evaluation=evaluation,
        note="Same variant, split and thresholds; only the class set differs.",
    )


def duplicate_figures(data: Dataset) -> tuple[int, int, int]:
    """Return (rows in duplicate groups, vectors under several classes, vectors shared by BENIGN and an attack)."""
    _, inverse, counts = np.unique(data.groups, return_inverse=True, return_counts=True)
    duplicate_rows = int((counts[inverse] > 1).sum())
    benign_index = data.classes.index(dataset.BENIGN)
    conflicting = benign_attack = 0
    order = np.argsort(data.groups, kind="stable")
    boundaries = np.flatnonzero(np.diff(data.groups[order])) + 1
    for members in np.split(order, boundaries):
        if len(members) < 2:
            continue
        present = set(data.y[members].tolist())
        if len(present) > 1:
            conflicting += 1
            if benign_index in present:
                benign_attack += 1
    return duplicate_rows, conflicting, benign_attack


def false_alert_rows(data: Dataset, probabilities: np.ndarray, rules: RuleSet) -> pd.DataFrame:
    """Return the benign rows that raise an alert, with their context, predicted class and confidence.

    Column ``inside attack`` names the attack label whose rows join the same
    two hosts (either direction) within that label's time span, if any: such a
    benign row is probably attack traffic labelled BENIGN.
    """
    decisions = rules.decide(probabilities, data.classes)
    benign = np.array([rules.rule_for(name) is None for name in data.classes])
    rows = np.flatnonzero(decisions.alert & benign[data.y])
    table = data.context.iloc[rows].copy()
    table["predicted"] = [data.classes[i] for i in decisions.predicted[rows]]
    table["confidence"] = decisions.confidence[rows]
    table["inside attack"] = [_inside_attack(data, int(row), benign) for row in rows]
    return table.reset_index(drop=True)


def benign_argmax_counts(data: Dataset, probabilities: np.ndarray, rules: RuleSet) -> dict[str, int]:
    """Count benign rows by the attack class their arg-max picks, ignoring thresholds."""
    benign = np.array([rules.rule_for(name) is None for name in data.classes])
    predicted = probabilities.argmax(axis=1)
    wrong = benign[data.y] & ~benign[predicted]
    counts = np.bincount(predicted[wrong], minlength=len(data.classes))
    return {name: int(count) for name, count in zip(data.classes, counts) if count}


def _inside_attack(data: Dataset, row: int, benign: np.ndarray) -> str:
    context = data.context
    needed = (schema.SRC_IP, schema.DST_IP, schema.TIMESTAMP)
    if not all(column in context.columns for column in needed):
        return ""
    times = pd.to_datetime(context[schema.TIMESTAMP], errors="coerce", format="mixed")
    pair = frozenset((context.at[row, schema.SRC_IP], context.at[row, schema.DST_IP]))
    when = times.iloc[row]
    if pd.isna(when):
        return ""
    attack_rows = ~benign[data.y]
    for label in sorted(set(data.labels[attack_rows].tolist())):
        members = np.flatnonzero(data.labels == label)
        span = times.iloc[members]
        if not span.min() <= when <= span.max():
            continue
        pairs = {frozenset(p) for p in zip(context[schema.SRC_IP].iloc[members], context[schema.DST_IP].iloc[members])}
        if pair in pairs:
            return label
    return ""


def train(args: argparse.Namespace) -> TrainingReport:
    """Run the whole pipeline and write the artefacts; return the report the card was written from."""
    started = time.perf_counter()
    rules = load_rules(args.rules)
    mapper = LabelMapper(attempted=AttemptedPolicy(args.attempted))
    rules.check_classes(mapper.class_names)
    table = variants.default_variants() if args.grid == "full" else variants.quick_variants()

    # 1. data, with every feature some variant uses
    data_dir = dataset.resolve_data_dir(args.data)
    data = dataset.load_dataset(data_dir, variants.candidate_features(table), mapper)
    if args.max_rows_per_label:
        data = cap_rows_per_label(data, args.max_rows_per_label, args.seed)
    # Rows equal on the features all variants share stay together in every split.
    shared = fitting.feature_subset(data, variants.common_features(table))
    data = replace(data, groups=dataset.duplicate_groups(shared.matrix))
    logger.info("%s rows, %s candidate features, classes %s", len(data.y), len(data.features), data.class_counts())

    # 2. random split, random folds, grouped folds
    split = split_rows(data, args.seed)
    cv_fold = fitting.random_folds(data, args.folds, args.seed)
    assignment = grouped.assign_folds(
        data.labels, _context_column(data, schema.SRC_IP), _context_column(data, schema.TIMESTAMP), args.seed
    )

    # 3. variant table
    large = tuple(large_classes(data))
    run = variants.VariantRun(
        data, split.train, split.validation, cv_fold, assignment, rules, large, args.seed, args.threads, args.max_rounds
    )
    results, predictions = variants.run_variants(run, table)
    chosen, chosen_point = variants.select(results)
    logger.info("chosen: %r at threshold %s, %s rounds", chosen.variant.name, chosen_point.threshold, chosen.rounds)
    _warn_on_threshold_mismatch(rules, data.classes, chosen_point.threshold)
    shipped = fitting.feature_subset(data, chosen.variant.features)
    config = chosen.variant.config
    comparisons = [compare_label_classes(shipped, split, config, rules, args.seed, args.threads, args.max_rounds)]

    # 4. shipped model: train + validation, scored on test
    fit_started = time.perf_counter()
    train_rows = np.concatenate([split.train, split.validation])
    booster, _, _ = fit(shipped, train_rows, config, args.seed, args.threads, chosen.rounds)
    seconds_fit = time.perf_counter() - fit_started
    test_probabilities = predict(booster, shipped, split.test)
    test = evaluate(shipped.y[split.test], test_probabilities, shipped.classes, rules, large)

    # 5. the chosen variant's out-of-fold predictions at the rules' thresholds
    grouped_oof, cv_oof = predictions[chosen.variant.name]
    cv = evaluate(shipped.y, cv_oof, shipped.classes, rules, large)
    generalisation = grouped.grouped_evaluation(
        shipped.y, assignment, grouped_oof, shipped.classes, rules, groups=dataset.duplicate_groups(shipped.matrix)
    )
    cv_technique_f1 = grouped.technique_macro_f1(shipped.y, cv_oof, shipped.classes, rules)
    sweep = variants.score_points(shipped, assignment, grouped_oof, cv_oof, rules, SWEEP_THRESHOLDS, large)
    per_rule = variants.per_rule_points(
        shipped, assignment, grouped_oof, cv_oof, rules, variants.PER_RULE_THRESHOLDS, large
    )

    # 6. artefacts
    params = xgb_params(len(shipped.classes), config, args.seed, args.threads)
    params["num_boost_round"] = chosen.rounds
    saved = xgbmodel.save_model(
        booster,
        Path(args.out),
        shipped.features,
        shipped.classes,
        extra={
            "training": {
                "data_files": [path.name for path in data.files],
                "rows": len(data.y),
                "attempted_policy": args.attempted,
                "seed": args.seed,
                "variant": chosen.variant.name,
                "params": params,
                "trained_on": "train + validation parts (80% of rows)",
            }
        },
    )
    duplicate_rows, conflicting, benign_attack = duplicate_figures(shipped)
    report = TrainingReport(
        data_dir=data_dir,
        files=data.files,
        rows=len(data.y),
        dropped=dict(data.dropped),
        label_counts=data.label_counts(),
        class_counts=data.class_counts(),
        classes=data.classes,
        class_labels={c.name: c.labels for c in mapper.classes},
        class_reasons={c.name: c.reason for c in mapper.classes},
        features=shipped.features,
        attempted_policy=args.attempted,
        seed=args.seed,
        split_sizes={"train": len(split.train), "validation": len(split.validation), "test": len(split.test)},
        duplicate_rows=duplicate_rows,
        conflicting_vectors=conflicting,
        benign_attack_conflicts=benign_attack,
        variants=results,
        chosen=chosen,
        chosen_point=chosen_point,
        selection_rule=variants.SELECTION_RULE,
        comparisons=comparisons,
        grouped_folds=assignment.folds,
        grouped=generalisation,
        cv_technique_f1=cv_technique_f1,
        sweep=sweep,
        per_rule=per_rule,
        test=test,
        test_by_label=recall_by_label(data.labels[split.test], data.y[split.test], test_probabilities, data.classes, rules),
        cv_folds=args.folds,
        cv=cv,
        cv_by_label=recall_by_label(data.labels, data.y, cv_oof, data.classes, rules),
        cv_false_alerts=false_alert_rows(data, cv_oof, rules),
        cv_benign_argmax=benign_argmax_counts(data, cv_oof, rules),
        rules_path=Path(args.rules),
        thresholds={name: float(value) for name, value in zip(data.classes, rules.thresholds(data.classes))},
        params=params,
        model_path=saved.path,
        model_sha256=saved.sha256,
        model_bytes=saved.path.stat().st_size,
        seconds_total=time.perf_counter() - started,
        seconds_final_fit=seconds_fit,
        versions=versions(),
        command=args.command,
        targets={
            "attack_recall": variants.TARGET_ATTACK_RECALL,
            "macro_f1_large": variants.TARGET_MACRO_F1_LARGE,
            "benign_alert_budget": variants.BENIGN_ALERT_BUDGET,
            "grouped_macro_f1": variants.GOAL_GROUPED_MACRO_F1,
            "grouped_benign_alert_rate": variants.GOAL_BENIGN_ALERT_RATE,
        },
    )
    card_path = Path(args.card) if args.card else saved.path.parent / "MODEL_CARD.md"
    card.write_card(report, card_path, card_path.parent / "confusion_matrix.png")
    return report


def _context_column(data: Dataset, column: str) -> np.ndarray | None:
    if column not in data.context.columns:
        return None
    return data.context[column].to_numpy()


def _warn_on_threshold_mismatch(rules: RuleSet, classes: Sequence[str], chosen: float) -> None:
    """Log a warning when the rules file's thresholds differ from the chosen shared threshold."""
    used = {float(value) for value in rules.thresholds(classes) if np.isfinite(value)}
    if used != {float(np.float32(chosen))}:
        logger.warning(
            "the rules file %s uses min_confidence %s but the variant table chose %s. "
            "Set min_confidence: %s for every attack rule, then train again",
            rules.path, sorted(used), chosen, chosen,
        )


def cap_rows_per_label(data: Dataset, limit: int, seed: int) -> Dataset:
    """Keep at most `limit` random rows of each dataset label (for quick runs and tests)."""
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for label in sorted(set(data.labels.tolist())):
        rows = np.flatnonzero(data.labels == label)
        keep.append(rng.choice(rows, size=min(limit, len(rows)), replace=False))
    rows = np.sort(np.concatenate(keep))
    return replace(
        data,
        matrix=data.matrix[rows],
        y=data.y[rows],
        labels=data.labels[rows],
        groups=data.groups[rows],
        context=data.context.iloc[rows].reset_index(drop=True),
    )


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "xgboost": xgb.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eta1 train",
        description="Train the ETA1 XGBoost model on labelled CICFlowMeter CSVs, write it with its "
        "metadata, and write the model card and confusion matrix beside it.",
    )
    parser.add_argument(
        "--data",
        help=f"directory of labelled *.csv / *.csv.gz flow files (default: ${dataset.DATA_DIR_ENV}, "
        f"else {dataset.DEFAULT_DATA_DIR} relative to the repository root)",
    )
    parser.add_argument(
        "--out",
        default=str(DEFAULT_MODEL),
        help="model file to write, .json (XGBoost JSON) or .ubj (UBJSON); the feature list and classes "
        "go to <name>.meta.json beside it (default: %(default)s)",
    )

    parser.add_argument("--rules", default=str(DEFAULT_RULES), help="rules file whose thresholds the figures use (default: %(default)s)")
    parser.add_argument("--card", help="model card to write (default: MODEL_CARD.md beside --out)")
    parser.add_argument(
        "--attempted",
        choices=[policy.value for policy in AttemptedPolicy],
        default=AttemptedPolicy.BENIGN.value,
        help="what to do with '<attack> - Attempted' rows, attack attempts without payload: "
        "label them BENIGN, drop them, or label them as the attack (default: %(default)s)",
    )

    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for splits, sampling and XGBoost (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="random cross-validation folds, for the within-capture figures. The grouped evaluation always uses 5 (default: %(default)s)")
    parser.add_argument(
        "--grid",
        choices=("full", "quick"),
        default="full",
        help=f"variant table: full ({len(variants.default_variants())} variants, each cross-validated twice) "
        "or quick (only the variant with the default feature set) (default: %(default)s)",
    )
    parser.add_argument(
        "--max-rows-per-label",
        type=int,
        default=0,
        metavar="N",
        help="use at most N random rows of each label, for quick trial runs; 0 = all rows (default: %(default)s)",
    )
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=MAX_ROUNDS,
        help="most boosting rounds per fit; early stopping on validation usually ends sooner (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="XGBoost threads per fit; 0 = all cores. The default of 1 is the fastest for these small, "
        "shallow models on a busy machine, where OpenMP threads wait on each other (default: %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each variant's figures at every threshold")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = " ".join(["eta1 train", shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = train(args)
    except SidecarError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    cv = report.cv
    print(
        f"wrote {report.model_path} ({report.model_bytes} bytes, sha256 {report.model_sha256[:12]}) in "
        f"{report.seconds_total:.0f} s\n"
        f"test: macro-F1 {report.test.macro_f1:.4f} (large classes {report.test.macro_f1_large:.4f}), "
        f"attack recall {report.test.attack_recall:.4f}\n"
        f"cross-validation: {cv.benign_false_alerts} false alerts of {cv.benign_rows} benign flows, "
        f"attack recall {cv.attack_recall:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
