"""Alert rules: which model class raises which ATT&CK-tagged alert, and from what confidence.

``rules.yaml`` at the repository root is the shipped rules file. It maps each
model class either to the benign list (no alert) or to one rule. A rule names
an ATT&CK technique, a signature id, a severity and a minimum confidence. The
alert's signature text and reference URL are derived from the technique, so
they always name the same technique:

* signature: ``<prefix> - ATT&CK <technique name> - <technique id>``
* reference: ``https://attack.mitre.org/techniques/T1499/``, or
  ``.../T1071/001/`` for a sub-technique.

Loading validates the whole file and reports each problem with ``file:line``.
The file is composed into a node tree with ``yaml.SafeLoader`` so that every
value keeps its line. Technique ids and names are checked against the pinned
table ``sidecar/attack_techniques.json``.

Alert decision: the predicted class is the arg-max of the class probabilities.
A flow raises an alert when that class has a rule and its probability is at
least the rule's ``min_confidence``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sidecar.errors import RulesError

logger = logging.getLogger(__name__)

ATTACK_URL = "https://attack.mitre.org/techniques/"
TECHNIQUE_ID = re.compile(r"T\d{4}(\.\d{3})?")
SEVERITY_RANGE = (1, 10)

TOP_KEYS = ("prefix", "benign_classes", "rules")
RULE_KEYS = ("class", "technique_id", "technique_name", "signature_id", "severity", "min_confidence")


class RulesValidationError(RulesError):
    """Several problems in one rules file, raised by ``load_rules(..., collect_errors=True)``."""

    def __init__(self, errors: Sequence[RulesError], path: str):
        self.errors = list(errors)
        lines = "\n".join(f"  {error}" for error in self.errors)
        super().__init__(f"{len(self.errors)} problem(s) in the rules file:\n{lines}", path=path)

    def __str__(self) -> str:
        # Each listed error already carries file:line, so the summary names the file once.
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Rule:
    """The alert raised for one model class."""

    class_name: str
    technique_id: str
    technique_name: str
    signature: str
    signature_id: int
    severity: int
    reference: str
    min_confidence: float


@dataclass(frozen=True)
class AlertDecisions:
    """Per-row outcome of applying the rules to a probability matrix."""

    predicted: np.ndarray  # int64 class index (arg-max), one per row
    confidence: np.ndarray  # float32 probability of the predicted class
    alert: np.ndarray  # bool, True where the predicted class has a rule and confidence >= its threshold


def signature_text(prefix: str, technique_id: str, technique_name: str) -> str:
    """Build the alert signature, e.g. ``CSTI ETA1 - ATT&CK Endpoint Denial of Service - T1499``."""
    return f"{prefix} - ATT&CK {technique_name} - {technique_id}"


def reference_url(technique_id: str) -> str:
    """Build the ATT&CK page URL of a technique or sub-technique."""
    return ATTACK_URL + technique_id.replace(".", "/") + "/"


def load_attack_techniques(path: str | Path | None = None) -> dict[str, str]:
    """Read a technique table (id -> name); the default is the pinned ``sidecar/attack_techniques.json``."""
    if path is None:
        text = resources.files("sidecar").joinpath("attack_techniques.json").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    table = json.loads(text)["techniques"]
    return {str(key): str(value) for key, value in table.items()}


class RuleSet:
    """Validated rules, looked up by model class name."""

    def __init__(
        self,
        path: str,
        prefix: str,
        rules: Mapping[str, Rule],
        benign_classes: Iterable[str],
        rules_line: int | None = None,
    ):
        self.path = path
        self.prefix = prefix
        self.rules: dict[str, Rule] = dict(rules)
        self.benign_classes: frozenset[str] = frozenset(benign_classes)
        self._rules_line = rules_line

    def rule_for(self, class_name: str) -> Rule | None:
        """Return the class's rule, or None for a benign class; raise RulesError for an unknown class."""
        if class_name in self.benign_classes:
            return None
        rule = self.rules.get(class_name)
        if rule is None:
            raise RulesError(
                f"model class {class_name!r} has neither a rule nor an entry in benign_classes; "
                "add one of them to the rules file",
                path=self.path,
                line=self._rules_line,
            )
        return rule

    def check_classes(self, classes: Sequence[str]) -> None:
        """Raise RulesError unless every model class has a rule or is benign.

        Rules for classes the model lacks are allowed (one rules file can serve
        several models) and are logged at INFO.
        """
        missing = [name for name in classes if name not in self.rules and name not in self.benign_classes]
        if missing:
            raise RulesError(
                f"model class(es) {missing} have no rule; add a rule for each under 'rules:' "
                "or list it under 'benign_classes:'",
                path=self.path,
                line=self._rules_line,
            )
        unused = sorted(set(self.rules) - set(classes))
        if unused:
            logger.info("rules for classes the model does not have, ignored: %s (%s)", unused, self.path)

    def thresholds(self, classes: Sequence[str]) -> np.ndarray:
        """Return each class's minimum confidence as float32, in model order (inf for benign classes).

        float32 matches the model's probabilities, so ``p >= threshold`` compares
        like with like: a probability of exactly 0.9 meets a threshold of 0.9.
        """
        self.check_classes(classes)
        values = []
        for name in classes:
            rule = self.rule_for(name)
            values.append(math.inf if rule is None else rule.min_confidence)
        return np.asarray(values, dtype=np.float32)

    def decide(self, probabilities: np.ndarray, classes: Sequence[str]) -> AlertDecisions:
        """Apply the rules to an (n, n_classes) probability matrix."""
        if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
            raise ValueError(
                f"probabilities have shape {probabilities.shape}, expected (n, {len(classes)}) for classes {list(classes)}"
            )
        thresholds = self.thresholds(classes)
        predicted = probabilities.argmax(axis=1).astype(np.int64)
        confidence = probabilities[np.arange(len(predicted)), predicted].astype(np.float32)
        alert = confidence >= thresholds[predicted]
        return AlertDecisions(predicted, confidence, alert)


