"""XGBoost fits on a Dataset: row weights, parameters, training with or without early stopping, prediction.

Shared by the training pipeline (``convert.train``) and the variant
comparison (``convert.variants``), so every figure in the model card comes
from models trained the same way as the shipped one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import xgboost as xgb
from sklearn.model_selection import StratifiedGroupKFold

from convert import dataset
from convert.dataset import Dataset
from convert.report import TrainConfig

MAX_ROUNDS = 400
EARLY_STOPPING_ROUNDS = 30


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
        "learning_rate": config.learning_rate,
        "seed": seed,
        "nthread": threads,
    }


def gate_params(config: TrainConfig, seed: int, threads: int) -> dict[str, Any]:
    """Parameters of the benign-versus-attack gate: the class model's, with a binary objective."""
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_depth": config.max_depth,
        "learning_rate": config.learning_rate,
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
    gate: bool = False,
) -> tuple[xgb.Booster, int, float]:
    """Train on the given rows; with validation rows, stop early. Return (booster, rounds used, val log-loss).

    With ``gate`` the booster is a binary benign-versus-attack model (label 1
    for every attack class) instead of the class model.
    """
    benign_index = data.classes.index(dataset.BENIGN)
    labels = (data.y != benign_index).astype(np.int64) if gate else data.y
    params = gate_params(config, seed, threads) if gate else xgb_params(len(data.classes), config, seed, threads)
    metric = params["eval_metric"]
    weights = row_weights(data.labels[rows], data.y[rows], benign_index, config)
    train_matrix = xgb.DMatrix(data.matrix[rows], label=labels[rows], weight=weights, feature_names=list(data.features))
    if validation is None:
        booster = xgb.train(params, train_matrix, num_boost_round=rounds)
        return booster, rounds, float("nan")

    validation_matrix = xgb.DMatrix(data.matrix[validation], label=labels[validation], feature_names=list(data.features))
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
    return booster, best, float(history["validation"][metric][best - 1])


def predict(booster: xgb.Booster, data: Dataset, rows: np.ndarray) -> np.ndarray:
    matrix = xgb.DMatrix(data.matrix[rows], feature_names=list(data.features))
    return booster.predict(matrix).astype(np.float32)


def random_folds(data: Dataset, folds: int, seed: int) -> np.ndarray:
    """Return a fold index per row: stratified by dataset label, identical feature vectors in one fold."""
    out = np.zeros(len(data.y), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, test_rows) in enumerate(splitter.split(data.matrix, data.labels, data.groups)):
        out[test_rows] = fold
    return out


def out_of_fold(
    data: Dataset,
    fold: np.ndarray,
    config: TrainConfig,
    rounds: int,
    seed: int,
    threads: int,
    gate: bool = False,
) -> np.ndarray:
    """Return out-of-fold predictions for every row: class probabilities, or P(attack) with ``gate``."""
    width = 1 if gate else len(data.classes)
    out = np.zeros((len(data.y), width), dtype=np.float32)
    for k in np.unique(fold):
        train_rows = np.flatnonzero(fold != k)
        test_rows = np.flatnonzero(fold == k)
        booster, _, _ = fit(data, train_rows, config, seed, threads, rounds, gate=gate)
        out[test_rows] = predict(booster, data, test_rows).reshape(len(test_rows), width)
    return out[:, 0] if gate else out


def gate_probabilities(class_probabilities: np.ndarray, attack_probability: np.ndarray, benign_index: int) -> np.ndarray:
    """Fold a benign-versus-attack gate into one probability row per flow.

    The class model's most likely attack class gets the gate's P(attack), the
    benign class gets 1 - P(attack), and every other class gets 0. So the
    arg-max is that attack class exactly when P(attack) > 0.5. At any threshold
    of 0.5 or more, the rules then alert exactly when P(attack) reaches it.
    """
    attack = class_probabilities.copy()
    attack[:, benign_index] = -np.inf
    best_attack = attack.argmax(axis=1)
    out = np.zeros_like(class_probabilities, dtype=np.float32)
    rows = np.arange(len(out))
    out[rows, benign_index] = 1.0 - attack_probability
    out[rows, best_attack] = attack_probability
    return out


def feature_subset(data: Dataset, features: Sequence[str]) -> Dataset:
    """Return a view of the data with only the given feature columns, in the given order."""
    missing = [name for name in features if name not in data.features]
    if missing:
        raise ValueError(f"features {missing} are missing from the loaded data. Load the dataset with every variant's features")
    columns = [data.features.index(name) for name in features]
    return replace(data, features=tuple(features), matrix=data.matrix[:, columns])
