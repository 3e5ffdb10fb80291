"""Classify one page of flow hits and build the alerts that the rules raise.

This is the stage between the source and the sink: features -> model -> rules.
It touches no cluster, so it is tested with plain hit dicts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any, Protocol

import numpy as np

from sidecar.alerts import Alert, build_alert
from sidecar.features import FeatureExtractor, Unusable
from sidecar.rules import Rule
from sidecar.timeutil import parse_time

log = logging.getLogger(__name__)

# Log at most this many unusable flows per batch in detail; the rest are counted.
MAX_LOGGED_UNUSABLE = 5


class ModelLike(Protocol):
    """The part of sidecar.model.Model that detection uses."""

    features: tuple[str, ...]
    classes: tuple[str, ...]
    sha256: str

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray: ...


class RuleSetLike(Protocol):
    """The part of sidecar.rules.RuleSet that detection uses."""

    def rule_for(self, class_name: str) -> Rule | None: ...


@dataclass
class BatchOutcome:
    """Results of one page."""

    flows: int = 0
    alerts: list[Alert] = field(default_factory=list)
    unusable: list[tuple[str, str, str]] = field(default_factory=list)  # (index, flow _id, reason)
    predicted: Counter[str] = field(default_factory=Counter)

    def unusable_reasons(self) -> Counter[str]:
        """Count unusable flows by kind of reason (text before the first colon)."""
        return Counter(reason.split(":", 1)[0] for _, _, reason in self.unusable)


class Detector:
    """Apply a model and a rule set to pages of flow hits."""

    def __init__(
        self,
        model: ModelLike,
        rules: RuleSetLike,
        *,
        time_field: str,
        alert_index_pattern: str,
        local_tz: tzinfo,
        flow_time_field: str | None = None,
    ):
        self.model = model
        self.rules = rules
        self.extractor = FeatureExtractor(model.features)
        self.time_field = time_field
        self.flow_time_field = flow_time_field or time_field
        self.alert_index_pattern = alert_index_pattern
        self.local_tz = local_tz
        # Per class: the rule (None for benign) and the minimum confidence.
        self._rules: list[Rule | None] = [rules.rule_for(name) for name in model.classes]
        self._thresholds = np.array(
            [np.inf if rule is None else rule.min_confidence for rule in self._rules], dtype=np.float32
        )

    def detect(self, hits: Sequence[dict[str, Any]], now: datetime | None = None) -> BatchOutcome:
        """Classify the hits and return the alerts to write, plus the flows that got no prediction."""
        now = now or datetime.now(timezone.utc)
        outcome = BatchOutcome(flows=len(hits))
        if not hits:
            return outcome
        records = [hit.get("_source") or {} for hit in hits]
        batch = self.extractor.from_records(records)
        for item in batch.unusable:
            self._record_unusable(outcome, hits[item.row], item)

        if len(batch.rows):
            probabilities = self.model.predict_proba(batch.matrix)
            best = probabilities.argmax(axis=1)
            confidence = probabilities[np.arange(len(best)), best]
            for class_index, count in zip(*np.unique(best, return_counts=True)):
                outcome.predicted[self.model.classes[class_index]] += int(count)
            firing = np.flatnonzero(confidence >= self._thresholds[best])
            for position in firing:
                hit = hits[int(batch.rows[position])]
                rule = self._rules[int(best[position])]
                assert rule is not None  # benign classes have an infinite threshold
                flow_time = self._flow_time(hit)
                if flow_time is None:
                    self._record_unusable(
                        outcome, hit, Unusable(int(batch.rows[position]), f"invalid time: field {self.flow_time_field!r}")
                    )
                    continue
                outcome.alerts.append(
                    build_alert(
                        source_index=hit["_index"],
                        flow_id=hit["_id"],
                        source=hit.get("_source") or {},
                        flow_time=flow_time,
                        rule=rule,
                        confidence=float(confidence[position]),
                        model_sha256=self.model.sha256,
                        now=now,
                        local_tz=self.local_tz,
                        index_pattern=self.alert_index_pattern,
                    )
                )
        if outcome.unusable:
            shown = outcome.unusable[:MAX_LOGGED_UNUSABLE]
            log.warning(
                "%d of %d flows unusable in this batch (%s); first: %s",
                len(outcome.unusable), len(hits), dict(outcome.unusable_reasons()),
                "; ".join(f"{index}/{flow_id}: {reason}" for index, flow_id, reason in shown),
            )
        return outcome

    def _record_unusable(self, outcome: BatchOutcome, hit: dict[str, Any], item: Unusable) -> None:
        outcome.unusable.append((hit.get("_index", "?"), hit.get("_id", "?"), item.reason))

    def _flow_time(self, hit: dict[str, Any]) -> datetime | None:
        """Return the flow's own time, from _source (full precision) or, failing that, the sort value."""
        value: Any = hit.get("_source") or {}
        for part in self.flow_time_field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None and isinstance(hit.get("_source"), dict):
            value = hit["_source"].get(self.flow_time_field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000.0, tz=timezone.utc)
        if isinstance(value, str):
            try:
                return parse_time(value, default_tz=timezone.utc)
            except ValueError:
                pass
        sort = hit.get("sort")
        if self.flow_time_field == self.time_field and sort and isinstance(sort[0], str):
            try:
                return parse_time(sort[0], default_tz=timezone.utc)
            except ValueError:
                return None
        return None
