"""Figure 2: featurisation, from raw search-response bytes to the float32 matrix, against decoding alone.

The pages are real ``_search`` responses from the benchmark node, fetched with
the body the daemon's FlowReader sends (time sort, ``_source`` limited to the
model's features and the alert fields, page size = ``batch_size``). Each run
times, on the same bytes:

* decode: ``json.loads`` (what the Elasticsearch client does by default);
* featurise: ``json.loads``, then ``FeatureExtractor.from_records`` on the
  ``_source`` dicts, as ``Detector.detect`` calls it;
* the same two with ``orjson.loads``, when orjson is installed.

The overhead is featurise / decode - 1, per run. Each run keeps the fastest
of three timings per method, so a burst of other work on the shared machine
does not land on one side of a ratio only.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import Samples, markdown_table, paired_ratios, time_call, verdict

TARGET_OVERHEAD = 0.30


@dataclass
class FeaturiseResult:
    """Flow rates per method and the featurisation overhead over decoding."""

    pages: int
    flows: int
    page_bytes: int
    rates: dict[str, Samples] = field(default_factory=dict)
    overhead: dict[str, Samples] = field(default_factory=dict)
    orjson_version: str | None = None


def fetch_pages(url: str, index: str, fields: list[str], page_size: int, pages: int) -> list[bytes]:
    """Return the raw bytes of `pages` consecutive search_after pages of the index (loopback node only)."""
    bodies: list[bytes] = []
    search_after: list[Any] | None = None
    for _ in range(pages):
        body: dict[str, Any] = {
            "size": page_size,
            "sort": [{"@timestamp": {"order": "asc", "format": "strict_date_optional_time_nanos"}}],
            "query": {"bool": {"filter": [{"exists": {"field": "@timestamp"}}]}},
            "track_total_hits": False,
            "_source": {"includes": fields},
        }
        if search_after is not None:
            body["search_after"] = search_after
        request = urllib.request.Request(
            f"{url}/{index}/_search", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
        hits = json.loads(raw)["hits"]["hits"]
        if not hits:
            break
        bodies.append(raw)
        search_after = hits[-1]["sort"]
    return bodies


def run(url: str, index: str, features: list[str], extra_fields: list[str], *, page_size: int,
        pages: int, runs: int, seconds: float) -> FeaturiseResult:
    """Time decoding and featurising the same pages, alternating the order run by run."""
    from sidecar.features import FeatureExtractor

    raw_pages = fetch_pages(url, index, list(dict.fromkeys([*features, *extra_fields])), page_size, pages)
    flows = sum(len(json.loads(raw)["hits"]["hits"]) for raw in raw_pages)
    extractor = FeatureExtractor(features)
    loaders: dict[str, Callable[[bytes], Any]] = {"json": json.loads}
    result = FeaturiseResult(len(raw_pages), flows, sum(map(len, raw_pages)) // max(1, len(raw_pages)))
    try:
        import orjson

        loaders["orjson"] = orjson.loads
        result.orjson_version = orjson.__version__
    except ImportError:
        pass

    def decode_all(loads: Callable[[bytes], Any]) -> None:
        for raw in raw_pages:
            loads(raw)

    def featurise_all(loads: Callable[[bytes], Any]) -> None:
        for raw in raw_pages:
            hits = loads(raw)["hits"]["hits"]
            batch = extractor.from_records([hit.get("_source") or {} for hit in hits])
            if batch.unusable:
                raise AssertionError(f"{len(batch.unusable)} sample flows unusable: {batch.unusable[:3]}")

    methods: dict[str, Callable[[], None]] = {}
    for name, loads in loaders.items():
        methods[f"decode ({name})"] = lambda loads=loads: decode_all(loads)
        methods[f"decode + featurise ({name})"] = lambda loads=loads: featurise_all(loads)
    for name in methods:
        result.rates[name] = Samples()
    names = list(methods)
    for run_number in range(runs):
        for name in names if run_number % 2 == 0 else reversed(names):
            # The fastest of three timings: a burst of other work on the shared machine lengthens one of
            # them, not the cost being measured.
            best = max(calls / elapsed for elapsed, calls in (time_call(methods[name], seconds) for _ in range(3)))
            result.rates[name].add(best * flows)
    for name in loaders:
        decode = result.rates[f"decode ({name})"]
        featurise = result.rates[f"decode + featurise ({name})"]
        # Time ratio featurise/decode = rate ratio decode/featurise.
        result.overhead[name] = Samples([value - 1.0 for value in paired_ratios(decode, featurise).values])
    return result


def report(result: FeaturiseResult) -> str:
    """Render the featurisation section of RESULTS.md."""
    lines = [
        "## 2. Featurisation: raw search-response bytes to the float32 matrix",
        "",
        f"{result.pages} real `_search` pages of {result.flows // max(1, result.pages):,} hits "
        f"({result.page_bytes / 1e6:.2f} MB each, `_source` limited to the model features and the alert fields). "
        "Each run times every method on the same bytes (the fastest of three timings per method), "
        "alternating the order.",
        "",
        markdown_table(["method", "flows/s"], [[name, samples.show()] for name, samples in result.rates.items()]),
        "",
    ]
    rows = []
    for name, overhead in result.overhead.items():
        percent = Samples([value * 100 for value in overhead.values])
        target = "<= 30%" if name == "json" else "(reference)"
        rows.append([f"featurisation added to `{name}.loads`", percent.show(1, "%"), target,
                     verdict(overhead.median, TARGET_OVERHEAD, higher_is_better=False) if name == "json" else "-"])
    lines += [markdown_table(["overhead", "median (range)", "target", "verdict"], rows), ""]
    if result.orjson_version:
        json_rate = result.rates["decode + featurise (json)"].median
        orjson_rate = result.rates["decode + featurise (orjson)"].median
        lines += [
            f"orjson {result.orjson_version}: decode + featurise runs at {orjson_rate / json_rate:.2f}x the "
            "`json` rate on the same pages.",
            "",
        ]
    return "\n".join(lines)
