"""Train the default XGBoost model, choose its hyperparameters on validation, and write the model card.

Steps (``python -m convert.train``, wrapped by ``make train``):

1. Read the labelled CSVs and map labels to the class set (``convert.dataset``).
2. Split 60/20/20 into train, validation and test, stratified by dataset label.
   Rows with identical feature vectors stay in one part (group split), so a copy
   of a training row never scores as a test row.
3. Train every grid point on train with early stopping on validation, and
   score it on validation at the rules' thresholds. Pick one (``select``).
4. Train the chosen point on train + validation and score it on test. This is
   the shipped model, so the test figures describe the shipped file.
5. Cross-validate the chosen point over all rows. This gives every BENIGN row
   an out-of-fold prediction, so the false-alert count has the largest n the
   data allows.
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
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import xgboost as xgb
from sklearn.model_selection import StratifiedGroupKFold

from convert import card, dataset, xgbmodel
from convert.dataset import AttemptedPolicy, Dataset, LabelMapper
from convert.evaluate import (
    LARGE_CLASS_ROWS,
    ThresholdPoint,
    evaluate,
    recall_by_label,
    threshold_sweep,
)
from convert.featureset import default_features
from convert.report import ClassSetComparison, GridResult, TrainConfig, TrainingReport
from sidecar import schema
from sidecar.errors import SidecarError
from sidecar.rules import RuleSet, load_rules

logger = logging.getLogger(__name__)

DEFAULT_MODEL = dataset.REPO_ROOT / "models" / "eta1.json"
DEFAULT_RULES = dataset.REPO_ROOT / "rules.yaml"
DEFAULT_SEED = 20170703  # first day of the CIC-IDS2017 capture

LEARNING_RATE = 0.1
MAX_ROUNDS = 400
EARLY_STOPPING_ROUNDS = 30

# Targets a grid point must meet on validation to be "feasible" (see select()).
TARGET_ATTACK_RECALL = 0.99
TARGET_MACRO_F1_LARGE = 0.98

FULL_GRID = tuple(
    TrainConfig(depth, power, benign)
    for depth in (4, 6, 8)
    for power in (0.0, 0.5, 1.0)
    for benign in (1.0, 4.0)
)
QUICK_GRID = (TrainConfig(6, 0.5, 1.0),)

SWEEP_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


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


def row_weights(labels: np.ndarray, y: np.ndarray, benign_index: int, config: TrainConfig) -> np.ndarray:
    """Weight rows so that small labels count more, normalised to mean 1.

    Weights are per dataset label, not per class, so the 73 web brute-force
    rows inside the large BruteForce class are weighted like a small label.
    """
    _, inverse, counts = np.unique(labels.astype(str), return_inverse=True, return_counts=True)
    per_label = (counts.max() / counts) ** config.label_weight_power
    weights = per_label[inverse] * np.where(y == benign_index, config.benign_weight, 1.0)
    return weights / weights.mean()


def xgb_params(n_classes: int, config: TrainConfig, seed: int, threads: int) -> dict[str, Any]:
    return {
        "objective": "multi:softprob",
        "num_class": n_classes,
        "eval_metric": "mlogloss",
        "tree_method": "hist",
        "max_depth": config.max_depth,
        "learning_rate": LEARNING_RATE,
        "seed": seed,
        "nthread": threads,
    }


def fit(
    data: Dataset,
    rows: np.ndarray,
    config: TrainConfig,
    seed: int,
    threads: int,
    rounds: int,
    validation: np.ndarray | None = None,
) -> tuple[xgb.Booster, int, float]:
    """Train on the given rows; with validation rows, stop early. Return (booster, rounds used, val log-loss)."""
    benign_index = data.classes.index(dataset.BENIGN)
    weights = row_weights(data.labels[rows], data.y[rows], benign_index, config)
    train_matrix = xgb.DMatrix(data.matrix[rows], label=data.y[rows], weight=weights, feature_names=list(data.features))
    params = xgb_params(len(data.classes), config, seed, threads)
    if validation is None:
        booster = xgb.train(params, train_matrix, num_boost_round=rounds)
        return booster, rounds, float("nan")

    validation_matrix = xgb.DMatrix(data.matrix[validation], label=data.y[validation], feature_names=list(data.features))
    history: dict[str, dict[str, list[float]]] = {}
    booster = xgb.train(
        params,
        train_matrix,
        num_boost_round=rounds,
        evals=[(validation_matrix, "validation")],
        early_stopping_rounds=EARLY_STOPPING_ROUNDS,
        evals_result=history,
        verbose_eval=False,
    )
    best = booster.best_iteration + 1
    booster = booster[:best]
    return booster, best, float(history["validation"]["mlogloss"][best - 1])


def predict(booster: xgb.Booster, data: Dataset, rows: np.ndarray) -> np.ndarray:
    matrix = xgb.DMatrix(data.matrix[rows], feature_names=list(data.features))
    return booster.predict(matrix).astype(np.float32)


def large_classes(data: Dataset) -> list[str]:
    return [name for name, count in data.class_counts().items() if count >= LARGE_CLASS_ROWS]


def select(grid: Sequence[GridResult]) -> GridResult:
    """Pick a grid point.

    Among the points that meet the targets on validation (attack recall and
    large-class macro-F1), take the fewest benign false alerts, then the best
    macro-F1 over all classes, then the lowest validation log-loss. If no point
    meets the targets, take the best macro-F1.
    """
    feasible = [result for result in grid if result.feasible]
    if feasible:
        return min(
            feasible,
            key=lambda r: (r.evaluation.benign_false_alerts, -r.evaluation.macro_f1, r.validation_logloss),
        )
    logger.warning("no grid point meets the targets on validation; taking the best macro-F1")
    return max(grid, key=lambda r: (r.evaluation.macro_f1, -r.validation_logloss))


SELECTION_RULE = (
    f"Among grid points with validation attack recall >= {TARGET_ATTACK_RECALL:.0%} and macro-F1 over the "
    f"large classes >= {TARGET_MACRO_F1_LARGE}, the fewest benign false alerts at the rules' thresholds, "
    "then the highest macro-F1 over all classes, then the lowest validation log-loss."
)


def threshold_range(points: Sequence[ThresholdPoint]) -> tuple[float, float] | None:
    """Return the (lowest, highest) swept thresholds with the fewest false alerts at target recall.

    Only points whose attack recall meets the target count; among them, those
    with the fewest benign false alerts form the range. None if no point
    meets the target.
    """
    meeting = [point for point in points if point.attack_recall >= TARGET_ATTACK_RECALL]
    if not meeting:
        return None
    fewest = min(point.benign_false_alerts for point in meeting)
    best = [point.threshold for point in meeting if point.benign_false_alerts == fewest]
    return min(best), max(best)


def run_grid(
    data: Dataset,
    split: Split,
    grid: Sequence[TrainConfig],
    rules: RuleSet,
    seed: int,
    threads: int,
    max_rounds: int = MAX_ROUNDS,
) -> tuple[list[GridResult], dict[TrainConfig, np.ndarray]]:
    """Train each grid point on train and score it on validation; also return the validation probabilities."""
    results = []
    validation_probabilities = {}
    large = large_classes(data)
    for config in grid:
        booster, rounds, logloss = fit(data, split.train, config, seed, threads, max_rounds, split.validation)
        probabilities = predict(booster, data, split.validation)
        evaluation = evaluate(data.y[split.validation], probabilities, data.classes, rules, large)
        feasible = (
            evaluation.attack_recall >= TARGET_ATTACK_RECALL and evaluation.macro_f1_large >= TARGET_MACRO_F1_LARGE
        )
        results.append(GridResult(config, rounds, logloss, evaluation, feasible))
        validation_probabilities[config] = probabilities
        logger.info(
            "grid %s: rounds=%s logloss=%.4f macro-F1=%.4f benign false alerts=%s/%s attack recall=%.4f",
            config.describe(), rounds, logloss, evaluation.macro_f1, evaluation.benign_false_alerts,
            evaluation.benign_rows, evaluation.attack_recall,
        )
    return results, validation_probabilities


def compare_label_classes(
    data: Dataset,
    split: Split,
    chosen: GridResult,
    rules: RuleSet,
    seed: int,
    threads: int,
    max_rounds: int = MAX_ROUNDS,
) -> ClassSetComparison:
    """Train the chosen grid point with one class per dataset label, for the card's class-set comparison.

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

    booster, _, _ = fit(relabelled, split.train, chosen.config, seed, threads, max_rounds, split.validation)
    probabilities = predict(booster, relabelled, split.validation)
    evaluation = evaluate(
        relabelled.y[split.validation], probabilities, label_names, label_rule_set, large_classes(relabelled)
    )
    return ClassSetComparison(
        name="one class per dataset label",
        classes=label_names,
        evaluation=evaluation,
        note="Same grid point, split and thresholds; only the class set differs.",
    )