# --- loading -----------------------------------------------------------------


class _Problems:
    """Stop at the first problem, or collect them all."""

    def __init__(self, path: str, collect: bool):
        self.path = path
        self.collect = collect
        self.errors: list[RulesError] = []

    def add(self, message: str, node: yaml.Node | None) -> None:
        line = None if node is None else node.start_mark.line + 1
        error = RulesError(message, path=self.path, line=line)
        if not self.collect:
            raise error
        self.errors.append(error)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping_items(node: yaml.Node, subject: str, problems: _Problems) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """Return key -> (key node, value node) of a mapping node, reporting duplicate and non-string keys."""
    if not isinstance(node, yaml.MappingNode):
        problems.add(f"{subject} must be a mapping of keys to values", node)
        return {}
    items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            problems.add(f"{subject} has a key that is not a plain string", key_node)
            continue
        key = str(key_node.value)
        if key in items:
            first = _line(items[key][0])
            problems.add(f"duplicate key {key!r} in {subject} (first at line {first}); remove one", key_node)
            continue
        items[key] = (key_node, value_node)
    return items


def _check_keys(
    items: Mapping[str, tuple[yaml.Node, yaml.Node]],
    allowed: Sequence[str],
    subject: str,
    node: yaml.Node,
    problems: _Problems,
) -> None:
    for key, (key_node, _) in items.items():
        if key not in allowed:
            problems.add(f"unknown key {key!r} in {subject}; allowed keys: {', '.join(allowed)}", key_node)
    for key in allowed:
        if key not in items:
            problems.add(f"missing key {key!r} in {subject}", node)


