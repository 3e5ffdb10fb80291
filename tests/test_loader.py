"""``eta1 load`` against a real Elasticsearch node: types, bad rows, idempotency, time zones, copies."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch
from elastic_transport import ObjectApiResponse

from sidecar import flow_index, loader
from sidecar.loader import LoadError, load_files

pytestmark = pytest.mark.es

SAMPLE_ROWS = 25_127
PLUS8 = timezone(timedelta(hours=8))

# CSE-CIC-IDS2018 short names, plus a column that sidecar.schema does not list.
IDS2018_HEADER = (
    "Flow ID,Src IP,Src Port,Dst IP,Dst Port,Protocol,Timestamp,Flow Duration,Tot Fwd Pkts,Tot Bwd Pkts,"
    "TotLen Fwd Pkts,Flow Byts/s,Flow Pkts/s,Init Fwd Win Byts,Label,Sensor"
)
IDS2018_ROWS = [
    # line 2: good
    "a,192.168.1.10,50000,10.0.0.1,80,6,14/02/2018 08:31:01,1000,2,1,120,5000.5,3000.0,8192,Benign,s1",
    # line 3: Infinity and NaN in the rate fields
    "b,192.168.1.10,50001,10.0.0.1,80,6,14/02/2018 08:31:02,0,1,0,0,Infinity,NaN,8192,Benign,s1",
    # line 4: one field short
    "c,192.168.1.10,50002,10.0.0.1,80,6,14/02/2018 08:31:03,1000,2,1,120,5000.5,3000.0,8192,Benign",
    # line 5: good
    "d,192.168.1.11,50003,10.0.0.2,22,6,14/02/2018 08:31:04,2000,4,2,240,6000.0,3000.0,-1,FTP-BruteForce,s2",
    # line 6: invalid timestamp
    "e,192.168.1.11,50004,10.0.0.2,22,6,14/02/2018 25:99:00,2000,4,2,240,6000.0,3000.0,-1,Benign,s2",
    # line 7: non-numeric value
    "f,192.168.1.11,50005,10.0.0.2,22,6,14/02/2018 08:31:06,2000,four,2,240,6000.0,3000.0,-1,Benign,s2",
    # line 8: invalid IP address
    "g,192.168.1.300,50006,10.0.0.2,22,6,14/02/2018 08:31:07,2000,4,2,240,6000.0,3000.0,-1,Benign,s2",
    # line 9: repeated header, as in CSVs concatenated from several exports
    IDS2018_HEADER,
    # line 10: good
    "h,192.168.1.12,50007,10.0.0.3,443,6,14/02/2018 08:31:08,3000,6,3,360,7000.0,3000.0,65535,Benign,s3",
]


@pytest.fixture
def flow_template(es: Elasticsearch) -> None:
    """The flow template for cic_* with the default time field, as ``eta1 load`` installs it."""
    flow_index.put_index_template(es, ["cic_*"], time_field="@timestamp")


def sample_files(data_dir: Path) -> list[str]:
    return sorted(str(path) for path in data_dir.glob("*.csv.gz"))


def write_ids2018(path: Path, *, compress: bool = False) -> Path:
    text = "\n".join([IDS2018_HEADER, *IDS2018_ROWS]) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return path


def count(es: Elasticsearch, index: str, query: dict | None = None) -> int:
    es.indices.refresh(index=index)
    return int(es.count(index=index, query=query or {"match_all": {}})["count"])


def sources(es: Elasticsearch, index: str) -> Iterator[dict]:
    es.indices.refresh(index=index)
    for hit in es.search(index=index, size=1000, query={"match_all": {}})["hits"]["hits"]:
        yield hit["_source"]


def sample_column_counts(data_dir: Path, column: str, value: str) -> int:
    total = 0
    for path in sample_files(data_dir):
        with gzip.open(path, "rt", newline="") as handle:
            total += sum(1 for row in csv.DictReader(handle) if row[column] == value)
    return total


# --- The whole sample, through the command line ------------------------------------------


def test_load_sample_all_rows_and_types(
    es: Elasticsearch, es_url: str, index_name: str, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = loader.main([*sample_files(data_dir), "--index", index_name, "--es-url", es_url, "--refresh"])

    summary = capsys.readouterr().out
    assert status == 0, summary
    assert f"loaded:          {SAMPLE_ROWS:,}" in summary
    assert es.count(index=index_name)["count"] == SAMPLE_ROWS

    properties = es.indices.get_mapping(index=index_name)[index_name]["mappings"]["properties"]
    expected_types = {
        "Src IP": "ip", "Dst IP": "ip", "@timestamp": "date",
        "Src Port": "long", "Dst Port": "long", "Protocol": "long", "Flow Duration": "long",
        "Flow Bytes/s": "double", "Flow IAT Mean": "double", "Idle Max": "double",
        "Timestamp": "keyword", "Flow ID": "keyword", "Label": "keyword", "id": "keyword",
        "ICMP Type": "keyword",
    }
    for name, kind in expected_types.items():
        assert properties[name]["type"] == kind, name

    heartbleed_port = sample_column_counts(data_dir, "Dst Port", "444")
    assert count(es, index_name, {"range": {"Dst Port": {"gte": 444, "lte": 444}}}) == heartbleed_port
    scanner = sample_column_counts(data_dir, "Src IP", "192.168.10.8")
    assert count(es, index_name, {"term": {"Src IP": "192.168.10.8"}}) == scanner
    assert count(es, index_name, {"term": {"Src IP": "192.168.10.0/24"}}) > 0
    heartbleed_window = {"range": {"@timestamp": {"gte": "2017-07-05T18:12:00Z", "lt": "2017-07-05T18:33:00Z"}}}
    in_window = {"bool": {"filter": [heartbleed_window, {"term": {"Label": "Heartbleed"}}]}}
    assert count(es, index_name, in_window) == 11


# --- Bad rows, unknown columns, Infinity/NaN, CSE-CIC-IDS2018 names -----------------------------


def test_load_bad_rows_reported(es: Elasticsearch, flow_template: None, index_name: str, tmp_path: Path) -> None:
    path = write_ids2018(tmp_path / "ids2018.csv")
    report = load_files(es, [str(path)], index_name, refresh=True)

    assert report.loaded == 4
    assert report.already_present == 0
    assert report.repeated_headers == 1
    assert dict(report.rejected) == {
        loader.WRONG_COLUMN_COUNT: 1,
        loader.INVALID_TIMESTAMP: 1,
        loader.NON_NUMERIC: 1,
        loader.INVALID_IP: 1,
    }
    assert [(row.line, row.reason) for row in report.bad_rows] == [
        (4, loader.WRONG_COLUMN_COUNT),
        (6, loader.INVALID_TIMESTAMP),
        (7, loader.NON_NUMERIC),
        (8, loader.INVALID_IP),
    ]
    assert str(report.bad_rows[2]) == f"{path}:7: non-numeric value: 'Total Fwd Packet' is 'four'"
    assert count(es, index_name) == 4


def test_load_renames_and_keeps_columns(es: Elasticsearch, flow_template: None, index_name: str, tmp_path: Path) -> None:
    load_files(es, [str(write_ids2018(tmp_path / "ids2018.csv"))], index_name)
    by_flow = {source["Flow ID"]: source for source in sources(es, index_name)}

    good = by_flow["a"]
    assert good["Total Fwd Packet"] == 2
    assert good["Total Length of Fwd Packet"] == 120.0
    assert good["Flow Bytes/s"] == 5000.5
    assert good["Fwd Init Win Bytes"] == 8192
    assert good["Sensor"] == "s1"
    assert good["Label"] == "Benign"
    assert good["Timestamp"] == "14/02/2018 08:31:01"
    assert good["@timestamp"] == "2018-02-14T08:31:01.000000Z"

    infinite = by_flow["b"]
    assert infinite["Flow Bytes/s"] is None
    assert infinite["Flow Packets/s"] is None

    properties = es.indices.get_mapping(index=index_name)[index_name]["mappings"]["properties"]
    assert properties["Sensor"]["type"] == "keyword"
    assert "Tot Fwd Pkts" not in properties


def test_main_exit_1_on_rejected_rows(
    es_url: str, index_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_ids2018(tmp_path / "ids2018.csv")
    status = loader.main([str(path), "--index", index_name, "--es-url", es_url, "--show-rejected", "2"])

    assert status == 1
    summary = capsys.readouterr().out
    assert "rejected:        4" in summary
    assert f"{path}:4: wrong column count: 15 fields, the header has 16" in summary
    assert "... and 2 more" in summary


# --- Idempotency, gzip -------------------------------------------------------------------------


def test_load_twice_same_count(es: Elasticsearch, flow_template: None, index_name: str, data_dir: Path) -> None:
    files = [str(data_dir / "Heartbleed_11.csv.gz"), str(data_dir / "Web_Attack_-_XSS_18.csv.gz")]
    first = load_files(es, files, index_name)
    second = load_files(es, files, index_name)

    assert first.loaded == 29
    assert second.loaded == 0
    assert second.already_present == 29
    assert second.rejected_total == 0
    assert count(es, index_name) == 29


def test_load_gzip_and_plain_same_documents(
    es: Elasticsearch, flow_template: None, index_name: str, tmp_path: Path
) -> None:
    plain = write_ids2018(tmp_path / "flows.csv")
    packed = write_ids2018(tmp_path / "flows.csv.gz", compress=True)

    from_plain = load_files(es, [str(plain)], index_name)
    from_gzip = load_files(es, [str(packed)], index_name)

    assert from_plain.loaded == 4
    assert from_gzip.loaded == 0
    assert from_gzip.already_present == 4
    assert count(es, index_name) == 4


def test_load_truncated_gzip(es: Elasticsearch, flow_template: None, index_name: str, data_dir: Path, tmp_path: Path) -> None:
    whole = (data_dir / "DDoS_2500.csv.gz").read_bytes()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])

    with pytest.raises(LoadError, match=r"cut\.csv\.gz: unreadable gzip data after line \d+"):
        load_files(es, [str(cut)], index_name)


def test_load_missing_file_writes_nothing(
    es: Elasticsearch, flow_template: None, index_name: str, data_dir: Path, tmp_path: Path
) -> None:
    files = [str(data_dir / "Heartbleed_11.csv.gz"), str(tmp_path / "missing.csv")]

    with pytest.raises(LoadError, match=r"missing\.csv: file not found"):
        load_files(es, files, index_name)
    assert not es.indices.exists(index=index_name)


# --- Time zones and time fields ----------------------------------------------------------------


def test_load_timezone_offset(es: Elasticsearch, flow_template: None, index_name: str, tmp_path: Path) -> None:
    path = tmp_path / "local.csv"
    path.write_text(
        "Flow ID,Src IP,Dst IP,Timestamp,Flow Duration\n"
        "naive,10.0.0.1,10.0.0.2,2017-07-05 18:12:15.650811,1\n"
        "dayfirst,10.0.0.1,10.0.0.2,05/07/2017 18:12:15,1\n"
        "offset,10.0.0.1,10.0.0.2,2017-07-05T18:12:15+02:00,1\n"
        "epoch,10.0.0.1,10.0.0.2,1499278335,1\n"
    )
    report = load_files(es, [str(path)], index_name, default_tz=PLUS8)
    times = {source["Flow ID"]: source["@timestamp"] for source in sources(es, index_name)}

    assert report.loaded == 4
    assert times == {
        "naive": "2017-07-05T10:12:15.650811Z",
        "dayfirst": "2017-07-05T10:12:15.000000Z",
        "offset": "2017-07-05T16:12:15.000000Z",
        "epoch": "2017-07-05T18:12:15.000000Z",
    }
    utc_window = {"range": {"@timestamp": {"gte": "2017-07-05T10:12:15Z", "lt": "2017-07-05T10:12:16Z"}}}
    assert count(es, index_name, utc_window) == 2


def test_load_dotted_time_field(es: Elasticsearch, data_dir: Path) -> None:
    # Own pattern and template name, so the cic_* template of the other tests keeps @timestamp.
    index, template = "cicdotted_test_flows", "eta1-flows-test-dotted"
    es.options(ignore_status=404).indices.delete(index=index)
    try:
        flow_index.put_index_template(es, ["cicdotted_*"], time_field="event.ingested", name=template)
        report = load_files(es, [str(data_dir / "Heartbleed_11.csv.gz")], index, time_field="event.ingested")
        properties = es.indices.get_mapping(index=index)[index]["mappings"]["properties"]

        assert report.loaded == 11
        assert properties["event"]["properties"]["ingested"]["type"] == "date"
        assert "@timestamp" not in properties
        window = {"range": {"event.ingested": {"gte": "2017-07-05T18:12:00Z", "lt": "2017-07-05T18:33:00Z"}}}
        assert count(es, index, window) == 11
    finally:
        es.options(ignore_status=404).indices.delete(index=index)
        es.options(ignore_status=404).indices.delete_index_template(name=template)


def test_template_install_idempotent(es: Elasticsearch) -> None:
    template = "eta1-flows-test-idempotent"
    try:
        assert flow_index.put_index_template(es, ["cicidem_*"], name=template) is True
        assert flow_index.put_index_template(es, ["cicidem_*"], name=template) is False
        assert flow_index.put_index_template(es, ["cicidem_*"], time_field="event.ingested", name=template) is True
    finally:
        es.options(ignore_status=404).indices.delete_index_template(name=template)


def test_existing_index_without_template_warns(
    es: Elasticsearch, flow_template: None, index_name: str, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    es.indices.create(index=index_name, mappings={"properties": {"Src IP": {"type": "keyword"}}})
    load_files(es, [str(data_dir / "Heartbleed_11.csv.gz")], index_name)

    assert f"index {index_name} maps 'Src IP' as keyword, not ip" in caplog.text


# --- Copies ---------------------------------------------------------------------------------------


def test_load_replicate_shifts_time_and_ids(
    es: Elasticsearch, flow_template: None, index_name: str, data_dir: Path
) -> None:
    files = [str(data_dir / "Heartbleed_11.csv.gz")]
    first = load_files(es, files, index_name, replicate=3, replicate_step=timedelta(days=1))
    again = load_files(es, files, index_name, replicate=3, replicate_step=timedelta(days=1))
    plain = load_files(es, files, index_name)

    assert first.loaded == 33
    assert again.already_present == 33
    # Copy 0 is the unshifted row, so a plain load finds every row there.
    assert plain.already_present == 11
    assert count(es, index_name) == 33
    for day in (5, 6, 7):
        window = {"range": {"@timestamp": {"gte": f"2017-07-0{day}T18:12:00Z", "lt": f"2017-07-0{day}T18:33:00Z"}}}
        assert count(es, index_name, window) == 11, day


# --- Rows refused with 429 --------------------------------------------------------------------------


def test_load_resends_rows_rejected_with_429(
    es: Elasticsearch, flow_template: None, index_name: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_bulk = Elasticsearch.bulk
    rejected_ids: list[str] = []

    def bulk_rejecting_first_two(
        self: Elasticsearch, *args: Any, operations: Any, **kwargs: Any
    ) -> ObjectApiResponse[Any]:
        """On the first request, hold back two documents and return 429 for them, as a busy node does.

        The bulk helpers pass ``operations`` as serialized JSON lines, action and source alternating.
        """
        if rejected_ids:
            return real_bulk(self, *args, operations=operations, **kwargs)
        held_back = [json.loads(line)["create"] for line in operations[:4:2]]
        rejected_ids.extend(header["_id"] for header in held_back)
        response = real_bulk(self, *args, operations=operations[4:], **kwargs)
        busy = {"type": "es_rejected_execution_exception", "reason": "simulated full write queue"}
        items = [{"create": {**header, "status": 429, "error": busy}} for header in held_back]
        body = {**response.body, "errors": True, "items": items + response.body["items"]}
        return ObjectApiResponse(body=body, meta=response.meta)

    monkeypatch.setattr(Elasticsearch, "bulk", bulk_rejecting_first_two)
    report = load_files(es, [str(data_dir / "Heartbleed_11.csv.gz")], index_name, batch_size=5, threads=1)

    assert len(rejected_ids) == 2
    assert report.loaded == 11
    assert report.rejected_total == 0
    assert count(es, index_name) == 11
