"""XGBoost model files: the booster (XGBoost JSON or UBJSON, never pickle) plus its feature list and classes.

The booster is saved as ``<name>.json`` or ``<name>.ubj``. The feature list,
the class labels and a little provenance go to ``<name>.meta.json`` beside
it, because a booster stores feature names but no class labels::

    {"features": [...], "classes": [...], "model_sha256": "...", ...}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xgboost as xgb

from sidecar.errors import ModelError

logger = logging.getLogger(__name__)

MODEL_SUFFIXES = (".json", ".ubj")


@dataclass
class XGBModel:
    """A booster with the feature list and class labels it was trained with."""

    path: Path
    booster: xgb.Booster
    features: tuple[str, ...]
    classes: tuple[str, ...]
    sha256: str  # of the model file's bytes
    metadata: dict[str, Any]


def meta_path(model_path: Path) -> Path:
    """Return the metadata file that belongs to a model file (``eta1.json`` -> ``eta1.meta.json``)."""
    return model_path.with_name(model_path.stem + ".meta.json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def booster_classes(booster: xgb.Booster) -> int:
    """Return the number of classes a booster predicts (2 for a binary objective)."""
    learner = json.loads(booster.save_config())["learner"]
    objective = learner["objective"]["name"]
    num_class = int(learner["learner_model_param"].get("num_class", "0"))
    if objective.startswith("multi:"):
        return num_class
    if objective.startswith("binary:"):
        return 2
    raise ModelError(
        f"objective {objective!r} is not a classifier; ETA1 needs multi:softprob, multi:softmax or binary:logistic"
    )


def save_model(
    booster: xgb.Booster,
    path: Path,
    features: Sequence[str],
    classes: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> XGBModel:
    """Write the booster and its metadata file; each file is written to a temporary name and renamed into place."""
    if path.suffix not in MODEL_SUFFIXES:
        raise ModelError(f"model file must end in {' or '.join(MODEL_SUFFIXES)}", path=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.feature_names = list(features)

    temporary = path.with_name(f".{path.name}.tmp{path.suffix}")
    booster.save_model(str(temporary))
    os.replace(temporary, path)
    digest = file_sha256(path)

    metadata: dict[str, Any] = {
        "features": list(features),
        "classes": list(classes),
        "model_file": path.name,
        "model_sha256": digest,
        "xgboost_version": xgb.__version__,
        **(extra or {}),
    }
    meta = meta_path(path)
    temporary_meta = meta.with_name(f".{meta.name}.tmp")
    temporary_meta.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary_meta, meta)
    logger.info("wrote %s (sha256 %s) and %s", path, digest[:12], meta)
    return XGBModel(path, booster, tuple(features), tuple(classes), digest, metadata)


def load_model(
    path: Path,
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> XGBModel:
    """Load a booster and check it against its feature list and classes.

    Features and classes not given are read from the ``.meta.json`` beside the
    model. Raises ModelError when the file is missing or unreadable, when the
    booster's feature count differs from the feature list, or when its class
    count differs from the class list.
    """
    if not path.is_file():
        raise ModelError("XGBoost model file not found; train one with `eta1 train`", path=str(path))

    metadata: dict[str, Any] = {}
    if features is None or classes is None:
        meta = meta_path(path)
        try:
            metadata = json.loads(meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(
                f"no feature list and class labels: {meta.name} is missing; pass --features and --classes",
                path=str(path),
            ) from None
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot read {meta.name}: {error}", path=str(path)) from error
        features = features if features is not None else metadata.get("features")
        classes = classes if classes is not None else metadata.get("classes")
        if not isinstance(features, list) or not isinstance(classes, list):
            raise ModelError(f"{meta.name} needs the lists 'features' and 'classes'", path=str(path))

    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except (xgb.core.XGBoostError, UnicodeDecodeError) as error:
        # NOTE: xgboost 3.2 raises UnicodeDecodeError while decoding its own error
        # message when the file starts with non-UTF-8 bytes (e.g. a pickle).
        text = str(error).strip() if isinstance(error, xgb.core.XGBoostError) else ""
        first_line = text.splitlines()[0] if text else "the file is not XGBoost JSON or UBJSON"
        raise ModelError(
            f"not a readable XGBoost JSON/UBJSON model ({first_line}); export it with Booster.save_model('model.json')",
            path=str(path),
        ) from error

    features, classes = tuple(features), tuple(classes)
    check_shape(booster, features, classes, str(path))
    return XGBModel(path, booster, features, classes, file_sha256(path), metadata)


def check_shape(booster: xgb.Booster, features: Sequence[str], classes: Sequence[str], where: str) -> None:
    """Raise ModelError unless the booster's feature and class counts match the lists."""
    n_features = booster.num_features()
    if n_features != len(features):
        raise ModelError(
            f"the model has {n_features} features (num_feature) but the feature list names {len(features)}; "
            "pass the feature list the model was trained with, in training order",
            path=where,
        )
    if booster.feature_names is not None and list(booster.feature_names) != list(features):
        differ = [(a, b) for a, b in zip(booster.feature_names, features) if a != b][:3]
        raise ModelError(
            f"the feature list differs from the names stored in the model, e.g. {differ} "
            "(model name, given name); pass the model's own feature list, in training order",
            path=where,
        )
    n_classes = booster_classes(booster)
    if n_classes != len(classes):
        raise ModelError(
            f"the model predicts {n_classes} classes but the class list names {len(classes)}; "
            "pass the class labels in the model's class-index order",
            path=where,
        )
    if len(set(classes)) != len(classes):
        raise ModelError(f"the class list {list(classes)} repeats a name; class names must be unique", path=where)
