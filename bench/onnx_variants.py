"""Bench-only rewrites of the exported model, to measure what the converter's options would change.

The shipped export (convert/export.py, onnxmltools) is one ``ai.onnx.ml``
``TreeEnsembleClassifier`` node. Each function here returns a new
``ModelProto`` that computes the same probabilities another way:

* ``with_opsets``: the same node under other opset versions (what
  ``target_opset`` changes when the attributes stay the same).
* ``as_tree_ensemble_v5``: one ``TreeEnsemble`` node (``ai.onnx.ml`` opset 5,
  the operator that replaces TreeEnsembleClassifier/Regressor).
* ``split_per_class``: one single-target ``TreeEnsembleRegressor`` per class,
  then Concat and Softmax. XGBoost's multi-class model is already one tree list
  per class, so the split is exact. onnxruntime accumulates a single-target
  ensemble into one number per row instead of a vector of class scores, and
  the class nodes can also run in parallel (inter-op threads).

``check_parity`` runs a variant next to the original and returns the largest
probability difference. Nothing here is used by the daemon.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PROBABILITIES = "probabilities"
MODES_V5 = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5}


@dataclass
class _Ensemble:
    """The TreeEnsembleClassifier's attributes, and where its input and probability output are."""

    attributes: dict[str, Any]
    input_name: str
    n_features: int
    n_classes: int


def _classifier(model: onnx.ModelProto) -> _Ensemble:
    nodes = [node for node in model.graph.node if node.op_type == "TreeEnsembleClassifier"]
    if len(model.graph.node) != 1 or len(nodes) != 1:
        kinds = [node.op_type for node in model.graph.node]
        raise ValueError(f"expected a graph of one TreeEnsembleClassifier node, found {kinds}")
    attributes = {attr.name: helper.get_attribute_value(attr) for attr in nodes[0].attribute}
    graph_input = model.graph.input[0]
    n_features = graph_input.type.tensor_type.shape.dim[1].dim_value
    labels = attributes.get("classlabels_int64s") or attributes.get("classlabels_strings")
    return _Ensemble(attributes, graph_input.name, n_features, len(labels))


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _new_model(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto],
    opsets: dict[str, int], initializers: list[onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, model.graph.name or "eta1", list(model.graph.input), outputs,
                              initializer=initializers or [])
    new = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets.items()])
    new.ir_version = model.ir_version if opsets.get("", 0) <= 15 else max(model.ir_version, 8)
    for prop in model.metadata_props:
        entry = new.metadata_props.add()
        entry.key, entry.value = prop.key, prop.value
    return new


def _probability_output(n_classes: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, [None, n_classes])


def with_opsets(model: onnx.ModelProto, default_opset: int, ml_opset: int) -> onnx.ModelProto:
    """Return the model with the same node under other opset versions (ml opsets 1 to 3 share its attributes)."""
    new = onnx.ModelProto()
    new.CopyFrom(model)
    del new.opset_import[:]
    new.opset_import.extend([helper.make_opsetid("", default_opset), helper.make_opsetid("ai.onnx.ml", ml_opset)])
    return new