def cross_validate(
    data: Dataset, config: TrainConfig, rounds: int, folds: int, seed: int, threads: int
) -> np.ndarray:
    """Return out-of-fold class probabilities for every row."""
    out = np.zeros((len(data.y), len(data.classes)), dtype=np.float32)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (train_rows, test_rows) in enumerate(splitter.split(data.matrix, data.labels, data.groups), start=1):
        booster, _, _ = fit(data, train_rows, config, seed, threads, rounds)
        out[test_rows] = predict(booster, data, test_rows)
        logger.info("cross-validation fold %s/%s done", fold, folds)
    return out


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

    # 1. data
    data_dir = dataset.resolve_data_dir(args.data)
    data = dataset.load_dataset(data_dir, default_features(), mapper)
    if args.max_rows_per_label:
        data = cap_rows_per_label(data, args.max_rows_per_label, args.seed)
    logger.info("%s rows, %s features, classes %s", len(data.y), len(data.features), data.class_counts())

    # 2. split
    split = split_rows(data, args.seed)

    # 3. grid on validation
    grid_points = QUICK_GRID if args.grid == "quick" else FULL_GRID
    grid, validation_probabilities = run_grid(
        data, split, grid_points, rules, args.seed, args.threads, args.max_rounds
    )
    chosen = select(grid)
    logger.info("chosen: %s, %s rounds", chosen.config.describe(), chosen.rounds)
    comparisons = [compare_label_classes(data, split, chosen, rules, args.seed, args.threads, args.max_rounds)]
    benign_indices = [i for i, name in enumerate(data.classes) if rules.rule_for(name) is None]
    validation_sweep = threshold_sweep(
        data.y[split.validation], validation_probabilities[chosen.config], benign_indices, SWEEP_THRESHOLDS
    )

    # 4. shipped model: train + validation, scored on test
    fit_started = time.perf_counter()
    train_rows = np.concatenate([split.train, split.validation])
    booster, _, _ = fit(data, train_rows, chosen.config, args.seed, args.threads, chosen.rounds)
    seconds_fit = time.perf_counter() - fit_started
    test_probabilities = predict(booster, data, split.test)
    large = large_classes(data)
    test = evaluate(data.y[split.test], test_probabilities, data.classes, rules, large)

    # 5. cross-validation over all rows
    oof = cross_validate(data, chosen.config, chosen.rounds, args.folds, args.seed, args.threads)
    cv = evaluate(data.y, oof, data.classes, rules, large)

    # 6. artefacts
    params = xgb_params(len(data.classes), chosen.config, args.seed, args.threads)
    params["num_boost_round"] = chosen.rounds
    saved = xgbmodel.save_model(
        booster,
        Path(args.out),
        data.features,
        data.classes,
        extra={
            "training": {
                "data_files": [path.name for path in data.files],
                "rows": len(data.y),
                "attempted_policy": args.attempted,
                "seed": args.seed,
                "params": params,
                "trained_on": "train + validation parts (80% of rows)",
            }
        },
    )
    duplicate_rows, conflicting, benign_attack = duplicate_figures(data)
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
        features=data.features,
        attempted_policy=args.attempted,
        seed=args.seed,
        split_sizes={"train": len(split.train), "validation": len(split.validation), "test": len(split.test)},
        duplicate_rows=duplicate_rows,
        conflicting_vectors=conflicting,
        benign_attack_conflicts=benign_attack,
        grid=grid,
        chosen=chosen,
        selection_rule=SELECTION_RULE,
        comparisons=comparisons,
        validation_sweep=validation_sweep,
        threshold_range=threshold_range(validation_sweep),
        test=test,
        test_by_label=recall_by_label(data.labels[split.test], data.y[split.test], test_probabilities, data.classes, rules),
        cv_folds=args.folds,
        cv=cv,
        cv_by_label=recall_by_label(data.labels, data.y, oof, data.classes, rules),
        cv_sweep=threshold_sweep(data.y, oof, benign_indices, SWEEP_THRESHOLDS),
        cv_false_alerts=false_alert_rows(data, oof, rules),
        cv_benign_argmax=benign_argmax_counts(data, oof, rules),
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
        targets={"attack_recall": TARGET_ATTACK_RECALL, "macro_f1_large": TARGET_MACRO_F1_LARGE},
    )
    card_path = Path(args.card) if args.card else saved.path.parent / "MODEL_CARD.md"
    card.write_card(report, card_path, card_path.parent / "confusion_matrix.png")
    return report


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
        prog="python -m convert.train",
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
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds for the false-alert count (default: %(default)s)")
    parser.add_argument(
        "--grid",
        choices=("full", "quick"),
        default="full",
        help=f"hyperparameter grid: full ({len(FULL_GRID)} points) or quick (1 point) (default: %(default)s)",
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
    parser.add_argument("--threads", type=int, default=0, help="XGBoost threads; 0 = all cores (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every grid point and fold")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = " ".join(["python -m convert.train", shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
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
