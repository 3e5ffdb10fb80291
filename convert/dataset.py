"""Labelled flow data for training: read CSV files, map labels to model classes, build the matrix.

Feature values go through ``sidecar.features.FeatureExtractor``, the code the
daemon uses too, so training and serving treat every value the same way.

Labels are matched after folding case, dashes and whitespace. The spellings
of the original CIC-IDS2017 CSVs (``Web Attack – Brute Force`` with an en dash
or its garbled form, ``PortScan``, ``Bot``) therefore resolve to the same label
as those of this project's training data (improved CIC-IDS2017) and of
CSE-CIC-IDS2018.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import pandas as pd

from sidecar import schema
from sidecar.errors import SidecarError
from sidecar.features import FeatureExtractor

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "ETA1_DATA_DIR"
DEFAULT_DATA_DIR = "../shared/data/cicids2017_improved_rnd2500"  # relative to the repository root
DATA_PATTERNS = ("*.csv", "*.csv.gz")

# Identifier columns kept beside the matrix, for listing false alerts in the model card.
CONTEXT_COLUMNS = (schema.SRC_IP, schema.SRC_PORT, schema.DST_IP, schema.DST_PORT, schema.TIMESTAMP)

BENIGN = "BENIGN"
ATTEMPTED_SUFFIX = " - attempted"


class DatasetError(SidecarError):
    """Training data that cannot be read or labelled."""


class AttemptedPolicy(str, Enum):
    """Treatment of ``<attack> - Attempted`` rows, attack attempts that carried no payload."""

    BENIGN = "benign"  # label them BENIGN: the flow shows no attack behaviour
    DROP = "drop"  # leave them out of training and evaluation
    ATTACK = "attack"  # label them as the attack they attempted


@dataclass(frozen=True)
class ModelClass:
    """One model class and the dataset labels it merges."""

    name: str
    labels: tuple[str, ...]
    reason: str


# The default class set: one class per ATT&CK technique the data covers, plus BENIGN.
DEFAULT_CLASSES: tuple[ModelClass, ...] = (
    ModelClass(BENIGN, (BENIGN,), "Normal traffic; raises no alert."),
    ModelClass(
        "DoS",
        ("DoS Hulk", "DoS GoldenEye", "DoS Slowloris", "DoS Slowhttptest"),
        "All four tools are Endpoint Denial of Service (T1499). One class keeps their "
        "probability mass together, and a DoS tool the model never saw can still land in it.",
    ),
    ModelClass("DDoS", ("DDoS",), "LOIC flood from several hosts: Network Denial of Service (T1498)."),
    ModelClass(
        "PortScan",
        ("Portscan", "Infiltration - Portscan"),
        "Both labels are the same scanning behaviour (Network Service Discovery, T1046) and differ "
        "only in the scanning host and the day; 55 feature vectors carry both labels.",
    ),
    ModelClass(
        "BruteForce",
        ("FTP-Patator", "SSH-Patator", "Web Attack - Brute Force"),
        "Password guessing against FTP, SSH and a web login: Brute Force (T1110). The 73 web rows "
        "would be a tiny class of their own.",
    ),
    ModelClass(
        "Exploit",
        ("Web Attack - SQL Injection", "Heartbleed"),
        "Both exploit a public-facing service (T1190); with 13 and 11 rows neither supports a class alone.",
    ),
    ModelClass("XSS", ("Web Attack - XSS",), "Drive-by Compromise (T1189); 18 rows."),
    ModelClass("Botnet", ("Botnet",), "Ares bot's HTTP command channel: Application Layer Protocol: Web Protocols (T1071.001)."),
    ModelClass("Infiltration", ("Infiltration",), "The compromise itself: User Execution: Malicious File (T1204.002); 36 rows."),
)

# Label spellings of other releases -> the label used in DEFAULT_CLASSES.
# Keys are compared after _fold_label.
LABEL_ALIASES: dict[str, str] = {
    # Original CIC-IDS2017 (MachineLearningCVE)
    "bot": "Botnet",
    "portscan": "Portscan",
    "web attack - sql injection": "Web Attack - SQL Injection",
    # CSE-CIC-IDS2018
    "ddos attacks-loic-http": "DDoS",
    "ddos attack-hoic": "DDoS",
    "ddos attack-loic-udp": "DDoS",
    "dos attacks-hulk": "DoS Hulk",
    "dos attacks-goldeneye": "DoS GoldenEye",
    "dos attacks-slowloris": "DoS Slowloris",
    "dos attacks-slowhttptest": "DoS Slowhttptest",
    "ftp-bruteforce": "FTP-Patator",
    "ssh-bruteforce": "SSH-Patator",
    "brute force -web": "Web Attack - Brute Force",
    "brute force -xss": "Web Attack - XSS",
    "sql injection": "Web Attack - SQL Injection",
    "infilteration": "Infiltration",
}

# En dash, em dash, the replacement character and cp1252's en dash decoded as
# Latin-1: how the original CSVs' "Web Attack – Brute Force" arrives in practice.
_DASHES = re.compile("[\u2013\u2014\ufffd\x96]|\u00e2\u20ac\u201c")


def _fold_label(label: str) -> str:
    return " ".join(_DASHES.sub("-", label).split()).casefold()


@dataclass
class LabelMapper:
    """Map raw dataset labels to model class names."""

    classes: Sequence[ModelClass] = DEFAULT_CLASSES
    attempted: AttemptedPolicy = AttemptedPolicy.BENIGN
    _labels: dict[str, str] = field(init=False, repr=False)  # folded spelling -> label as DEFAULT_CLASSES spells it
    _class_of_label: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._labels = {}
        self._class_of_label = {}
        for model_class in self.classes:
            for label in model_class.labels:
                self._labels[_fold_label(label)] = label
                self._class_of_label[label] = model_class.name
        for alias, label in LABEL_ALIASES.items():
            if _fold_label(label) in self._labels:
                self._labels.setdefault(alias, self._labels[_fold_label(label)])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(model_class.name for model_class in self.classes)

    def resolve(self, raw: str) -> tuple[str | None, str]:
        """Return (class name, canonical label) for a raw label.

        The class is None when the attempted-label policy drops the row. The
        canonical label keeps an `` - Attempted`` suffix. Raises DatasetError
        for a label no class covers.
        """
        folded = _fold_label(str(raw))
        attempted = folded.endswith(ATTEMPTED_SUFFIX)
        if attempted:
            folded = folded[: -len(ATTEMPTED_SUFFIX)]
        label = self._labels.get(folded)
        if label is None:
            raise DatasetError(f"unknown label {raw!r}")
        if not attempted:
            return self._class_of_label[label], label
        if self.attempted is AttemptedPolicy.DROP:
            return None, label + " - Attempted"
        if self.attempted is AttemptedPolicy.BENIGN:
            return BENIGN, label + " - Attempted"
        return self._class_of_label[label], label + " - Attempted"


@dataclass
class Dataset:
    """Feature matrix and labels of the usable training rows."""

    features: tuple[str, ...]
    classes: tuple[str, ...]
    matrix: np.ndarray  # float32 (n, n_features), NaN = missing
    y: np.ndarray  # int64 class index per row
    labels: np.ndarray  # the dataset label of each row (after alias mapping), for stratification and weights
    groups: np.ndarray  # int64 id shared by rows with identical feature vectors
    context: pd.DataFrame  # identifier columns (addresses, ports, time) and source file, one row per matrix row
    files: list[Path]
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> number of rows left out

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.y, minlength=len(self.classes))
        return {name: int(count) for name, count in zip(self.classes, counts)}

    def label_counts(self) -> dict[str, int]:
        return dict(Counter(self.labels.tolist()).most_common())


def resolve_data_dir(argument: str | None) -> Path:
    """Pick the data directory: the argument, else $ETA1_DATA_DIR, else the default beside the repository."""
    chosen = argument or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    path = Path(chosen)
    if not path.is_absolute() and argument is None and DATA_DIR_ENV not in os.environ:
        path = REPO_ROOT / path
    return path


def data_files(data_dir: Path) -> list[Path]:
    """List the CSV files of a data directory, sorted by name; raise if there are none."""
    if not data_dir.is_dir():
        raise DatasetError(
            f"data directory {data_dir} not found; pass --data DIR or set {DATA_DIR_ENV} "
            "to a directory of labelled CICFlowMeter CSV files"
        )
    files = sorted({path for pattern in DATA_PATTERNS for path in data_dir.glob(pattern)})
    if not files:
        raise DatasetError(f"no *.csv or *.csv.gz files in {data_dir}; point --data at the labelled flow CSVs")
    return files


def _label_column(frame: pd.DataFrame, path: Path) -> str:
    for column in frame.columns:
        if schema.canonical_name(str(column)) == schema.LABEL:
            return str(column)
    raise DatasetError(f"{path} has no 'Label' column; training needs one label per flow")


def load_dataset(
    data_dir: Path,
    features: Sequence[str],
    mapper: LabelMapper | None = None,
) -> Dataset:
    """Read every CSV in data_dir and build the training matrix.

    Each file is featurised on its own, so files with different naming schemes
    can be mixed. Rows that the feature extractor rejects, and rows the
    attempted-label policy drops, are counted in ``Dataset.dropped``.
    """
    mapper = mapper or LabelMapper()
    extractor = FeatureExtractor(features)
    files = data_files(data_dir)

    matrices: list[np.ndarray] = []
    class_names: list[str] = []
    labels: list[str] = []
    contexts: list[pd.DataFrame] = []
    dropped: Counter[str] = Counter()
    unknown: Counter[str] = Counter()

    for path in files:
        frame = pd.read_csv(path, low_memory=False)
        label_column = _label_column(frame, path)
        batch = extractor.from_frame(frame)
        for reason, count in batch.reasons().items():
            dropped[f"unusable features ({reason})"] += count

        raw_labels = frame[label_column].astype(str).to_numpy()[batch.rows]
        keep = np.ones(len(batch.rows), dtype=bool)
        row_classes: list[str] = []
        row_labels: list[str] = []
        for position, raw in enumerate(raw_labels):
            try:
                name, label = mapper.resolve(raw)
            except DatasetError:
                unknown[raw] += 1
                keep[position] = False
                continue
            if name is None:
                dropped["attempted attack, dropped by --attempted drop"] += 1
                keep[position] = False
                continue
            row_classes.append(name)
            row_labels.append(label)

        matrices.append(batch.matrix[keep])
        class_names.extend(row_classes)
        labels.extend(row_labels)
        contexts.append(_context(frame, batch.rows[keep], path))
        logger.info("read %s: %s rows, %s usable", path.name, len(frame), int(keep.sum()))

    if unknown:
        listing = ", ".join(f"{label!r} ({count} rows)" for label, count in unknown.most_common())
        raise DatasetError(
            f"unknown label(s) in {data_dir}: {listing}. Known labels: "
            f"{sorted({label for c in mapper.classes for label in c.labels})}. "
            "Add the spelling to LABEL_ALIASES in convert/dataset.py, or remove those rows."
        )

    matrix = np.concatenate(matrices) if matrices else np.empty((0, len(features)), dtype=np.float32)
    class_index = {name: i for i, name in enumerate(mapper.class_names)}
    y = np.array([class_index[name] for name in class_names], dtype=np.int64)
    missing = [name for name in mapper.class_names if name not in set(class_names)]
    if missing:
        raise DatasetError(f"no training rows for class(es) {missing} in {data_dir}; every class needs rows")

    return Dataset(
        features=tuple(features),
        classes=mapper.class_names,
        matrix=matrix,
        y=y,
        labels=np.array(labels, dtype=object),
        groups=duplicate_groups(matrix),
        context=pd.concat(contexts, ignore_index=True),
        files=files,
        dropped=dropped,
    )


def _context(frame: pd.DataFrame, rows: np.ndarray, path: Path) -> pd.DataFrame:
    column_for = {}
    for column in frame.columns:
        canonical = schema.canonical_name(str(column))
        if canonical in CONTEXT_COLUMNS and (canonical not in column_for or column == canonical):
            column_for[canonical] = column
    out = pd.DataFrame({name: frame[column_for[name]].to_numpy()[rows] for name in CONTEXT_COLUMNS if name in column_for})
    out["file"] = path.name
    return out


def duplicate_groups(matrix: np.ndarray) -> np.ndarray:
    """Number identical feature rows with one id, so that a split never puts copies on both sides."""
    if len(matrix) == 0:
        return np.empty(0, dtype=np.int64)
    # NaN != NaN, so compare the bytes: identical rows, NaN included, share an id.
    rows = np.ascontiguousarray(matrix).view(np.dtype((np.void, matrix.dtype.itemsize * matrix.shape[1])))
    _, inverse = np.unique(rows.ravel(), return_inverse=True)
    return inverse.astype(np.int64)