def _trees(ensemble: _Ensemble) -> tuple[dict[int, dict[int, dict[str, Any]]], dict[int, dict[int, list[tuple[int, float]]]]]:
    """Return nodes per tree (node id -> fields) and leaf weights per tree (node id -> [(class, weight)])."""
    a = ensemble.attributes
    nodes: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    missing = a.get("nodes_missing_value_tracks_true") or [0] * len(a["nodes_nodeids"])
    for i, (tree, node) in enumerate(zip(a["nodes_treeids"], a["nodes_nodeids"])):
        nodes[tree][node] = {
            "mode": _decode(a["nodes_modes"][i]),
            "feature": a["nodes_featureids"][i],
            "value": a["nodes_values"][i],
            "true": a["nodes_truenodeids"][i],
            "false": a["nodes_falsenodeids"][i],
            "missing": missing[i],
        }
    leaves: dict[int, dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for tree, node, klass, weight in zip(a["class_treeids"], a["class_nodeids"], a["class_ids"], a["class_weights"]):
        leaves[tree][node].append((klass, weight))
    return nodes, leaves


def as_tree_ensemble_v5(model: onnx.ModelProto, default_opset: int = 21) -> onnx.ModelProto:
    """Return the model as one ai.onnx.ml opset-5 TreeEnsemble node with a softmax post-transform."""
    ensemble = _classifier(model)
    a = ensemble.attributes
    if _decode(a.get("post_transform", "NONE")) != "SOFTMAX":
        raise ValueError("only the SOFTMAX post-transform of a multi-class XGBoost export is handled")
    nodes, leaves = _trees(ensemble)
    splits: list[float] = []
    features: list[int] = []
    modes: list[int] = []
    true_ids: list[int] = []
    false_ids: list[int] = []
    true_leaf: list[int] = []
    false_leaf: list[int] = []
    missing: list[int] = []
    roots: list[int] = []
    leaf_targets: list[int] = []
    leaf_weights: list[float] = []

    def add_leaf(tree: int, node: int) -> int:
        entries = leaves[tree][node]
        if len(entries) != 1:
            raise ValueError(f"tree {tree} leaf {node} has {len(entries)} weights; XGBoost leaves have one")
        leaf_targets.append(entries[0][0])
        leaf_weights.append(entries[0][1])
        return len(leaf_targets) - 1

    def add_node(tree: int, node: int) -> int:
        fields = nodes[tree][node]
        position = len(splits)
        splits.append(fields["value"])
        features.append(fields["feature"])
        modes.append(MODES_V5[fields["mode"]])
        missing.append(fields["missing"])
        true_ids.append(-1)
        false_ids.append(-1)
        true_leaf.append(0)
        false_leaf.append(0)
        for side, ids, is_leaf in (("true", true_ids, true_leaf), ("false", false_ids, false_leaf)):
            child = fields[side]
            if nodes[tree][child]["mode"] == "LEAF":
                ids[position] = add_leaf(tree, child)
                is_leaf[position] = 1
            else:
                ids[position] = add_node(tree, child)
        return position

    for tree in sorted(nodes):
        if nodes[tree][0]["mode"] == "LEAF":
            # A one-leaf tree: a dummy split whose branches both reach the leaf.
            leaf = add_leaf(tree, 0)
            roots.append(len(splits))
            splits.append(0.0)
            features.append(0)
            modes.append(MODES_V5["BRANCH_LEQ"])
            missing.append(0)
            true_ids.append(leaf)
            false_ids.append(leaf)
            true_leaf.append(1)
            false_leaf.append(1)
        else:
            roots.append(add_node(tree, 0))

    # The v5 operator has no base values, so a constant is added before the softmax.
    base = np.asarray(a.get("base_values") or [0.0] * ensemble.n_classes, dtype=np.float32).reshape(1, -1)
    tree_node = helper.make_node(
        "TreeEnsemble", [ensemble.input_name], ["scores"], domain="ai.onnx.ml",
        n_targets=ensemble.n_classes, aggregate_function=1, post_transform=0, tree_roots=roots,
        nodes_splits=numpy_helper.from_array(np.asarray(splits, dtype=np.float32)),
        nodes_featureids=features,
        nodes_modes=numpy_helper.from_array(np.asarray(modes, dtype=np.uint8)),
        nodes_truenodeids=true_ids, nodes_trueleafs=true_leaf,
        nodes_falsenodeids=false_ids, nodes_falseleafs=false_leaf,
        nodes_missing_value_tracks_true=missing,
        leaf_targetids=leaf_targets,
        leaf_weights=numpy_helper.from_array(np.asarray(leaf_weights, dtype=np.float32)),
    )
    add = helper.make_node("Add", ["scores", "base_values"], ["raw"])
    softmax = helper.make_node("Softmax", ["raw"], [PROBABILITIES], axis=1)
    initializer = numpy_helper.from_array(base, name="base_values")
    return _new_model(model, [tree_node, add, softmax], [_probability_output(ensemble.n_classes)],
                      {"": default_opset, "ai.onnx.ml": 5}, [initializer])


def split_per_class(model: onnx.ModelProto, default_opset: int = 15, ml_opset: int = 3) -> onnx.ModelProto:
    """Return the model as one single-target TreeEnsembleRegressor per class, then Concat and Softmax."""
    ensemble = _classifier(model)
    a = ensemble.attributes
    if _decode(a.get("post_transform", "NONE")) != "SOFTMAX":
        raise ValueError("only the SOFTMAX post-transform of a multi-class XGBoost export is handled")
    nodes, leaves = _trees(ensemble)
    base = a.get("base_values") or [0.0] * ensemble.n_classes
    by_class: dict[int, list[int]] = defaultdict(list)
    for tree in sorted(nodes):
        classes = {klass for entries in leaves[tree].values() for klass, _ in entries}
        if len(classes) != 1:
            raise ValueError(f"tree {tree} votes for classes {sorted(classes)}; expected one class per tree")
        by_class[classes.pop()].append(tree)

    graph_nodes: list[onnx.NodeProto] = []
    scores: list[str] = []
    for klass in range(ensemble.n_classes):
        fields: dict[str, list[Any]] = defaultdict(list)
        for new_tree, tree in enumerate(by_class.get(klass, [])):
            for node_id in sorted(nodes[tree]):
                node = nodes[tree][node_id]
                fields["nodes_treeids"].append(new_tree)
                fields["nodes_nodeids"].append(node_id)
                fields["nodes_featureids"].append(node["feature"])
                fields["nodes_modes"].append(node["mode"])
                fields["nodes_values"].append(node["value"])
                fields["nodes_truenodeids"].append(node["true"])
                fields["nodes_falsenodeids"].append(node["false"])
                fields["nodes_missing_value_tracks_true"].append(node["missing"])
                for _, weight in leaves[tree].get(node_id, []):
                    fields["target_treeids"].append(new_tree)
                    fields["target_nodeids"].append(node_id)
                    fields["target_ids"].append(0)
                    fields["target_weights"].append(weight)
        if not fields:
            raise ValueError(f"class {klass} has no trees")
        output = f"score_{klass}"
        graph_nodes.append(helper.make_node(
            "TreeEnsembleRegressor", [ensemble.input_name], [output], domain="ai.onnx.ml",
            name=f"class_{klass}", n_targets=1, aggregate_function="SUM", post_transform="NONE",
            base_values=[float(base[klass])], **fields,
        ))
        scores.append(output)
    graph_nodes.append(helper.make_node("Concat", scores, ["raw"], axis=1))
    graph_nodes.append(helper.make_node("Softmax", ["raw"], [PROBABILITIES], axis=1))
    return _new_model(model, graph_nodes, [_probability_output(ensemble.n_classes)],
                      {"": default_opset, "ai.onnx.ml": ml_opset})


def check_parity(reference: Any, candidate: Any, matrix: np.ndarray) -> float:
    """Return the largest absolute probability difference between two onnxruntime sessions on matrix."""
    name_a = reference.get_inputs()[0].name
    name_b = candidate.get_inputs()[0].name
    expected = reference.run([PROBABILITIES], {name_a: matrix})[0]
    actual = candidate.run([PROBABILITIES], {name_b: matrix})[0]
    return float(np.max(np.abs(expected - actual)))
