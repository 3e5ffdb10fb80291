"""Results of a training run: the figures the model card prints, gathered in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from convert.evaluate import Evaluation
from convert.grouped import GroupedEvaluation


@dataclass(frozen=True)
class TrainConfig:
    """One point of the hyperparameter grid."""

    max_depth: int
    label_weight_power: float  # row weight = (rows of the largest label / rows of this label) ** power
    benign_weight: float  # extra factor on BENIGN rows' weight
    learning_rate: float = 0.1

    def describe(self) -> str:
        return (
            f"max_depth={self.max_depth}, learning_rate={self.learning_rate}, "
            f"label_weight_power={self.label_weight_power}, benign_weight={self.benign_weight}"
        )


@dataclass(frozen=True)
class Variant:
    """One row of the variant table: a feature set and training setup, scored on both evaluations."""

    name: str
    change: str  # what this row changes against the row above it
    features: tuple[str, ...]
    config: TrainConfig
    gate: bool = False  # a benign-versus-attack model in front of the class model (a second model to serve)


@dataclass
class VariantPoint:
    """A variant's out-of-fold figures with one shared threshold for every attack class."""

    threshold: float
    grouped: GroupedEvaluation  # leave-scenario-out folds
    cv: Evaluation  # random folds, stratified by label
    feasible: bool  # meets the within-capture targets and the benign false-alert budget in both evaluations
    cv_technique_f1: float = float("nan")  # random folds scored like the grouped ones (grouped.technique_macro_f1)


@dataclass
class VariantResult:
    """A variant's rounds (early stopping on the validation part) and its figures at each candidate threshold."""

    variant: Variant
    rounds: int
    validation_logloss: float
    points: list[VariantPoint]
    shippable: bool  # False when serving it would need more than the single ONNX class model


@dataclass
class ClassSetComparison:
    """The chosen variant trained with the shipped and with another class set, scored on the validation part."""

    name: str
    classes: tuple[str, ...]
    shipped: Evaluation  # the shipped class set, same variant, split and thresholds
    evaluation: Evaluation  # the other class set
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
    variants: list[VariantResult]
    chosen: VariantResult
    chosen_point: VariantPoint  # the chosen variant at the chosen threshold
    selection_rule: str
    comparisons: list[ClassSetComparison]
    grouped_folds: int
    grouped: GroupedEvaluation  # the chosen variant's grouped out-of-fold predictions at the rules' thresholds
    cv_technique_f1: float  # the grouped metric computed on the random folds' predictions
    sweep: list[VariantPoint]  # the chosen variant at more shared thresholds
    per_rule: list[tuple[str, VariantPoint]]  # (technique, point): only that rule's threshold moved
    test: Evaluation
    test_by_label: dict[str, tuple[int, int]]
    cv_folds: int
    cv: Evaluation
    cv_by_label: dict[str, tuple[int, int]]
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
