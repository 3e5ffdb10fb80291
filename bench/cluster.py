"""The benchmark's Elasticsearch node and flow indices.

``node`` starts a throwaway node (es/start.sh through tests/es_node.py) in a
temporary folder, or uses the one at ``--es-url``, and removes what the suite
created afterwards. The flow indices are loaded with ``eta1 load`` from the
sample CSVs:

* ``cic_bench_flows``: every sample file ``--replicate N`` times, copy k
  shifted by k weeks, so N = 40 gives 1,005,080 flows (about 90% attacks).
* ``cic_bench_mix``: the BENIGN file replicated until it is 75% of the rows,
  plus one copy of the attack files, the share of benign traffic on a real
  network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from elasticsearch import Elasticsearch

from bench.common import DATA_DIR, REPO_ROOT, BenchError

FLOW_INDEX = "cic_bench_flows"
MIX_INDEX = "cic_bench_mix"
BENIGN_FILE = "BENIGN_2500.csv.gz"
# The loader shifts copy k of a file by k weeks, so each copy fills one week.
COPY_STEP = timedelta(days=7)
# The sample spans Mon 2017-07-03 to Fri 2017-07-07 (UTC), so copy 0 starts on this Monday.
FIRST_MONDAY = datetime(2017, 7, 3, tzinfo=timezone.utc)
# Wednesday of copy 0: the DoS day, so a short window there is mostly attacks.
WEDNESDAY = FIRST_MONDAY + timedelta(days=2)


@dataclass(frozen=True)
class Window:
    """A half-open time range [start, end) of a flow index and the number of flows in it."""

    index: str
    start: datetime
    end: datetime
    flows: int


@contextmanager
def node(es_url: str | None, heap: str = "1g") -> Iterator[str]:
    """Yield the URL of a node: the given one, or one started for the block and stopped afterwards."""
    if es_url:
        yield es_url.rstrip("/")
        return
    sys.path.insert(0, str(REPO_ROOT))
    from tests import es_node

    home = tempfile.mkdtemp(prefix="eta1-bench-es-")
    previous_heap = os.environ.get("ES_HEAP")
    os.environ["ES_HEAP"] = heap
    try:
        print(f"starting Elasticsearch (heap {heap}) in {home}", flush=True)
        url, stop = es_node.start_node(home, node_args=["--log-level=WARN"])
    finally:
        if previous_heap is None:
            os.environ.pop("ES_HEAP", None)
        else:
            os.environ["ES_HEAP"] = previous_heap
    try:
        yield url
    finally:
        print("stopping Elasticsearch", flush=True)
        stop()
        shutil.rmtree(home, ignore_errors=True)


def client(url: str) -> Elasticsearch:
    """Return a client configured as sidecar.esclient.make_client configures the daemon's."""
    return Elasticsearch(url, request_timeout=120, max_retries=0, retry_on_timeout=False)


def sample_files() -> list[Path]:
    """Return the sample CSV files, sorted."""
    files = sorted(DATA_DIR.glob("*.csv.gz"))
    if not files:
        raise BenchError(f"no *.csv.gz files in {DATA_DIR}; set ETA1_DATA_DIR to the sample flow folder")
    return files


def count_rows(paths: list[Path]) -> int:
    """Count the data rows of gzip CSV files (lines minus one header each)."""
    import gzip

    total = 0
    for path in paths:
        with gzip.open(path, "rb") as handle:
            total += sum(1 for _ in handle) - 1
    return total


