"""Leave-scenario-out evaluation: hold out whole attack tools, hosts and days instead of random rows.

A random split of CIC-IDS2017 puts flows of the same tool, host and minute on
both sides, so it measures recognition of the lab rather than of the
behaviour. Here each row gets a fold such that a model scoring fold k never
trained on the rows of the scenario that fold k holds out:

* one DoS tool (Hulk, GoldenEye, Slowloris, Slowhttptest), while the other three stay in training;
* one brute-force tool (FTP-Patator, SSH-Patator, web login brute force);
* one port-scan source: ``Portscan`` (172.16.0.1 scanning the web server on
  Friday) or ``Infiltration - Portscan`` (mostly the infected 192.168.10.8
  scanning the LAN on Thursday, with a few flows from 172.16.0.1);
* one infected bot host (``Botnet`` rows grouped by source address);
* one capture day of benign traffic (Monday to Friday by the ``Timestamp`` date);
* one contiguous time block of the DDoS, the only DDoS tool in the data, so
  that block only tests drift within one tool;
* every other label (the rare web, Heartbleed and infiltration labels) is
  spread at random over the folds, so those classes stay in training.

A fold holds out at most one scenario per technique, so the technique itself
is always in training and a held-out tool can still be recognised as it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from convert.dataset import BENIGN
from convert.evaluate import ClassScore
from sidecar.rules import RuleSet

logger = logging.getLogger(__name__)

GROUPED_FOLDS = 5

# The techniques the generalisation goal covers, by model class name.
TECHNIQUE_CLASSES: tuple[str, ...] = ("DoS", "DDoS", "PortScan", "BruteForce", "Botnet")

RANDOM_SCENARIO = "random rows"


@dataclass(frozen=True)
class LabelScenario:
    """One dataset label held out as a whole in one fold."""

    family: str
    label: str
    fold: int


LABEL_SCENARIOS: tuple[LabelScenario, ...] = (
    LabelScenario("leave one DoS tool out", "DoS Hulk", 0),
    LabelScenario("leave one DoS tool out", "DoS GoldenEye", 1),
    LabelScenario("leave one DoS tool out", "DoS Slowloris", 2),
    LabelScenario("leave one DoS tool out", "DoS Slowhttptest", 3),
    LabelScenario("leave one brute-force tool out", "FTP-Patator", 1),
    LabelScenario("leave one brute-force tool out", "SSH-Patator", 2),
    LabelScenario("leave one brute-force tool out", "Web Attack - Brute Force", 3),
    LabelScenario("leave one scanning host and day out", "Portscan", 3),
    LabelScenario("leave one scanning host and day out", "Infiltration - Portscan", 4),
)
HOST_FAMILY = "leave one bot host out"
HOST_SPLIT_LABELS: tuple[str, ...] = ("Botnet",)
TIME_FAMILY = "leave one DDoS time block out"
TIME_SPLIT_LABELS: tuple[str, ...] = ("DDoS",)
DAY_FAMILY = "leave one benign day out"


@dataclass
class FoldAssignment:
    """The grouped fold of every row and the scenario that put it there."""

    fold: np.ndarray  # int64 fold index per row, 0 .. folds-1
    family: np.ndarray  # object: scenario family per row, e.g. "leave one DoS tool out", or RANDOM_SCENARIO
    held_out: np.ndarray  # object: what the row's scenario holds out, e.g. "DoS Hulk", "2017-07-03 (Mon)"
    folds: int


def assign_folds(
    labels: np.ndarray,
    source_ips: Sequence[object] | None,
    timestamps: Sequence[object] | None,
    seed: int,
    folds: int = GROUPED_FOLDS,
) -> FoldAssignment:
    """Assign every row to a grouped fold (see the module docstring for the scenarios).

    ``source_ips`` and ``timestamps`` are the rows' ``Src IP`` and ``Timestamp``
    values. Without them, the host, day and time scenarios fall back to
    random rows and a warning is logged.
    """
    if folds < 2:
        raise ValueError(f"grouped evaluation needs at least 2 folds, got {folds}")
    labels = np.asarray(labels, dtype=object)
    n = len(labels)
    fold = np.full(n, -1, dtype=np.int64)
    family = np.full(n, RANDOM_SCENARIO, dtype=object)
    held_out = np.full(n, RANDOM_SCENARIO, dtype=object)

    # 1. whole labels: one tool or one scanning source per fold
    for scenario in LABEL_SCENARIOS:
        rows = labels == scenario.label
        fold[rows] = scenario.fold % folds
        family[rows] = scenario.family
        held_out[rows] = scenario.label

    # 2. bot hosts, benign days and DDoS time blocks need the flow's context
    times = _parse_times(timestamps, n)
    if source_ips is not None:
        hosts = np.asarray(source_ips, dtype=object).astype(str)
        for label in HOST_SPLIT_LABELS:
            rows = np.flatnonzero(labels == label)
            for i, host in enumerate(sorted(set(hosts[rows].tolist()))):
                members = rows[hosts[rows] == host]
                fold[members] = i % folds
                family[members] = HOST_FAMILY
                held_out[members] = f"{label} from {host}"
    elif any((labels == label).any() for label in HOST_SPLIT_LABELS):
        logger.warning("no Src IP column: %s rows are spread over the folds at random", list(HOST_SPLIT_LABELS))

    if times is not None:
        _assign_days(labels, times, fold, family, held_out, folds)
        _assign_time_blocks(labels, times, fold, family, held_out, folds)
    else:
        logger.warning("no usable Timestamp column: benign days and DDoS time blocks are spread at random")

    # 3. everything else: spread each label evenly over the folds
    rng = np.random.default_rng(seed)
    for label in sorted(set(labels[fold < 0].tolist())):
        rows = np.flatnonzero((fold < 0) & (labels == label))
        fold[rows[rng.permutation(len(rows))]] = np.arange(len(rows)) % folds
    return FoldAssignment(fold, family, held_out, folds)


def _parse_times(timestamps: Sequence[object] | None, n: int) -> pd.Series | None:
    if timestamps is None:
        return None
    times = pd.to_datetime(pd.Series(list(timestamps)), errors="coerce", format="mixed")
    if len(times) != n or times.isna().all():
        return None
    return times


def _assign_days(
    labels: np.ndarray, times: pd.Series, fold: np.ndarray, family: np.ndarray, held_out: np.ndarray, folds: int
) -> None:
    """Put each capture day of the benign rows in its own fold (day i -> fold i mod folds)."""
    rows = np.flatnonzero((labels == BENIGN) & times.notna().to_numpy())
    days = times.iloc[rows].dt.normalize().to_numpy()
    for i, day in enumerate(sorted(set(days.tolist()))):
        members = rows[days == day]
        stamp = pd.Timestamp(day)
        fold[members] = i % folds
        family[members] = DAY_FAMILY
        held_out[members] = f"{stamp:%Y-%m-%d} ({stamp:%a})"


def _assign_time_blocks(
    labels: np.ndarray, times: pd.Series, fold: np.ndarray, family: np.ndarray, held_out: np.ndarray, folds: int
) -> None:
    """Cut each time-split label into `folds` contiguous blocks of equal row count, one per fold."""
    for label in TIME_SPLIT_LABELS:
        rows = np.flatnonzero((labels == label) & times.notna().to_numpy())
        order = rows[np.argsort(times.iloc[rows].to_numpy(), kind="stable")]
        for i, block in enumerate(np.array_split(order, folds)):
            fold[block] = i
            family[block] = TIME_FAMILY
            held_out[block] = f"{label} block {i + 1} of {folds}"


@dataclass(frozen=True)
class ScenarioFigure:
    """Outcome for the rows one scenario held out."""

    family: str
    held_out: str
    technique: str  # model class the rows should alert as, or "" for benign rows
    rows: int
    right: int  # attack rows alerting as their own class, or benign rows without an alert
    wrong_attack: int  # attack rows alerting as another attack class, or benign rows that alerted
    # Rows whose exact feature vector also occurs in the fold's training rows, and how many of the
    # other rows came out right; None when the evaluation was given no duplicate groups.
    seen: int | None = None
    right_unseen: int | None = None

    @property
    def share_right_unseen(self) -> float:
        if self.seen is None or self.right_unseen is None or self.rows == self.seen:
            return float("nan")
        return self.right_unseen / (self.rows - self.seen)

    @property
    def share_right(self) -> float:
        return self.right / self.rows if self.rows else float("nan")


@dataclass
class GroupedEvaluation:
    """Alert-level figures of out-of-fold predictions from the grouped folds."""

    technique_scores: list[ClassScore]  # per technique, treating "no alert" as a BENIGN prediction
    macro_f1: float  # mean F1 over technique_scores
    benign_rows: int
    benign_false_alerts: int
    scenarios: list[ScenarioFigure]
    # technique -> (rows whose vector is not in their fold's training rows, those of them alerting right);
    # empty when the evaluation was given no duplicate groups
    unseen_recall: dict[str, tuple[int, int]] = field(default_factory=dict)
    macro_f1_unseen: float = float("nan")  # macro_f1 over the rows whose vector is not in their training rows

    @property
    def benign_false_alert_rate(self) -> float:
        return self.benign_false_alerts / self.benign_rows if self.benign_rows else float("nan")

    def scenario(self, held_out: str) -> ScenarioFigure | None:
        return next((figure for figure in self.scenarios if figure.held_out == held_out), None)


def alerted_classes(probabilities: np.ndarray, classes: Sequence[str], rules: RuleSet) -> np.ndarray:
    """Return the class index each row alerts as, or the benign class index where it raises no alert."""
    decisions = rules.decide(probabilities, classes)
    benign_index = _benign_index(classes, rules)
    return np.where(decisions.alert, decisions.predicted, benign_index)


def grouped_evaluation(
    y_true: np.ndarray,
    assignment: FoldAssignment,
    probabilities: np.ndarray,
    classes: Sequence[str],
    rules: RuleSet,
    techniques: Sequence[str] = TECHNIQUE_CLASSES,
    groups: np.ndarray | None = None,
) -> GroupedEvaluation:
    """Score out-of-fold probabilities from the grouped folds at the rules' thresholds.

    F1 is computed per technique on the alerted class, so a flow below its
    class's threshold counts as a BENIGN prediction, and a benign row that
    alerts counts against the precision of the class it alerts as.
    Techniques absent from the class list are skipped. With ``groups`` (one
    id per distinct feature vector), the figures also count the held-out rows
    whose exact vector occurs in their fold's training rows, which a model
    recognises rather than generalises to.
    """
    alerted = alerted_classes(probabilities, classes, rules)
    benign = np.array([rules.rule_for(name) is None for name in classes])
    scores = _technique_scores(y_true, alerted, classes, techniques)
    true_benign = benign[y_true]
    raised = ~benign[alerted]
    seen = None if groups is None else seen_in_training(groups, assignment.fold)
    unseen_recall = {}
    macro_f1_unseen = float("nan")
    if seen is not None:
        for score in scores:
            rows = (y_true == list(classes).index(score.name)) & ~seen
            unseen_recall[score.name] = (int(rows.sum()), int((rows & (alerted == y_true)).sum()))
        unseen_scores = _technique_scores(y_true[~seen], alerted[~seen], classes, techniques)
        macro_f1_unseen = float(np.mean([score.f1 for score in unseen_scores])) if unseen_scores else float("nan")
    return GroupedEvaluation(
        technique_scores=scores,
        macro_f1=float(np.mean([score.f1 for score in scores])) if scores else float("nan"),
        benign_rows=int(true_benign.sum()),
        benign_false_alerts=int((raised & true_benign).sum()),
        scenarios=scenario_figures(y_true, assignment, alerted, classes, benign, seen),
        unseen_recall=unseen_recall,
        macro_f1_unseen=macro_f1_unseen,
    )


def seen_in_training(groups: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Return, per row, whether a row of another fold (so in this row's training rows) has the same vector."""
    seen = np.zeros(len(groups), dtype=bool)
    for k in np.unique(fold):
        held_out = fold == k
        seen[held_out] = np.isin(groups[held_out], groups[~held_out])
    return seen


