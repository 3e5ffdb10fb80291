"""Results of a training run: the figures the model card prints, gathered in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from convert.evaluate import Evaluation, ThresholdPoint


@dataclass(frozen=True)
class TrainConfig:
    """One point of the hyperparameter grid."""

    max_depth: int
    label_weight_power: float  # row weight = (rows of the largest label / rows of this label) ** power
    benign_weight: float  # extra factor on BENIGN rows' weight

    def describe(self) -> str:
        return f"max_depth={self.max_depth}, label_weight_power={self.label_weight_power}, benign_weight={self.benign_weight}"


@dataclass
class GridResult:
    """A grid point trained on the training part and scored on the validation part."""

    config: TrainConfig
    rounds: int  # boosting rounds chosen by early stopping on validation log-loss
    validation_logloss: float
    evaluation: Evaluation
    feasible: bool  # meets the targets on validation (attack recall and large-class macro-F1)


@dataclass
class ClassSetComparison:
    """The chosen grid point trained with another class set, scored on the same validation part."""

    name: str
    classes: tuple[str, ...]
    evaluation: Evaluation
    note: str


@dataclass
class TrainingReport:
    """Everything the model card prints."""

    data_dir: Path
    files: list[Path]
    rows: int
    dropped: dict[str, int]
    label_counts: dict[str, int]
    class_counts: dict[str, int]
    classes: tuple[str, ...]
    class_labels: dict[str, tuple[str, ...]]  # class -> dataset labels merged into it
    class_reasons: dict[str, str]
    features: tuple[str, ...]
    attempted_policy: str
    seed: int
    split_sizes: dict[str, int]  # part -> rows
    duplicate_rows: int  # rows whose feature vector occurs more than once
    conflicting_vectors: int  # distinct feature vectors that occur under more than one class
    benign_attack_conflicts: int  # of those, vectors shared by a BENIGN row and an attack row
    grid: list[GridResult]
    chosen: GridResult
    selection_rule: str
    comparisons: list[ClassSetComparison]
    validation_sweep: list[ThresholdPoint]
    # (lowest, highest) swept threshold with the minimum validation false alerts at target recall
    threshold_range: tuple[float, float] | None
    test: Evaluation
    test_by_label: dict[str, tuple[int, int]]
    cv_folds: int
    cv: Evaluation
    cv_by_label: dict[str, tuple[int, int]]
    cv_sweep: list[ThresholdPoint]
    cv_false_alerts: pd.DataFrame  # benign rows that raised an alert in cross-validation, with context
    cv_benign_argmax: dict[str, int]  # attack class -> benign rows whose arg-max is that class, in cross-validation
    rules_path: Path
    thresholds: dict[str, float]
    params: dict[str, Any]
    model_path: Path
    model_sha256: str
    model_bytes: int
    seconds_total: float
    seconds_final_fit: float
    versions: dict[str, str]
    command: str
    targets: dict[str, float] = field(default_factory=dict)
