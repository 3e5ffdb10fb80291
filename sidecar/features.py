"""Turn flow records into the model's float32 feature matrix.

Training (pandas frames read from CSV) and serving (``_source`` dicts from
Elasticsearch) both go through this module, so a value is treated the same way
in both. The rules are in ``sidecar.schema``'s docstring: missing values become
NaN, garbage makes the flow unusable, and the rest of the batch goes on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from sidecar import schema

# Strings that mean "no value" (compared after strip and casefold).
MISSING_STRINGS = frozenset(
    {"", "nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", "null", "none"}
)

# A flow with more than this share of its model features missing is unusable:
# a prediction from mostly default branches would be noise.
MAX_MISSING_SHARE = 0.5


@dataclass
class Unusable:
    """A record that got no prediction, with the reason."""

    row: int
    reason: str


@dataclass
class FeatureBatch:
    """Feature matrix for the usable records of one batch."""

    matrix: np.ndarray  # float32, shape (len(rows), n_features), NaN = missing
    rows: np.ndarray  # int64 indices into the input records, one per matrix row
    unusable: list[Unusable] = field(default_factory=list)

    def reasons(self) -> Counter[str]:
        """Count unusable records by the kind of reason (text before the first colon)."""
        return Counter(item.reason.split(":", 1)[0] for item in self.unusable)


def coerce_value(value: Any) -> float | str:
    """Convert one field value to a float, or return an error string naming the problem."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float)):
        # Booleans count as 1 and 0, as numpy's fast path converts them.
        try:
            return float(value)
        except OverflowError:
            return math.nan
    if isinstance(value, str):
        text = value.strip()
        if text.casefold() in MISSING_STRINGS:
            return math.nan
        try:
            return float(text)
        except ValueError:
            shown = text if len(text) <= 40 else text[:37] + "..."
            return f"invalid value: {shown!r} is not a number"
    return f"invalid value: {type(value).__name__} where a number belongs"


def _to_float32(matrix: np.ndarray) -> np.ndarray:
    """Cast to float32; values that overflow float32, and non-finite ones, become NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = matrix.astype(np.float32)
    out[~np.isfinite(out)] = np.nan
    return out


def _too_sparse(matrix: np.ndarray) -> np.ndarray:
    missing = np.isnan(matrix).sum(axis=1)
    return missing > MAX_MISSING_SHARE * matrix.shape[1]


class FeatureExtractor:
    """Build feature matrices in a fixed feature order from records with any accepted naming."""

    def __init__(self, features: Sequence[str]):
        if len(features) < 2:
            raise schema.SchemaError(f"a model needs at least 2 features, got {list(features)}")
        unknown = [name for name in features if schema.canonical_name(name) != name]
        if unknown:
            raise schema.SchemaError(
                f"model features {unknown} are not canonical CICFlowMeter-4 names; "
                "retrain or re-export the model with names from sidecar/schema.py"
            )
        self.features = tuple(features)
        self._getters: dict[frozenset[str], tuple[tuple[str, ...], itemgetter]] = {}

    def _getter_for(self, keys: frozenset[str]) -> tuple[tuple[str, ...], itemgetter]:
        """Return the record keys holding each feature, and an itemgetter over them."""
        cached = self._getters.get(keys)
        if cached is None:
            present = {}
            for key in keys:
                canonical = schema.canonical_name(key)
                if canonical is not None and (canonical not in present or key == canonical):
                    present[canonical] = key
            # A feature no record carries is looked up under its canonical
            # name, which then counts as missing in every record.
            columns = tuple(present.get(name, name) for name in self.features)
            cached = (columns, itemgetter(*columns))
            if len(self._getters) < 64:
                self._getters[keys] = cached
        return cached

    def from_records(self, records: Sequence[Mapping[str, Any]]) -> FeatureBatch:
        """Featurise flow records (``_source`` dicts); never raises on a bad record."""
        n = len(records)
        if n == 0:
            empty = np.empty((0, len(self.features)), dtype=np.float32)
            return FeatureBatch(empty, np.empty(0, dtype=np.int64))

        keys = frozenset(records[0])
        _, getter = self._getter_for(keys)
        try:
            # Fast path: every record has every column as a JSON number (or
            # null). np.fromiter converts values exactly as np.array does, but
            # skips the nested-sequence discovery, which costs about as much
            # as the key lookups themselves on a page of 1,000 flows.
            matrix = np.fromiter(
                chain.from_iterable(map(getter, records)), dtype=np.float64, count=n * len(self.features)
            ).reshape(n, len(self.features))
            usable_rows = np.arange(n, dtype=np.int64)
            unusable: list[Unusable] = []
        except (KeyError, TypeError, ValueError, OverflowError):
            # OverflowError: an integer beyond the float range, which coerce_value turns into NaN.
            matrix, usable_rows, unusable = self._slow_path(records)

        out = _to_float32(matrix)
        sparse = _too_sparse(out)
        if sparse.any():
            for position in np.flatnonzero(sparse):
                count = int(np.isnan(out[position]).sum())
                unusable.append(
                    Unusable(int(usable_rows[position]), f"too many missing features: {count} of {len(self.features)}")
                )
            out = out[~sparse]
            usable_rows = usable_rows[~sparse]
        unusable.sort(key=lambda item: item.row)
        return FeatureBatch(out, usable_rows, unusable)

    def _slow_path(self, records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[Unusable]]:
        values = np.full((len(records), len(self.features)), np.nan, dtype=np.float64)
        good = np.ones(len(records), dtype=bool)
        unusable: list[Unusable] = []
        for row, record in enumerate(records):
            if not isinstance(record, Mapping):
                good[row] = False
                unusable.append(Unusable(row, f"invalid record: {type(record).__name__}, expected an object"))
                continue
            names, _ = self._getter_for(frozenset(record))
            for position, (name, key) in enumerate(zip(self.features, names)):
                result = coerce_value(record.get(key))
                if isinstance(result, str):
                    good[row] = False
                    unusable.append(Unusable(row, f"{result} in field {name!r}"))
                    break
                values[row, position] = result
        return values[good], np.flatnonzero(good).astype(np.int64), unusable

    def from_frame(self, frame: Any) -> FeatureBatch:
        """Featurise a pandas DataFrame (training and offline evaluation), same rules as records."""
        column_map = schema.map_columns(frame.columns, self.features, where="the flow table")
        values = np.empty((len(frame), len(self.features)), dtype=np.float64)
        bad = np.zeros(len(frame), dtype=bool)
        reasons: dict[int, str] = {}
        for position, name in enumerate(self.features):
            column = frame[column_map.source_for[name]]
            if column.dtype.kind in "iuf":
                values[:, position] = column.to_numpy(dtype=np.float64, na_value=np.nan)
                continue
            for row, value in enumerate(column.tolist()):
                result = coerce_value(value)
                if isinstance(result, str):
                    bad[row] = True
                    reasons.setdefault(row, f"{result} in field {name!r}")
                    values[row, position] = np.nan
                else:
                    values[row, position] = result
        unusable = [Unusable(row, reason) for row, reason in sorted(reasons.items())]
        out = _to_float32(values[~bad])
        rows = np.flatnonzero(~bad).astype(np.int64)
        sparse = _too_sparse(out)
        for position in np.flatnonzero(sparse):
            count = int(np.isnan(out[position]).sum())
            unusable.append(Unusable(int(rows[position]), f"too many missing features: {count} of {len(self.features)}"))
        unusable.sort(key=lambda item: item.row)
        return FeatureBatch(out[~sparse], rows[~sparse], unusable)
