"""Shared test helpers: real training flows and small XGBoost models trained on them in seconds."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from convert import dataset, xgbmodel
from convert.featureset import default_features

REPO_ROOT = dataset.REPO_ROOT
SHIPPED_XGB = REPO_ROOT / "models" / "eta1.json"
SHIPPED_ONNX = REPO_ROOT / "models" / "eta1.onnx"
SHIPPED_RULES = REPO_ROOT / "rules.yaml"


def data_dir() -> Path:
    """Return the training-data directory, or skip the test when it is absent."""
    path = dataset.resolve_data_dir(None)
    if not path.is_dir():
        pytest.skip(f"training data not found at {path}; set {dataset.DATA_DIR_ENV}")
    return path


@functools.lru_cache(maxsize=1)
def _real_flows() -> dataset.Dataset:
    return dataset.load_dataset(data_dir(), default_features())


def real_flows(rows_per_label: int = 40, seed: int = 7) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Return (matrix, y, features, classes): up to rows_per_label random real flows of each dataset label."""
    data = _real_flows()
    rng = np.random.default_rng(seed)
    picked = []
    for label in sorted(set(data.labels.tolist())):
        rows = np.flatnonzero(data.labels == label)
        picked.append(rng.choice(rows, size=min(rows_per_label, len(rows)), replace=False))
    rows = np.sort(np.concatenate(picked))
    return data.matrix[rows], data.y[rows], data.features, data.classes


def train_small_booster(
    matrix: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    feature_names: Sequence[str] | None,
    rounds: int = 15,
) -> xgb.Booster:
    params = {"objective": "multi:softprob", "num_class": n_classes, "max_depth": 3, "seed": 1, "nthread": 1}
    return xgb.train(params, xgb.DMatrix(matrix, label=y, feature_names=list(feature_names) if feature_names else None), rounds)


def small_model(directory: Path, name: str = "small.json", rows_per_label: int = 40) -> xgbmodel.XGBModel:
    """Train a few-second model on real flows and save it with its .meta.json into directory."""
    matrix, y, features, classes = real_flows(rows_per_label)
    booster = train_small_booster(matrix, y, len(classes), features)
    return xgbmodel.save_model(booster, directory / name, features, classes)
