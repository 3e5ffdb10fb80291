"""Figures 3-5 and the profile: the daemon against a plain export, the naive baseline, and memory.

Every role runs in its own worker process (bench/worker.py), started once, so
model loading stays out of the timings and the daemon's resident memory is
its own. The daemon worker keeps one checkpoint across the windows of the
million-flow index, so it works through the whole index, window by window.
Each window is timed against the export of the same window, alternating which
goes first. A second daemon process, from a fresh checkpoint, is profiled
with pyinstrument over the first window, so the timed daemon runs without
the profiler.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import Elasticsearch

from bench.cluster import Window, delete_pattern
from bench.common import REPO_ROOT, BenchError, Samples, markdown_table, paired_ratios, verdict

ALERTS_PREFIX = "eta1-bench-alerts-"
TARGET_RATIO = 0.8


class Worker:
    """A bench.worker process, spoken to with one JSON line per command."""

    def __init__(self, role: str, url: str):
        self.role = role
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", role, url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        )
        self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise BenchError(f"the {self.role} worker exited with status {self.process.wait()}; its stderr is above")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchError(f"the {self.role} worker failed: {answer['error']}")
        return answer

    def window(self, window: Window, **extra: Any) -> dict[str, Any]:
        """Process one window and return the worker's reply."""
        assert self.process.stdin is not None
        command = {"op": "window", "index": window.index, "start": window.start.isoformat(),
                   "end": window.end.isoformat(), **extra}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Ask the worker to quit and wait for it."""
        if self.process.poll() is None and self.process.stdin is not None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class SideBySide:
    """Rates of two roles over the same windows, run by run."""

    label: str
    flows: int = 0
    alerts: int = 0
    first: Samples = field(default_factory=Samples)  # the daemon (or the baseline)
    second: Samples = field(default_factory=Samples)  # the export (or the daemon)

    @property
    def ratio(self) -> Samples:
        """Per-run ratio first / second."""
        return paired_ratios(self.first, self.second)


@dataclass
class PipelineResult:
    """Everything figures 3 to 5 report."""

    million: SideBySide
    mix: SideBySide
    baseline: SideBySide
    mix_variants: dict[str, Samples] = field(default_factory=dict)  # daemon variants on the benign-heavy runs
    total_flows: int = 0
    benign_share: float = 0.0
    rss: list[tuple[int, int]] = field(default_factory=list)
    peak_rss: int = 0
    profile_self: list[tuple[str, float]] = field(default_factory=list)
    profile_stages: dict[str, float] = field(default_factory=dict)
    writer_stages: dict[str, float] = field(default_factory=dict)
    profile_text: str = ""
    profile_flows: int = 0
    profile_seconds: float = 0.0
    windows: list[Window] = field(default_factory=list)
    mix_window: Window | None = None
    baseline_window: Window | None = None


def _paired_run(run_number: int, first: Any, second: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run two callables in alternating order and return their replies as (first, second)."""
    if run_number % 2 == 0:
        a = first()
        b = second()
    else:
        b = second()
        a = first()
    return a, b


def _rate(answer: dict[str, Any]) -> float:
    return answer["flows"] / answer["seconds"]


def run(es: Elasticsearch, url: str, windows: list[Window], mix_window: Window, baseline_window: Window, *,
        mix_runs: int, baseline_runs: int, benign_share: float) -> PipelineResult:
    """Run the daemon, export and baseline workers over the windows; return the figures."""
    result = PipelineResult(SideBySide("million"), SideBySide("mix"), SideBySide("baseline"),
                            benign_share=benign_share, windows=windows, mix_window=mix_window,
                            baseline_window=baseline_window)
    daemon, exporter = Worker("daemon", url), Worker("export", url)
    try:
        _million(result, daemon, exporter, windows)
        # The variant is the thread setting the daemon does not use by default.
        threads_variant = "daemon-allcores" if daemon_model_threads() == 1 else "daemon-1thread"
        variants = {threads_variant: Worker(threads_variant, url), "daemon-stdjson": Worker("daemon-stdjson", url)}
        try:
            _mix(es, result, daemon, exporter, variants, mix_window, mix_runs)
        finally:
            for worker in variants.values():
                worker.close()
    finally:
        daemon.close()
    _profile(result, url, windows[0])
    try:
        baseline = Worker("baseline", url)
        daemon = Worker("daemon", url)
        try:
            _baseline(es, result, baseline, daemon, baseline_window, baseline_runs)
        finally:
            baseline.close()
            daemon.close()
    finally:
        exporter.close()
    return result


