"""Run the ETA1 benchmark suite and rewrite bench/RESULTS.md.

``python -m bench.run`` (``make bench``) starts a throwaway Elasticsearch node
in a temporary folder and loads the sample flows with ``eta1 load
--replicate`` (1,005,080 flows, plus a 75%-benign index). It then measures
inference, featurisation, the daemon against a plain export, a naive
baseline and the daemon's memory. Finally it stops the node, removes its
folder, and writes the report.
``--quick`` is a smoke run on about 75,000 flows that takes a few minutes.
``--es-url`` uses a running node instead; the indices the suite creates there
(``cic_bench_*``, ``eta1-bench-*``) are deleted at the end unless
``--keep-indices`` is given.

Every figure is a ratio of two things measured side by side in the same run,
with the median and the range of several runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import cluster, featurise, inference, pipeline
from bench.common import (
    MODEL_ONNX, MODEL_XGB, REPO_ROOT, RULES, BenchError, library_versions, load_average, machine_info,
    markdown_table, require_files,
)

LIBRARIES = ("numpy", "onnxruntime", "xgboost", "onnx", "onnxmltools", "pandas", "elasticsearch",
             "elastic-transport", "orjson", "pyinstrument")
PAGE_SIZE = 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: about 75,000 flows and fewer repetitions (a few minutes)")
    parser.add_argument("--es-url", help="use this running Elasticsearch node (http://127.0.0.1:PORT) "
                                         "instead of starting one")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "RESULTS.md",
                        help="report file to write (default: bench/RESULTS.md)")
    parser.add_argument("--copies", type=int, default=None,
                        help="weekly copies of the sample in the big index (default: 40, i.e. 1,005,080 flows; "
                             "--quick: 3)")
    parser.add_argument("--keep-indices", action="store_true",
                        help="with --es-url, keep the loaded flow indices for the next run")
    parser.add_argument("--skip-inference", action="store_true", help="leave out figure 1")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every figure and write the report; return the exit status."""
    args = parse_args(argv)
    try:
        require_files(MODEL_ONNX, MODEL_XGB, RULES)
        return _run(args, argv)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    started = time.perf_counter()
    began = datetime.now(timezone.utc)
    load_before = load_average()
    quick = args.quick
    copies = args.copies or (3 if quick else 40)
    command = " ".join(["python -m bench.run", *(shlex.quote(arg) for arg in (sys.argv[1:] if argv is None else argv))])
    sections: list[str] = []
    summary: list[list[str]] = []

    # 1. Inference needs no cluster, so it runs before the node starts.
    if not args.skip_inference:
        print("figure 1: inference", flush=True)
        results = inference.run(quick=quick)
        sections.append(inference.report(results))
        summary += _inference_summary(results)

    with cluster.node(args.es_url) as url:
        es = cluster.client(url)
        try:
            # 2. Load the flow indices (timed, for the record).
            flows, load_seconds = cluster.ensure_flow_index(es, url, copies)
            mix_flows, benign_share, mix_seconds = cluster.ensure_mix_index(es, url, attack_files=3 if quick else None)
            cluster.wait_for_merges(es)
            windows = cluster.copy_windows(es, cluster.FLOW_INDEX, copies, groups=3 if quick else 8)
            mix_window = cluster.whole_index_window(es, cluster.MIX_INDEX)
            baseline_window = (cluster.window_by_count(es, cluster.FLOW_INDEX, cluster.WEDNESDAY, 3000) if quick
                               else cluster.copy_window(es, cluster.FLOW_INDEX, 0))
            server_version = es.cluster.stats()["nodes"]["versions"][0]

            print("figure 2: featurisation", flush=True)
            import onnx

            from sidecar import schema

            features = inference.model_features(onnx.load(str(MODEL_ONNX)))
            feat = featurise.run(url, cluster.FLOW_INDEX, features, [*schema.ALERT_SOURCE_FIELDS, "@timestamp"],
                                 page_size=PAGE_SIZE, pages=10 if quick else 20, runs=3 if quick else 7,
                                 seconds=0.1 if quick else 0.2)
            sections.append(featurise.report(feat))
            overhead = feat.overhead["json"]
            summary.append(["2. featurisation added to json.loads", f"{overhead.median:.0%}", "<= 30%",
                            "met" if overhead.median <= featurise.TARGET_OVERHEAD else "NOT met"])

            print("figures 3-5: pipeline, baseline, memory", flush=True)
            pipe = pipeline.run(es, url, windows, mix_window, baseline_window, mix_runs=3,
                                baseline_runs=2, benign_share=benign_share)
            sections.append(pipeline.report(pipe, PAGE_SIZE))
            summary += _pipeline_summary(pipe)
        finally:
            _cleanup(es, keep=bool(args.es_url and args.keep_indices))
            es.close()

    elapsed = time.perf_counter() - started
    header = _header(command, began, elapsed, load_before, server_version, quick, flows, load_seconds,
                     mix_flows, benign_share, mix_seconds)
    text = "\n".join([header, "## Summary", "", markdown_table(["figure", "median", "target", "verdict"], summary),
                      "", *sections])
    args.output.write_text(text.rstrip("\n") + "\n")
    print(f"wrote {args.output} in {elapsed / 60:.1f} min", flush=True)
    return 0


