"""Plain fakes for pure-logic tests: a model that derives its prediction from one feature, and a rule set."""

from __future__ import annotations

import numpy as np

from sidecar.rules import Rule

DOS_RULE = Rule(
    class_name="DoS",
    technique_id="T1499",
    technique_name="Endpoint Denial of Service",
    signature="CSTI ETA1 - ATT&CK Endpoint Denial of Service - T1499",
    signature_id=20110002,
    severity=10,
    reference="https://attack.mitre.org/techniques/T1499/",
    min_confidence=0.8,
)


class FakeModel:
    """Two features; predicts DoS with probability = Flow Duration / 100 (clipped), else BENIGN."""

    features = ("Flow Duration", "Dst Port")
    classes = ("BENIGN", "DoS")
    sha256 = "f" * 64

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        p = np.clip(np.nan_to_num(matrix[:, 0], nan=0.0) / 100.0, 0.0, 1.0).astype(np.float32)
        return np.stack([1.0 - p, p], axis=1)


class FakeRules:
    """BENIGN raises nothing; DoS raises DOS_RULE."""

    def rule_for(self, class_name: str) -> Rule | None:
        return DOS_RULE if class_name == "DoS" else None