def run_loader(url: str, index: str, paths: list[Path], replicate: int) -> float:
    """Load files into index with ``eta1 load --replicate``; return the wall time in seconds."""
    command = [
        str(Path(sys.executable).with_name("eta1")), "load", *map(str, paths),
        "--index", index, "--es-url", url, "--replicate", str(replicate), "--refresh",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(
            f"`eta1 load` exited with status {result.returncode} loading {index}:\n{result.stderr[-3000:]}\n"
            "fix the loader (sidecar/loader.py) or load the index by hand and pass --es-url"
        )
    return elapsed


def ensure_flow_index(es: Elasticsearch, url: str, copies: int) -> tuple[int, float | None]:
    """Load cic_bench_flows with `copies` copies unless it already contains them; return (flows, load seconds)."""
    files = sample_files()
    expected = count_rows(files) * copies
    if _count(es, FLOW_INDEX) == expected:
        print(f"{FLOW_INDEX} already contains {expected:,} flows; reusing it", flush=True)
        return expected, None
    es.options(ignore_status=404).indices.delete(index=FLOW_INDEX)
    print(f"loading {expected:,} flows into {FLOW_INDEX} (eta1 load --replicate {copies})", flush=True)
    seconds = run_loader(url, FLOW_INDEX, files, copies)
    _check_count(es, FLOW_INDEX, expected)
    return expected, seconds


def ensure_mix_index(es: Elasticsearch, url: str, attack_files: int | None) -> tuple[int, float, float | None]:
    """Load cic_bench_mix (75% benign) unless present; return (flows, benign share, load seconds).

    ``attack_files`` limits the attack classes to the first N files (for --quick).
    """
    files = sample_files()
    benign = [path for path in files if path.name == BENIGN_FILE]
    attacks = [path for path in files if path.name != BENIGN_FILE][:attack_files]
    if not benign:
        raise BenchError(f"{BENIGN_FILE} not found in {DATA_DIR}")
    benign_rows, attack_rows = count_rows(benign), count_rows(attacks)
    benign_copies = max(1, round(3 * attack_rows / benign_rows))
    expected = benign_rows * benign_copies + attack_rows
    share = benign_rows * benign_copies / expected
    if _count(es, MIX_INDEX) == expected:
        print(f"{MIX_INDEX} already contains {expected:,} flows; reusing it", flush=True)
        return expected, share, None
    es.options(ignore_status=404).indices.delete(index=MIX_INDEX)
    print(f"loading {expected:,} flows ({share:.0%} benign) into {MIX_INDEX}", flush=True)
    seconds = run_loader(url, MIX_INDEX, benign, benign_copies)
    seconds += run_loader(url, MIX_INDEX, attacks, 1)
    _check_count(es, MIX_INDEX, expected)
    return expected, share, seconds


def copy_windows(es: Elasticsearch, index: str, copies: int, groups: int) -> list[Window]:
    """Split a replicated index into `groups` windows of whole weekly copies (the last takes the rest)."""
    per_group = max(1, copies // groups)
    windows = []
    first = 0
    while first < copies:
        last = copies if len(windows) == groups - 1 else min(copies, first + per_group)
        start, end = FIRST_MONDAY + COPY_STEP * first, FIRST_MONDAY + COPY_STEP * last
        windows.append(Window(index, start, end, _count_range(es, index, start, end)))
        first = last
    return windows


def copy_window(es: Elasticsearch, index: str, copy: int) -> Window:
    """Return the window of one weekly copy."""
    start = FIRST_MONDAY + COPY_STEP * copy
    return Window(index, start, start + COPY_STEP, _count_range(es, index, start, start + COPY_STEP))


def window_by_count(es: Elasticsearch, index: str, start: datetime, flows: int) -> Window:
    """Return the window from start that contains about `flows` flows (at most 10,000)."""
    response = es.search(
        index=index, size=1, from_=min(flows, 10_000) - 1, sort=[{"@timestamp": "asc"}],
        query={"range": {"@timestamp": {"gte": start.isoformat()}}}, source=False,
    )
    hits = response["hits"]["hits"]
    if not hits:
        raise BenchError(f"{index} has fewer than {flows:,} flows after {start.isoformat()}")
    end = datetime.fromtimestamp(hits[0]["sort"][0] / 1000, tz=timezone.utc) + timedelta(milliseconds=1)
    return Window(index, start, end, _count_range(es, index, start, end))


def wait_for_merges(es: Elasticsearch, timeout: float = 300.0) -> None:
    """Wait until the node runs no segment merges, so background merging does not skew the timings."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = es.nodes.stats(metric="indices", index_metric="merge")
        if all(node["indices"]["merges"]["current"] == 0 for node in stats["nodes"].values()):
            return
        time.sleep(1.0)
    print(f"note: merges still running after {timeout:.0f} s; timings may be skewed", flush=True)


def whole_index_window(es: Elasticsearch, index: str) -> Window:
    """Return a window that covers every flow of the index."""
    end = FIRST_MONDAY + COPY_STEP * 520
    return Window(index, FIRST_MONDAY - COPY_STEP, end, _count_range(es, index, FIRST_MONDAY - COPY_STEP, end))


def _count(es: Elasticsearch, index: str) -> int:
    response = es.options(ignore_status=404).count(index=index)
    return int(response.get("count", -1)) if response.meta.status == 200 else -1


def _count_range(es: Elasticsearch, index: str, start: datetime, end: datetime) -> int:
    query = {"range": {"@timestamp": {"gte": start.isoformat(), "lt": end.isoformat()}}}
    return int(es.count(index=index, query=query)["count"])


def _check_count(es: Elasticsearch, index: str, expected: int) -> None:
    es.indices.refresh(index=index)
    actual = _count(es, index)
    if actual != expected:
        raise BenchError(
            f"{index} contains {actual:,} flows after loading, expected {expected:,}; "
            "the loader skipped or duplicated rows (run `eta1 load` by hand to see its report)"
        )


def delete_pattern(es: Elasticsearch, pattern: str) -> None:
    """Delete every index matching a wildcard pattern, one name at a time."""
    names = list(es.options(ignore_status=404).indices.get(index=pattern, allow_no_indices=True).body or {})
    for name in names:
        es.options(ignore_status=404).indices.delete(index=name)