def technique_macro_f1(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    rules: RuleSet,
    techniques: Sequence[str] = TECHNIQUE_CLASSES,
) -> float:
    """Return the grouped evaluation's metric for any predictions, e.g. the random folds' ones.

    That is the mean F1 over the techniques at the rules' thresholds, where a
    flow without an alert counts as a BENIGN prediction.
    """
    scores = _technique_scores(y_true, alerted_classes(probabilities, classes, rules), classes, techniques)
    return float(np.mean([score.f1 for score in scores])) if scores else float("nan")


def _technique_scores(
    y_true: np.ndarray, alerted: np.ndarray, classes: Sequence[str], techniques: Sequence[str]
) -> list[ClassScore]:
    present = [name for name in techniques if name in classes]
    indices = [list(classes).index(name) for name in present]
    if not indices:
        return []
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, alerted, labels=indices, zero_division=0
    )
    return [
        ClassScore(name, float(p), float(r), float(f), int(s))
        for name, p, r, f, s in zip(present, precision, recall, f1, support)
    ]


def scenario_figures(
    y_true: np.ndarray,
    assignment: FoldAssignment,
    alerted: np.ndarray,
    classes: Sequence[str],
    benign: np.ndarray,
    seen: np.ndarray | None = None,
) -> list[ScenarioFigure]:
    """Count right and wrong outcomes per held-out scenario, in the order the scenarios first occur by family."""
    figures = []
    keys = sorted(
        {(str(f), str(h)) for f, h in zip(assignment.family, assignment.held_out) if f != RANDOM_SCENARIO},
        key=_scenario_order,
    )
    for family, held_out in keys:
        rows = (assignment.family == family) & (assignment.held_out == held_out)
        truth = y_true[rows]
        outcome = alerted[rows]
        raised = ~benign[outcome]
        if benign[truth].all():
            right = ~raised
            technique = ""
        else:
            right = raised & (outcome == truth)
            technique = classes[int(np.bincount(truth, minlength=len(classes)).argmax())]
        known = None if seen is None else seen[rows]
        figures.append(
            ScenarioFigure(
                family,
                held_out,
                technique,
                int(rows.sum()),
                int(right.sum()),
                int((raised & ~right).sum()) if technique else int(raised.sum()),
                None if known is None else int(known.sum()),
                None if known is None else int((right & ~known).sum()),
            )
        )
    return figures


_FAMILY_ORDER = (
    "leave one DoS tool out",
    "leave one brute-force tool out",
    "leave one scanning host and day out",
    HOST_FAMILY,
    TIME_FAMILY,
    DAY_FAMILY,
)


def _scenario_order(key: tuple[str, str]) -> tuple[int, int, str]:
    family, held_out = key
    rank = _FAMILY_ORDER.index(family) if family in _FAMILY_ORDER else len(_FAMILY_ORDER)
    label_rank = next(
        (i for i, scenario in enumerate(LABEL_SCENARIOS) if scenario.label == held_out), len(LABEL_SCENARIOS)
    )
    return rank, label_rank, held_out


def _benign_index(classes: Sequence[str], rules: RuleSet) -> int:
    for index, name in enumerate(classes):
        if rules.rule_for(name) is None:
            return index
    raise ValueError(f"no benign class among {list(classes)}; list one under benign_classes in the rules file")
