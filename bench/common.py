"""Shared pieces of the benchmark suite: paths, repeated timing, summaries, machine facts and tables."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("ETA1_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "cicids2017_improved_rnd2500"))
# BENCH_MODEL_DIR benchmarks a candidate model folder (eta1.onnx + eta1.json) instead of models/.
MODEL_DIR = Path(os.environ.get("BENCH_MODEL_DIR", REPO_ROOT / "models"))
MODEL_ONNX = MODEL_DIR / "eta1.onnx"
MODEL_XGB = MODEL_DIR / "eta1.json"
RULES = REPO_ROOT / "rules.yaml"
OUT_DIR = REPO_ROOT / "bench" / "out"


class BenchError(RuntimeError):
    """A benchmark cannot run; the message names what is missing and how to provide it."""


@dataclass
class Samples:
    """Repeated measurements of one quantity (a rate, a ratio or a duration)."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        """Append one measurement."""
        self.values.append(value)

    @property
    def median(self) -> float:
        """Median of the measurements (NaN when there are none)."""
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        """Smallest measurement."""
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        """Largest measurement."""
        return max(self.values) if self.values else float("nan")

    def show(self, digits: int = 0, unit: str = "") -> str:
        """Format as ``median (min-max, n runs)``."""
        if not self.values:
            return "n/a"
        fmt = f"{{:,.{digits}f}}"
        return (
            f"{fmt.format(self.median)}{unit} ({fmt.format(self.low)}-{fmt.format(self.high)}, "
            f"{len(self.values)} runs)"
        )


def paired_ratios(numerator: Samples, denominator: Samples) -> Samples:
    """Return per-run ratios of two quantities that were measured side by side, run by run."""
    if len(numerator.values) != len(denominator.values):
        raise ValueError("paired ratios need the same number of runs on both sides")
    return Samples([a / b for a, b in zip(numerator.values, denominator.values) if b])


def time_call(function: Callable[[], Any], min_seconds: float = 0.0) -> tuple[float, int]:
    """Call function repeatedly until min_seconds have passed (at least once); return (seconds, calls)."""
    gc.collect()
    calls = 0
    started = time.perf_counter()
    while True:
        function()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return elapsed, calls


def machine_info() -> dict[str, str]:
    """Return the facts a reader needs to compare runs: cores, memory, CPU model, OS, Python."""
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "memory": memory,
        "cpu": cpu_model,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def load_average() -> str:
    """Return the 1-, 5- and 15-minute load averages, a rough measure of other work on the machine."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """Return installed versions of the named distributions ("not installed" when missing)."""
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Render a GitHub-flavoured Markdown table; numeric columns are right-aligned."""
    rows = [[str(cell) for cell in row] for row in rows]
    align = ["---:" if rows and all(_looks_numeric(row[i]) for row in rows) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _looks_numeric(text: str) -> bool:
    head = text.split(" ", 1)[0].replace(",", "").rstrip("x%")
    if head.endswith("."):
        return False  # a numbered label such as "1. inference"
    try:
        float(head)
    except ValueError:
        return False
    return True


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    """Return "met" or "NOT met" for a median against its target."""
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "NOT met"


def require_files(*paths: Path) -> None:
    """Raise BenchError naming the first missing input file and how to produce it."""
    hints = {
        MODEL_ONNX: "run `make train convert` to produce it",
        MODEL_XGB: "run `make train` to produce it",
        RULES: "it ships with the repository; restore it with git",
    }
    for path in paths:
        if not path.exists():
            raise BenchError(f"{path} not found; {hints.get(path, 'create it first')}")
    if not DATA_DIR.is_dir():
        raise BenchError(f"sample flows not found at {DATA_DIR}; set ETA1_DATA_DIR to the folder of *.csv.gz files")