def _scalar(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    return loader.construct_object(node, deep=True) if isinstance(node, yaml.ScalarNode) else node


def _string(node: yaml.Node, loader: yaml.SafeLoader, subject: str, problems: _Problems) -> str | None:
    value = _scalar(node, loader)
    if not isinstance(value, str) or not value.strip():
        problems.add(f"{subject} must be a non-empty string, got {_show(value)}", node)
        return None
    return value.strip()


def _integer(node: yaml.Node, loader: yaml.SafeLoader, subject: str, problems: _Problems) -> int | None:
    value = _scalar(node, loader)
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(f"{subject} must be an integer, got {_show(value)}", node)
        return None
    return value


def _show(value: Any) -> str:
    if isinstance(value, yaml.Node):
        return "a list" if isinstance(value, yaml.SequenceNode) else "a mapping"
    return repr(value)


@dataclass
class _RuleContext:
    loader: yaml.SafeLoader
    problems: _Problems
    techniques: Mapping[str, str]
    prefix: str
    benign: frozenset[str]
    seen_classes: dict[str, int]
    seen_signature_ids: dict[int, int]


def _parse_rule(node: yaml.Node, context: _RuleContext) -> Rule | None:
    """Validate one entry of the ``rules`` list; return None if it has a problem."""
    problems, loader = context.problems, context.loader
    before = len(problems.errors)
    if not isinstance(node, yaml.MappingNode):
        problems.add(f"each rule must be a mapping with the keys {', '.join(RULE_KEYS)}, got {_show(_scalar(node, loader))}", node)
        return None
    items = _mapping_items(node, "a rule", problems)
    _check_keys(items, RULE_KEYS, "a rule", node, problems)

    def value_node(key: str) -> yaml.Node | None:
        pair = items.get(key)
        return None if pair is None else pair[1]

    class_name = technique_id = technique_name = None
    signature_id = severity = None
    min_confidence: float | None = None

    if (n := value_node("class")) is not None:
        class_name = _string(n, loader, "'class'", problems)
        if class_name is not None and class_name in context.benign:
            problems.add(f"class {class_name!r} is listed in benign_classes and also has a rule; keep one", n)
        elif class_name is not None and class_name in context.seen_classes:
            first = context.seen_classes[class_name]
            problems.add(f"class {class_name!r} already has a rule at line {first}; keep one", n)
        elif class_name is not None:
            context.seen_classes[class_name] = _line(n)

    if (n := value_node("technique_id")) is not None:
        technique_id = _string(n, loader, "'technique_id'", problems)
        if technique_id is not None and not TECHNIQUE_ID.fullmatch(technique_id):
            problems.add(
                f"technique_id {technique_id!r} is not an ATT&CK technique id; expected T followed by "
                "4 digits, with an optional .NNN sub-technique (e.g. T1499 or T1071.001)",
                n,
            )
            technique_id = None
        elif technique_id is not None and technique_id not in context.techniques:
            problems.add(
                f"technique_id {technique_id!r} is not in the pinned ATT&CK table sidecar/attack_techniques.json; "
                "check the id, or add it with its exact name to that file",
                n,
            )
            technique_id = None

    if (n := value_node("technique_name")) is not None:
        technique_name = _string(n, loader, "'technique_name'", problems)
        if technique_name is not None and technique_id is not None:
            expected = context.techniques[technique_id]
            if technique_name != expected:
                problems.add(
                    f"technique_name {technique_name!r} does not match {technique_id}, which ATT&CK names "
                    f"{expected!r}; use that name",
                    n,
                )

    if (n := value_node("signature_id")) is not None:
        signature_id = _integer(n, loader, "'signature_id'", problems)
        if signature_id is not None and signature_id <= 0:
            problems.add(f"signature_id must be a positive integer, got {signature_id}", n)
        elif signature_id is not None and signature_id in context.seen_signature_ids:
            first = context.seen_signature_ids[signature_id]
            problems.add(f"duplicate signature_id {signature_id} (first used at line {first}); give each rule its own", n)
        elif signature_id is not None:
            context.seen_signature_ids[signature_id] = _line(n)

    if (n := value_node("severity")) is not None:
        severity = _integer(n, loader, "'severity'", problems)
        low, high = SEVERITY_RANGE
        if severity is not None and not low <= severity <= high:
            problems.add(f"severity must be between {low} and {high}, got {severity}", n)

    if (n := value_node("min_confidence")) is not None:
        value = _scalar(n, loader)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.add(f"min_confidence must be a number between 0 and 1, got {_show(value)}", n)
        elif not 0.0 <= float(value) <= 1.0:
            problems.add(f"min_confidence must be between 0 and 1, got {value}", n)
        else:
            min_confidence = float(value)

    if len(problems.errors) > before:
        return None
    if class_name is None or technique_id is None or technique_name is None:
        return None  # unreachable: a missing field was reported above
    if signature_id is None or severity is None or min_confidence is None:
        return None
    return Rule(
        class_name=class_name,
        technique_id=technique_id,
        technique_name=technique_name,
        signature=signature_text(context.prefix, technique_id, technique_name),
        signature_id=signature_id,
        severity=severity,
        reference=reference_url(technique_id),
        min_confidence=min_confidence,
    )


def _compose(text: str, path: str) -> tuple[yaml.Node | None, yaml.SafeLoader]:
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node(), loader
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = None if mark is None else mark.line + 1
        detail = error.problem or "syntax error"
        if error.context:
            detail = f"{detail} ({error.context}"
            if error.context_mark is not None and error.context_mark.line + 1 != line:
                detail += f" that starts at line {error.context_mark.line + 1}"
            detail += ")"
        raise RulesError(f"invalid YAML: {detail}; fix the syntax", path=path, line=line) from error
    except yaml.YAMLError as error:
        raise RulesError(f"invalid YAML: {error}; fix the syntax", path=path) from error


def load_rules(
    path: str | Path,
    *,
    collect_errors: bool = False,
    techniques: Mapping[str, str] | None = None,
) -> RuleSet:
    """Load and validate a rules file.

    With ``collect_errors=False`` the first problem raises RulesError. With
    ``collect_errors=True`` every problem is collected and raised together as
    RulesValidationError, whose ``errors`` lists them. ``techniques`` replaces
    the pinned ATT&CK table (id -> name), for tests.
    """
    path_text = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError("rules file not found; pass the path of an existing rules.yaml", path=path_text) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RulesError(f"cannot read the rules file: {error}", path=path_text) from error

    root, loader = _compose(text, path_text)
    try:
        return _build(root, loader, path_text, collect_errors, techniques or load_attack_techniques())
    finally:
        loader.dispose()


def _build(
    root: yaml.Node | None,
    loader: yaml.SafeLoader,
    path: str,
    collect: bool,
    techniques: Mapping[str, str],
) -> RuleSet:
    problems = _Problems(path, collect)
    if root is None:
        problems.add("the rules file is empty; it needs the keys " + ", ".join(TOP_KEYS), None)
        return _finish(problems, path, "", {}, (), None)

    items = _mapping_items(root, "the rules file", problems)
    _check_keys(items, TOP_KEYS, "the rules file", root, problems)

    prefix = ""
    if "prefix" in items:
        prefix = _string(items["prefix"][1], loader, "'prefix'", problems) or ""

    benign: list[str] = []
    if "benign_classes" in items:
        benign = _parse_benign(items["benign_classes"][1], loader, problems)

    rules: dict[str, Rule] = {}
    rules_line = None
    if "rules" in items:
        key_node, list_node = items["rules"]
        rules_line = _line(key_node)
        rules = _parse_rules(list_node, loader, problems, techniques, prefix, frozenset(benign))
    return _finish(problems, path, prefix, rules, benign, rules_line)


def _parse_benign(node: yaml.Node, loader: yaml.SafeLoader, problems: _Problems) -> list[str]:
    if not isinstance(node, yaml.SequenceNode):
        problems.add("'benign_classes' must be a list of class names (it may be empty: [])", node)
        return []
    names: list[str] = []
    for item in node.value:
        name = _string(item, loader, "an entry of 'benign_classes'", problems)
        if name is None:
            continue
        if name in names:
            problems.add(f"class {name!r} is listed twice in 'benign_classes'", item)
            continue
        names.append(name)
    return names


def _parse_rules(
    node: yaml.Node,
    loader: yaml.SafeLoader,
    problems: _Problems,
    techniques: Mapping[str, str],
    prefix: str,
    benign: frozenset[str],
) -> dict[str, Rule]:
    if not isinstance(node, yaml.SequenceNode):
        problems.add("'rules' must be a list of rules", node)
        return {}
    context = _RuleContext(loader, problems, techniques, prefix, benign, {}, {})
    rules: dict[str, Rule] = {}
    for item in node.value:
        rule = _parse_rule(item, context)
        if rule is not None:
            rules[rule.class_name] = rule
    return rules


def _finish(
    problems: _Problems,
    path: str,
    prefix: str,
    rules: Mapping[str, Rule],
    benign: Iterable[str],
    rules_line: int | None,
) -> RuleSet:
    if problems.errors:
        raise RulesValidationError(problems.errors, path)
    logger.debug("loaded %s rule(s) from %s", len(rules), path)
    return RuleSet(path, prefix, rules, benign, rules_line)