def _million(result: PipelineResult, daemon: Worker, exporter: Worker, windows: list[Window]) -> None:
    """Daemon over every window of the big index, each run against the export of the same window."""
    for number, window in enumerate(windows):
        print(f"  pipeline: window {number + 1}/{len(windows)} ({window.flows:,} flows)", flush=True)
        answer_daemon, answer_export = _paired_run(
            number,
            lambda: daemon.window(window, state="million", alerts=f"{ALERTS_PREFIX}main-%Y.%m"),
            lambda: exporter.window(window),
        )
        _check_flows(window, answer_daemon, answer_export)
        result.million.first.add(_rate(answer_daemon))
        result.million.second.add(_rate(answer_export))
        result.million.flows += answer_daemon["flows"]
        result.million.alerts += answer_daemon["alerts"]
        result.rss = [tuple(pair) for pair in answer_daemon["rss"]]
        result.peak_rss = answer_daemon["peak_rss"]
    result.total_flows = result.million.flows


def _profile(result: PipelineResult, url: str, window: Window) -> None:
    """Profile a second daemon process over one window, from a fresh checkpoint, so the timed daemon runs bare."""
    print(f"  pipeline: profiling the daemon over {window.flows:,} flows", flush=True)
    profiled = Worker("daemon", url)
    try:
        answer = profiled.window(window, state="profile", alerts=f"{ALERTS_PREFIX}profile-%Y.%m", profile=True,
                                 profile_name="daemon")
    finally:
        profiled.close()
    _check_flows(window, answer)
    profile = answer.get("profile") or {}
    result.profile_self = [tuple(pair) for pair in profile.get("self", [])]
    result.profile_stages = profile.get("stages", {})
    result.writer_stages = profile.get("writer", {})
    result.profile_text = profile.get("text", "(no profile: pyinstrument is not installed)")
    result.profile_flows = answer["flows"]
    result.profile_seconds = answer["seconds"]


def daemon_model_threads() -> int:
    """Return the onnxruntime thread count the daemon's default configuration loads the model with."""
    from sidecar.config import Config

    # Configurations without the model_threads key use load_model's default, 0 (one per core).
    return int(getattr(Config(), "model_threads", 0))


def _mix(es: Elasticsearch, result: PipelineResult, daemon: Worker, exporter: Worker, variants: dict[str, Worker],
         window: Window, runs: int) -> None:
    """Daemon, and daemon variants, against export on the benign-heavy index.

    Each run starts every daemon from a fresh checkpoint and fresh alert indices; the order rotates run by run.
    """
    for number in range(runs):
        print(f"  pipeline: benign-heavy run {number + 1}/{runs} ({window.flows:,} flows)", flush=True)
        tasks = {
            "daemon": lambda: daemon.window(window, state=f"mix{number}", alerts=f"{ALERTS_PREFIX}mix{number}-%Y.%m"),
            "export": lambda: exporter.window(window),
        }
        for name, worker in variants.items():
            tasks[name] = lambda worker=worker, name=name: worker.window(
                window, state=f"{name}{number}", alerts=f"{ALERTS_PREFIX}{name}{number}-%Y.%m")
        names = list(tasks)
        names = names[number % len(names):] + names[:number % len(names)]
        answers = {name: tasks[name]() for name in names}
        _check_flows(window, *answers.values())
        result.mix.first.add(_rate(answers["daemon"]))
        result.mix.second.add(_rate(answers["export"]))
        for name in variants:
            result.mix_variants.setdefault(name, Samples()).add(_rate(answers[name]))
        result.mix.flows = answers["daemon"]["flows"]
        result.mix.alerts = answers["daemon"]["alerts"]
        delete_pattern(es, f"{ALERTS_PREFIX}mix{number}-*")
        for name in variants:
            delete_pattern(es, f"{ALERTS_PREFIX}{name}{number}-*")


def _baseline(es: Elasticsearch, result: PipelineResult, baseline: Worker, daemon: Worker, window: Window,
              runs: int) -> None:
    """Naive baseline against the daemon on the same window, from fresh alert indices each run."""
    for number in range(runs):
        print(f"  baseline: run {number + 1}/{runs} ({window.flows:,} flows)", flush=True)
        answer_baseline, answer_daemon = _paired_run(
            number,
            lambda: baseline.window(window, alerts=f"{ALERTS_PREFIX}naive{number}-%Y.%m"),
            lambda: daemon.window(window, state=f"base{number}", alerts=f"{ALERTS_PREFIX}base{number}-%Y.%m"),
        )
        _check_flows(window, answer_baseline, answer_daemon)
        if answer_baseline["alerts"] != answer_daemon["alerts"]:
            print(f"  note: baseline wrote {answer_baseline['alerts']:,} alerts, the daemon "
                  f"{answer_daemon['alerts']:,} (XGBoost and onnxruntime differ near a threshold)", flush=True)
        result.baseline.first.add(_rate(answer_baseline))
        result.baseline.second.add(_rate(answer_daemon))
        result.baseline.flows = answer_daemon["flows"]
        result.baseline.alerts = answer_daemon["alerts"]
        delete_pattern(es, f"{ALERTS_PREFIX}naive{number}-*")
        delete_pattern(es, f"{ALERTS_PREFIX}base{number}-*")


