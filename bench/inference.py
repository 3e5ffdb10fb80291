"""Figure 1: onnxruntime against XGBoost's ``inplace_predict`` on the shipped model and real flows.

Both engines get the same float32 rows (the sample flows featurised by
``FeatureExtractor.from_frame``) and the same thread count. Each run measures
onnxruntime and XGBoost back to back at one batch size, alternating which one
goes first, so a noisy neighbour slows both sides of a ratio alike.

The tuning table varies one onnxruntime setting or converter option at a time
from the shipped configuration and reports its rate and its ratio to XGBoost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench import onnx_variants
from bench.common import MODEL_ONNX, MODEL_XGB, Samples, markdown_table, paired_ratios, time_call, verdict

BATCH_SIZES = (1, 100, 1000, 10000)
TUNING_BATCHES = (1, 1000, 10000)
TARGETS = {1: 50.0, 1000: 1.5, 10000: 1.5}


@dataclass
class Engines:
    """An onnxruntime session and an XGBoost booster on the same model, pinned to one thread count."""

    threads: int
    session: Any
    booster: Any
    input_name: str

    def ort(self, rows: np.ndarray) -> np.ndarray:
        """Return probabilities from onnxruntime."""
        return self.session.run([onnx_variants.PROBABILITIES], {self.input_name: rows})[0]

    def xgb(self, rows: np.ndarray) -> np.ndarray:
        """Return probabilities from XGBoost's inplace_predict."""
        return self.booster.inplace_predict(rows, missing=np.nan)


@dataclass
class InferenceResult:
    """Rates per engine and batch size, their paired ratios, and the tuning rows."""

    threads: int
    rows: int
    features: int
    trees: int
    classes: int
    parity: float
    rates: dict[tuple[str, int, int], Samples] = field(default_factory=dict)  # (engine, threads, batch)
    tuning: list[tuple[str, dict[int, Samples], dict[int, Samples], str]] = field(default_factory=list)
    session_config: str = ""
    call_overhead_us: Samples = field(default_factory=Samples)  # session.run on a graph that does nothing


def session_options(threads: int, *, spinning: bool = True, optimization: str = "ALL",
                    parallel: bool = False, inter_threads: int = 1) -> Any:
    """Return onnxruntime SessionOptions for one configuration."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_threads
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{optimization}") \
        if optimization != "DISABLE" else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    return options


def make_session(model: Any, options: Any) -> Any:
    """Return an onnxruntime CPU session for a ModelProto or a path."""
    import onnxruntime as ort

    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def load_booster(threads: int) -> Any:
    """Return the shipped XGBoost model as a Booster using `threads` threads."""
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(str(MODEL_XGB))
    booster.set_param({"nthread": threads})
    return booster


def model_features(model: Any) -> list[str]:
    """Return the feature list stored in the ONNX model's metadata (key ``features``)."""
    props = {prop.key: prop.value for prop in model.metadata_props}
    if "features" not in props:
        raise ValueError(f"{MODEL_ONNX} has no 'features' metadata; re-export it with `make convert`")
    value = props["features"]
    return list(json.loads(value)) if value.lstrip().startswith("[") else [name.strip() for name in value.split(",")]


def sample_matrix(features: list[str]) -> np.ndarray:
    """Return every sample flow featurised for the model (float32, NaN for missing values), row order shuffled."""
    import pandas as pd

    from bench.cluster import sample_files
    from sidecar.features import FeatureExtractor

    frame = pd.concat([pd.read_csv(path) for path in sample_files()], ignore_index=True)
    matrix = FeatureExtractor(features).from_frame(frame).matrix
    order = np.random.default_rng(7).permutation(len(matrix))
    return np.ascontiguousarray(matrix[order])


def _rate(call: Callable[[np.ndarray], Any], matrix: np.ndarray, batch: int, seconds: float) -> float:
    """Return rows per second of call over consecutive batches of the matrix, for at least `seconds`."""
    starts = list(range(0, len(matrix) - batch + 1, batch)) or [0]
    position = {"i": 0}

    def one() -> None:
        start = starts[position["i"] % len(starts)]
        position["i"] += 1
        call(matrix[start:start + batch])

    call(matrix[:batch])  # warm-up: first-call allocations and thread-pool start
    elapsed, calls = time_call(one, seconds)
    return calls * batch / elapsed