def _inference_summary(results: list[inference.InferenceResult]) -> list[list[str]]:
    rows = []
    for result in results:
        for batch, target in inference.TARGETS.items():
            ratio = inference.paired_ratios(result.rates[("onnxruntime", result.threads, batch)],
                                            result.rates[("xgboost", result.threads, batch)])
            rows.append([f"1. ORT/XGBoost, {result.threads} thread(s), batch {batch:,}", f"{ratio.median:.2f}x",
                         f">= {target:g}x", "met" if ratio.median >= target else "NOT met"])
    return rows


def _pipeline_summary(pipe: pipeline.PipelineResult) -> list[list[str]]:
    rows = []
    for label, side in ((f"3. daemon/export, {pipe.total_flows:,} flows (~90% alerted)", pipe.million),
                        (f"3. daemon/export, {pipe.benign_share:.0%} benign", pipe.mix)):
        ratio = side.ratio.median
        rows.append([label, f"{ratio:.2f}x", ">= 0.8x", "met" if ratio >= pipeline.TARGET_RATIO else "NOT met"])
    baseline = pipeline.paired_ratios(pipe.baseline.second, pipe.baseline.first).median
    rows.append(["4. daemon/naive baseline", f"{baseline:.1f}x", "(report)", "-"])
    rows.append(["5. daemon peak RSS", f"{pipe.peak_rss / 2**20:,.0f} MiB", "flat over the run", "see section 5"])
    return rows


def _header(command: str, began: datetime, elapsed: float, load_before: str, server_version: str, quick: bool,
            flows: int, load_seconds: float | None, mix_flows: int, benign_share: float,
            mix_seconds: float | None) -> str:
    machine = machine_info()
    versions = library_versions(LIBRARIES)
    loaded = f"loaded in {load_seconds:.0f} s" if load_seconds else "already loaded"
    mix_loaded = f"loaded in {mix_seconds:.0f} s" if mix_seconds else "already loaded"
    lines = [
        "# ETA1 benchmark results",
        "",
        "Generated by `make bench`; do not edit by hand. "
        + ("**Quick smoke run: small data, few repetitions; not for quoting.**" if quick else ""),
        "",
        f"- Command: `{command}` (wall time {elapsed / 60:.1f} min, including node start, loading and cleanup)",
        f"- Date: {began.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine['cpu']}, {machine['cores']}, {machine['memory']} RAM, {machine['os']}, "
        f"Python {machine['python']}",
        f"- Load average (1/5/15 min) at start: {load_before}; at end: {load_average()}. The machine is shared, "
        "so compare the ratios (each measured side by side within one run), not the absolute rates.",
        f"- Elasticsearch {server_version}, single node on 127.0.0.1 started by the suite (heap 1 GiB)",
        f"- Data: `cic_bench_flows` {flows:,} flows ({loaded}), `cic_bench_mix` {mix_flows:,} flows, "
        f"{benign_share:.0%} benign ({mix_loaded}), from the CIC-IDS2017 sample via `eta1 load --replicate`",
        f"- Model: {MODEL_ONNX.relative_to(REPO_ROOT) if MODEL_ONNX.is_relative_to(REPO_ROOT) else MODEL_ONNX} "
        f"and {MODEL_XGB.name}",
        "- Libraries: " + ", ".join(f"{name} {version}" for name, version in versions.items()),
        "- Each figure: median (min-max, n runs). Ratios are computed run by run from measurements taken back to "
        "back, alternating which side goes first.",
        "",
    ]
    return "\n".join(lines)


def _cleanup(es: object, *, keep: bool) -> None:
    """Delete what the suite created on the node (flow indices only when not kept)."""
    from elasticsearch import Elasticsearch

    assert isinstance(es, Elasticsearch)
    cluster.delete_pattern(es, "eta1-bench-*")
    es.options(ignore_status=404).indices.delete_index_template(name="eta1-bench-alerts")
    if not keep:
        for index in (cluster.FLOW_INDEX, cluster.MIX_INDEX):
            es.options(ignore_status=404).indices.delete(index=index)


if __name__ == "__main__":
    sys.exit(main())