def _check_flows(window: Window, *answers: dict[str, Any]) -> None:
    for answer in answers:
        if answer["flows"] != window.flows:
            raise BenchError(
                f"a worker read {answer['flows']:,} flows from {window.index} [{window.start}, {window.end}), "
                f"which contains {window.flows:,}; a stale checkpoint in eta1-bench-state? Delete that index and rerun"
            )


def report(result: PipelineResult, page_size: int) -> str:
    """Render sections 3 to 5 and the profile for RESULTS.md."""
    million, mix, baseline = result.million, result.mix, result.baseline

    lines = [
        "## 3. The pipeline: daemon against a plain `search_after` export",
        "",
        f"The daemon (`Daemon.run(until_idle=True)`: read, classify, bulk-write alerts, store the checkpoint) "
        f"works through the {result.total_flows:,}-flow index in {len(result.windows)} windows of whole weekly "
        f"copies in one process, keeping its checkpoint; each window is timed next to a plain "
        f"point-in-time + `search_after` export of the same window, fields and page size ({page_size:,}). "
        "A second daemon process, from a fresh checkpoint, is profiled over the first window (below). "
        "Alerts go to monthly indices (`eta1-bench-alerts-main-%Y.%m`): "
        "the replicated copies span 40 weeks, and a daily pattern would create 200 alert indices, "
        "a cost a day of real traffic does not have.",
        "",
    ]
    rows = []
    for side, share in ((million, "about 90% attacks (the sample's mix)"), (mix, f"{result.benign_share:.0%} benign")):
        ratio = side.ratio
        rows.append([
            f"{side.flows:,} flows, {share}", f"{side.alerts / max(side.flows, 1):.1%}",
            side.first.show(), side.second.show(), ratio.show(2, "x"), ">= 0.8x", verdict(ratio.median, TARGET_RATIO),
        ])
    lines += [markdown_table(["data", "flows alerted", "daemon flows/s", "export flows/s", "daemon/export",
                              "target", "verdict"], rows), ""]

    if result.mix_variants:
        descriptions = {
            "daemon-stdjson": "the client's standard-library JSON serializer instead of orjson "
                              "(`sidecar.esclient.FastJsonSerializer`)",
            "daemon-1thread": "onnxruntime on 1 intra-op thread: `load_model(path, intra_op_threads=1)` "
                              f"(the daemon loads it with {daemon_model_threads()}, 0 meaning one per core)",
            "daemon-allcores": "onnxruntime on one intra-op thread per core: `load_model(path, intra_op_threads=0)` "
                               f"(the daemon loads it with {daemon_model_threads()})",
        }
        rows = [[descriptions.get(name, name), samples.show(), paired_ratios(samples, mix.second).show(2, "x"),
                 paired_ratios(samples, mix.first).show(2, "x")] for name, samples in result.mix_variants.items()]
        lines += [
            "Daemon variants timed in the same benign-heavy runs (one change each from the daemon as shipped):",
            "",
            markdown_table(["variant", "flows/s", "variant/export", "variant/daemon"], rows),
            "",
        ]
    lines += _pipeline_findings(result)
    lines += [
        "## 4. A naive baseline against the daemon",
        "",
        "The baseline is written the obvious way: per page of a point-in-time `search_after` read (whole "
        "`_source`), a pandas DataFrame, XGBoost `Booster.predict` on a DMatrix, and one `index` request per "
        "alert, with the same alert documents and thresholds. The daemon runs on the same window from a fresh "
        "checkpoint.",
        "",
        markdown_table(
            ["window", "flows alerted", "baseline flows/s", "daemon flows/s", "daemon/baseline"],
            [[f"{baseline.flows:,} flows", f"{baseline.alerts / max(baseline.flows, 1):.1%}", baseline.first.show(),
              baseline.second.show(), paired_ratios(baseline.second, baseline.first).show(1, "x")]],
        ),
        "",
    ]
    lines += _memory_section(result)
    lines += _profile_section(result)
    return "\n".join(lines)