def _paired(ort_call: Callable[[np.ndarray], Any], xgb_call: Callable[[np.ndarray], Any], matrix: np.ndarray,
            batch: int, runs: int, seconds: float) -> tuple[Samples, Samples]:
    ort_rates, xgb_rates = Samples(), Samples()
    for run in range(runs):
        if run % 2 == 0:
            ort_rates.add(_rate(ort_call, matrix, batch, seconds))
            xgb_rates.add(_rate(xgb_call, matrix, batch, seconds))
        else:
            xgb_rates.add(_rate(xgb_call, matrix, batch, seconds))
            ort_rates.add(_rate(ort_call, matrix, batch, seconds))
    return ort_rates, xgb_rates


def _tree_count(model: Any) -> tuple[int, int]:
    ensemble = onnx_variants._classifier(model)
    return len(set(ensemble.attributes["nodes_treeids"])), ensemble.n_classes


def run(*, quick: bool, threads: tuple[int, ...] = (1, 2), config: dict[str, Any] | None = None) -> list[InferenceResult]:
    """Measure both engines at every batch size and thread count, then the tuning variants."""
    import onnx

    config = config or {}
    runs = 3 if quick else 5
    seconds = 0.1 if quick else 0.25
    model = onnx.load(str(MODEL_ONNX))
    features = model_features(model)
    matrix = sample_matrix(features)
    trees, classes = _tree_count(model)
    results = []
    for count in threads:
        options = session_options(count, spinning=config.get("spinning", True))
        engines = Engines(count, make_session(model, options), load_booster(count), model.graph.input[0].name)
        parity = float(np.max(np.abs(engines.ort(matrix[:5000]) - engines.xgb(matrix[:5000]))))
        result = InferenceResult(count, len(matrix), len(features), trees, classes, parity,
                                 session_config=f"intra_op_num_threads={count}, inter_op_num_threads=1, sequential, "
                                                f"ORT_ENABLE_ALL, spinning {'on' if config.get('spinning', True) else 'off'}")
        for batch in BATCH_SIZES:
            print(f"  inference: {count} thread(s), batch {batch}", flush=True)
            ort_rates, xgb_rates = _paired(engines.ort, engines.xgb, matrix, batch, runs, seconds)
            result.rates[("onnxruntime", count, batch)] = ort_rates
            result.rates[("xgboost", count, batch)] = xgb_rates
        results.append(result)
    tune_threads = threads[0]
    results[0].tuning = tuning(model, matrix, tune_threads, runs=3, seconds=min(seconds, 0.2))
    results[0].call_overhead_us = session_call_overhead(len(features), seconds)
    return results


