"""Classification figures for the model card: per-class scores, macro-F1, and alerts at the rules' thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from sidecar.rules import RuleSet

# Classes with at least this many rows in the whole data set count for "macro-F1 (large classes)".
LARGE_CLASS_ROWS = 100


@dataclass(frozen=True)
class ClassScore:
    """Precision, recall and F1 of one class on the arg-max prediction."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Evaluation:
    """Scores of one set of predictions against the true classes."""

    classes: tuple[str, ...]
    scores: list[ClassScore]
    macro_f1: float
    macro_f1_large: float
    large_classes: tuple[str, ...]
    confusion: np.ndarray  # rows = true class, columns = predicted class (arg-max)
    benign_rows: int
    benign_false_alerts: int  # benign rows that raise an alert at the rules' thresholds
    attack_rows: int
    attack_alerts: int  # attack rows that raise an alert of any attack class
    attack_alerts_right_class: int  # attack rows that raise the alert of their own class

    @property
    def attack_recall(self) -> float:
        return self.attack_alerts / self.attack_rows if self.attack_rows else float("nan")

    @property
    def attack_recall_right_class(self) -> float:
        return self.attack_alerts_right_class / self.attack_rows if self.attack_rows else float("nan")


def evaluate(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    rules: RuleSet,
    large_classes: Sequence[str],
) -> Evaluation:
    """Score arg-max predictions per class and count alerts at the rules' thresholds."""
    labels = np.arange(len(classes))
    decisions = rules.decide(probabilities, classes)
    predicted = decisions.predicted

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=labels, zero_division=0
    )
    scores = [
        ClassScore(name, float(p), float(r), float(f), int(s))
        for name, p, r, f, s in zip(classes, precision, recall, f1, support)
    ]
    large = [i for i, name in enumerate(classes) if name in set(large_classes)]

    benign = np.array([rules.rule_for(name) is None for name in classes])
    true_benign = benign[y_true]
    alert = decisions.alert
    return Evaluation(
        classes=tuple(classes),
        scores=scores,
        macro_f1=float(np.mean(f1)),
        macro_f1_large=float(np.mean(f1[large])) if large else float("nan"),
        large_classes=tuple(classes[i] for i in large),
        confusion=confusion_matrix(y_true, predicted, labels=labels),
        benign_rows=int(true_benign.sum()),
        benign_false_alerts=int((alert & true_benign).sum()),
        attack_rows=int((~true_benign).sum()),
        attack_alerts=int((alert & ~true_benign).sum()),
        attack_alerts_right_class=int((alert & ~true_benign & (predicted == y_true)).sum()),
    )


@dataclass(frozen=True)
class ThresholdPoint:
    """Alerts if every attack class had the same minimum confidence."""

    threshold: float
    benign_false_alerts: int
    benign_rows: int
    attack_recall: float


def threshold_sweep(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    benign_class_indices: Sequence[int],
    thresholds: Sequence[float],
) -> list[ThresholdPoint]:
    """Count benign false alerts and attack recall for a uniform threshold, one point per value."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    benign = np.isin(np.arange(probabilities.shape[1]), benign_class_indices)
    true_benign = benign[y_true]
    predicted_attack = ~benign[predicted]
    points = []
    for threshold in thresholds:
        alert = predicted_attack & (confidence >= np.float32(threshold))
        points.append(
            ThresholdPoint(
                threshold=float(threshold),
                benign_false_alerts=int((alert & true_benign).sum()),
                benign_rows=int(true_benign.sum()),
                attack_recall=float(alert[~true_benign].mean()) if (~true_benign).any() else float("nan"),
            )
        )
    return points


def recall_by_label(
    labels: np.ndarray,
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    rules: RuleSet,
) -> dict[str, tuple[int, int]]:
    """Return, per dataset label, (rows, rows whose outcome is right).

    An attack row is right when it raises its own class's alert. A benign row
    is right when it raises no alert.
    """
    decisions = rules.decide(probabilities, classes)
    benign = np.array([rules.rule_for(name) is None for name in classes])
    right = np.where(benign[y_true], ~decisions.alert, decisions.alert & (decisions.predicted == y_true))
    out: dict[str, tuple[int, int]] = {}
    for label in sorted(set(labels.tolist())):
        mask = labels == label
        out[label] = (int(mask.sum()), int(right[mask].sum()))
    return out