def _memory_section(result: PipelineResult) -> list[str]:
    samples = result.rss
    lines = [
        "## 5. Memory: the daemon's resident set over the whole index",
        "",
        f"Peak RSS of the daemon process: {result.peak_rss / 2**20:,.0f} MiB over {result.total_flows:,} flows "
        "(the larger of VmHWM and the 20 ms samples; the model, onnxruntime and the Elasticsearch client "
        "included). RSS sampled each time the flow count passed a multiple of 50,000:",
        "",
    ]
    if len(samples) >= 3:
        steady = [rss for flows, rss in samples if flows >= 100_000] or [rss for _, rss in samples[1:]]
        first_full = next((flows for flows, _ in samples if flows >= 100_000), samples[1][0])
        first_half = steady[: len(steady) // 2] or steady
        second_half = steady[len(steady) // 2:] or steady
        growth = (max(second_half) - max(first_half)) / 2**20
        lines.append(
            f"From {first_full:,} flows on, RSS stays between {min(steady) / 2**20:,.0f} and {max(steady) / 2**20:,.0f} MiB; "
            f"the peak of the second half of the run is {growth:+.1f} MiB from the peak of the first half."
        )
        lines.append("")
    shown = samples if len(samples) <= 25 else samples[:: max(1, len(samples) // 22)] + [samples[-1]]
    lines += [markdown_table(["flows processed", "RSS MiB"], [[f"{flows:,}", f"{rss / 2**20:,.1f}"] for flows, rss in shown]), ""]
    return lines


def _profile_section(result: PipelineResult) -> list[str]:
    lines = [
        "## Profile of the daemon (first window, separate process)",
        "",
        f"pyinstrument (5 ms interval, wall-clock) over {result.profile_flows:,} flows in "
        f"{result.profile_seconds:.1f} s, profiler overhead included. "
        "Wall time per stage of the main thread (the outermost call of the function that does it), and of "
        "the writer thread (timed around its methods; it runs alongside the main thread, so its shares are of "
        "the same total and the columns do not add up across threads):",
        "",
        markdown_table(["stage", "seconds", "share"], _stage_rows(result.profile_stages, result.writer_stages)),
        "",
        "Top functions of the main thread by own time (waiting on a socket counts to the function that waits):",
        "",
        markdown_table(["own time s", "share", "function"],
                       [[f"{seconds:.2f}", f"{seconds / max(result.profile_seconds, 1e-9):.0%}", name.replace("|", "/")]
                        for name, seconds in result.profile_self[:15]]),
        "",
        "Call tree (pyinstrument text output, trimmed to 60 lines; the full tree is written to bench/out/):",
        "",
        "```",
        *result.profile_text.strip("\n").splitlines()[:60],
        "```",
        "",
    ]
    return lines


def _stage_rows(stages: dict[str, float], writer: dict[str, float]) -> list[list[str]]:
    total = stages.get("total", 0.0) or 1e-9
    rows = [[name, f"{seconds:.2f}", f"{seconds / total:.0%}"] for name, seconds in stages.items() if name != "total"]
    other = total - sum(seconds for name, seconds in stages.items() if name != "total")
    rows.append(["main: everything else (detect's own code, loop, lease, logging)", f"{other:.2f}", f"{other / total:.0%}"])
    rows.append(["main: total (the profiled window)", f"{total:.2f}", "100%"])
    rows += [[name, f"{seconds:.2f}", f"{seconds / total:.0%}"] for name, seconds in writer.items()]
    return rows


def _pipeline_findings(result: PipelineResult) -> list[str]:
    """Name the bottleneck from the profiled window's stage times and the variant runs."""
    stages = result.profile_stages
    total = stages.get("total", 0.0)
    if not total:
        return []

    def share(name: str) -> str:
        return f"{stages.get(name, 0.0) / total:.0%}"

    writer_busy = result.writer_stages.get("writer: whole page (write + cursor + counts)", 0.0) / total
    lines = [
        "### Findings",
        "",
        "- The daemon overlaps its stages: the next page is fetched (and decoded by the client) in a prefetch "
        "thread, and the previous page's alerts are written and its cursor stored in a writer thread, while the "
        "main thread classifies. All three share one interpreter lock, so the Python work of the three adds up.",
        f"- In the profiled window the main thread spent {share('main: build alert documents')} of the time "
        f"building alert documents (`sidecar.alerts.build_alert`: two timestamp formats and a blake2b per "
        f"alert; the batch time and the index name are formatted once), {share('main: model (onnxruntime)')} "
        "in the model, "
        f"{share('main: featurise')} featurising, and "
        f"{share('main: wait for the prefetched page (search + decode in the prefetch thread)')} waiting for the "
        f"next page; the writer thread was busy {writer_busy:.0%} of the window. The export does only the "
        "search and the JSON decoding, so the alert documents and the model are the daemon's extra cost, "
        "and with about 90% of flows alerted the alert path dominates.",
    ]
    for name, samples in result.mix_variants.items():
        gain = paired_ratios(samples, result.mix.first).median
        what = {"daemon-stdjson": "the standard-library JSON serializer in the client", "daemon-1thread": "onnxruntime on one thread",
                "daemon-allcores": "onnxruntime on one thread per core"}.get(name, name)
        lines.append(f"- On the benign-heavy index, {what} changed the daemon's rate by {gain:.2f}x (table above).")
    lines.append("")
    return lines