def session_call_overhead(n_features: int, seconds: float) -> Samples:
    """Return the microseconds one ``session.run`` call costs on a one-row input with a graph that does nothing."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], [onnx_variants.PROBABILITIES])], "noop",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(onnx_variants.PROBABILITIES, TensorProto.FLOAT, [None, n_features])],
    )
    noop = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    noop.ir_version = 8
    session = make_session(noop, session_options(1))
    row = np.zeros((1, n_features), dtype=np.float32)
    samples = Samples()
    for _ in range(3):
        elapsed, calls = time_call(lambda: session.run([onnx_variants.PROBABILITIES], {"input": row}), seconds)
        samples.add(elapsed / calls * 1e6)
    return samples


def _variants(model: Any, threads: int) -> list[tuple[str, Any, Any]]:
    """Return (description, model, session options): one change at a time from the shipped setup."""
    return [
        ("plain SessionOptions() (threads = one per core, spinning on)", model, None),
        (f"intra_op_num_threads={threads}", model, session_options(threads)),
        (f"intra_op_num_threads={threads}, thread spinning off", model, session_options(threads, spinning=False)),
        (f"intra_op_num_threads={threads}, graph optimisation DISABLE_ALL", model,
         session_options(threads, optimization="DISABLE")),
        (f"intra_op_num_threads={threads}, graph optimisation BASIC", model, session_options(threads, optimization="BASIC")),
        (f"intra_op_num_threads={threads}, ORT_PARALLEL, inter_op_num_threads=2", model,
         session_options(threads, parallel=True, inter_threads=2)),
        ("converter: ai.onnx.ml 1, what onnxmltools emits (the export sets 3)", onnx_variants.with_opsets(model, 15, 1),
         session_options(threads)),
        ("converter: ai.onnx.ml 5 TreeEnsemble + Add + Softmax (opset 21)", onnx_variants.as_tree_ensemble_v5(model),
         session_options(threads)),
        ("converter: one TreeEnsembleRegressor per class + Concat + Softmax", onnx_variants.split_per_class(model),
         session_options(threads)),
        ("per-class regressors, ORT_PARALLEL, inter_op_num_threads=2", onnx_variants.split_per_class(model),
         session_options(threads, parallel=True, inter_threads=2)),
    ]


def tuning(model: Any, matrix: np.ndarray, threads: int, *, runs: int, seconds: float,
           ) -> list[tuple[str, dict[int, Samples], dict[int, Samples], str]]:
    """Measure each variant against XGBoost (same threads) at the tuning batch sizes."""
    import onnxruntime as ort

    from sidecar.model import load_model

    booster = load_booster(threads)
    reference = make_session(model, session_options(threads))
    rows = []

    def xgb_call(batch_rows: np.ndarray) -> Any:
        return booster.inplace_predict(batch_rows, missing=np.nan)

    from bench.pipeline import daemon_model_threads

    daemon_threads = daemon_model_threads()
    daemon_model = load_model(MODEL_ONNX, intra_op_threads=daemon_threads)
    candidates: list[tuple[str, Callable[[np.ndarray], Any] | None, str]] = [
        (f"sidecar.model.load_model(intra_op_threads={daemon_threads}) as the daemon loads it "
         "(0 means one per core), Model.predict_proba", daemon_model.predict_proba, "the shipped session"),
    ]
    for description, variant, options in _variants(model, threads):
        try:
            session = make_session(variant, options if options is not None else ort.SessionOptions())
        except Exception as error:  # noqa: BLE001 - an unsupported variant is reported, not fatal
            candidates.append((description, None, f"failed to load: {str(error)[:120]}"))
            continue
        parity = onnx_variants.check_parity(reference, session, matrix[:2000])
        name = session.get_inputs()[0].name

        def call(batch_rows: np.ndarray, session: Any = session, name: str = name) -> Any:
            return session.run([onnx_variants.PROBABILITIES], {name: batch_rows})

        candidates.append((description, call, f"max |dp| {parity:.1e}"))

    for description, call, note in candidates:
        print(f"  tuning: {description}", flush=True)
        if call is None:
            rows.append((description, {}, {}, note))
            continue
        ort_rates: dict[int, Samples] = {}
        ratios: dict[int, Samples] = {}
        for batch in TUNING_BATCHES:
            ort_samples, xgb_samples = _paired(call, xgb_call, matrix, batch, runs, seconds)
            ort_rates[batch] = ort_samples
            ratios[batch] = paired_ratios(ort_samples, xgb_samples)
        rows.append((description, ort_rates, ratios, note))
    return rows


def report(results: list[InferenceResult]) -> str:
    """Render the inference section of RESULTS.md."""
    first = results[0]
    lines = [
        "## 1. Inference: onnxruntime against XGBoost `inplace_predict`",
        "",
        f"Model: {first.trees:,} trees, {first.classes} classes, {first.features} features. Rows: the "
        f"{first.rows:,} sample flows featurised by `FeatureExtractor.from_frame`, shuffled. "
        "Each run times onnxruntime (`session.run` for the probabilities output) and XGBoost "
        "(`Booster.inplace_predict`) back to back on the same consecutive batches; the ratio is taken per run.",
        "",
    ]
    header = ["threads", "batch", "onnxruntime rows/s", "XGBoost rows/s", "ratio ORT/XGB", "target", "verdict"]
    table = []
    for result in results:
        for batch in BATCH_SIZES:
            ort_rates = result.rates[("onnxruntime", result.threads, batch)]
            xgb_rates = result.rates[("xgboost", result.threads, batch)]
            ratio = paired_ratios(ort_rates, xgb_rates)
            target = TARGETS.get(batch)
            table.append([
                result.threads, f"{batch:,}", ort_rates.show(), xgb_rates.show(), ratio.show(2, "x"),
                f">= {target:g}x" if target else "-", verdict(ratio.median, target) if target else "-",
            ])
    lines += [markdown_table(header, table), ""]
    lines += [f"Session: {first.session_config}; XGBoost `nthread` equal to the thread column. "
              f"Largest probability difference between the engines on 5,000 rows: {first.parity:.1e}.", ""]
    if first.tuning:
        lines += [
            f"### Tuning, one change at a time ({first.threads} thread(s), 3 runs, ratio to XGBoost at the same threads)",
            "",
        ]
        header = ["configuration", *(f"rows/s @{b:,}" for b in TUNING_BATCHES), *(f"ratio @{b:,}" for b in TUNING_BATCHES), "parity"]
        table = []
        for description, rates, ratios, note in first.tuning:
            if not rates:
                table.append([description, *["-"] * (2 * len(TUNING_BATCHES)), note])
                continue
            table.append([
                description,
                *(f"{rates[b].median:,.0f}" for b in TUNING_BATCHES),
                *(f"{ratios[b].median:.2f}x ({ratios[b].low:.2f}-{ratios[b].high:.2f})" for b in TUNING_BATCHES),
                note,
            ])
        lines += [markdown_table(header, table), ""]
    lines += _findings(results)
    return "\n".join(lines)


def _findings(results: list[InferenceResult]) -> list[str]:
    """Explain each target from the measurements: the per-call costs and the best tuning row."""
    first = results[0]
    rates = {key: samples.median for result in results for key, samples in result.rates.items()}
    threads = first.threads
    ort_one = 1e6 / rates[("onnxruntime", threads, 1)]
    xgb_one = 1e6 / rates[("xgboost", threads, 1)]
    overhead = first.call_overhead_us.median
    lines = ["### Findings", ""]

    lines.append(
        f"- Batch 1, {threads} thread(s): one onnxruntime call takes {ort_one:.0f} us and one XGBoost call "
        f"{xgb_one:.0f} us. A 50x ratio needs onnxruntime at {xgb_one / 50:.1f} us per row. `session.run` "
        f"alone costs {overhead:.1f} us on a graph that does nothing (one Identity node), which leaves "
        f"{max(xgb_one / 50 - overhead, 0):.1f} us to evaluate {first.trees:,} trees."
    )

    for result in results[1:]:
        t = result.threads
        ratio_one = rates[("onnxruntime", t, 1)] / rates[("xgboost", t, 1)]
        lines.append(
            f"- With {t} threads on this shared machine, onnxruntime runs {rates[('onnxruntime', t, 1000)]:,.0f} "
            f"rows/s at batch 1,000 (against {rates[('onnxruntime', threads, 1000)]:,.0f} with {threads}) and "
            f"XGBoost {rates[('xgboost', t, 1000)]:,.0f} (against {rates[('xgboost', threads, 1000)]:,.0f}). "
            f"XGBoost's single-row call takes {1e6 / rates[('xgboost', t, 1)]:,.0f} us, because its OpenMP "
            f"threads start and wait for a busy core on every call, so the batch-1 ratio is {ratio_one:.0f}x there."
        )

    if first.tuning:
        best = {batch: max(((ratios[batch].median, description) for description, _, ratios, _ in first.tuning
                            if ratios), default=(float("nan"), "none")) for batch in (1000, 10000)}
        lines.append(
            f"- Batches of 1,000 and 10,000 at {threads} thread(s): XGBoost evaluates "
            f"{rates[('xgboost', threads, 1000)]:,.0f} rows/s and onnxruntime "
            f"{rates[('onnxruntime', threads, 1000)]:,.0f}. The bottleneck is onnxruntime's tree kernel. "
            "Among the session options, only the thread count matters (one thread beats one per core), "
            "while graph optimisation levels, spinning and parallel execution change little or hurt. "
            f"The best row at 1,000 rows is \"{best[1000][1]}\" ({best[1000][0]:.2f}x), and at 10,000 rows "
            f"\"{best[10000][1]}\" ({best[10000][0]:.2f}x). The multi-class kernel adds each leaf to a per-row "
            "vector of class scores, whereas a single-target regressor per class accumulates one number."
        )

    lines.append("")
    return lines
