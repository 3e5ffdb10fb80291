"""CSV reading and row -> document conversion of ``eta1 load``, and its command line up to the first connection."""

from __future__ import annotations

import gzip
import math
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sidecar import flow_index, loader, schema
from sidecar.loader import (
    BadRow,
    CsvRow,
    FlowFile,
    LoadError,
    LoadReport,
    RowError,
    RowLayout,
    document_id,
    iter_rows,
    parse_flow_time,
    read_layout,
    row_to_document,
)

UTC = timezone.utc
PLUS8 = timezone(timedelta(hours=8))
TIME_PATH = ("@timestamp",)

# A CICFlowMeter-4 header (the sample's naming) cut down to a few columns of each kind.
CIC4_HEADER = [
    "id", "Flow ID", "Src IP", "Src Port", "Dst IP", "Dst Port", "Protocol", "Timestamp",
    "Flow Duration", "Total Length of Fwd Packet", "Flow Bytes/s", "Flow Packets/s", "FWD Init Win Bytes", "Label",
]
CIC4_ROW = [
    "244353", "172.16.0.1-192.168.10.51-45022-444-6", "172.16.0.1", "45022", "192.168.10.51", "444", "6",
    "2017-07-05 18:12:15.650811", "119302728", "2683.0", "63411.92801559408", "Infinity", "29200", "Heartbleed",
]


def layout_for(header: list[str], time_path: tuple[str, ...] = TIME_PATH) -> RowLayout:
    return RowLayout.from_header(header, time_path)


def convert(cells: list[str], header: list[str] = CIC4_HEADER, **options: object) -> dict:
    options.setdefault("time_path", TIME_PATH)
    options.setdefault("default_tz", UTC)
    return row_to_document(cells, layout_for(header, options["time_path"]), **options)  # type: ignore[arg-type]


def with_cell(name: str, value: str) -> list[str]:
    cells = list(CIC4_ROW)
    cells[CIC4_HEADER.index(name)] = value
    return cells


# --- parse_flow_time -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2017-07-05 18:12:15.650811", datetime(2017, 7, 5, 10, 12, 15, 650811, tzinfo=UTC)),
        ("03/07/2017 08:55:58", datetime(2017, 7, 3, 0, 55, 58, tzinfo=UTC)),
        ("3/7/2017 8:55", datetime(2017, 7, 3, 0, 55, tzinfo=UTC)),
        ("14/02/2018 08:31:01", datetime(2018, 2, 14, 0, 31, 1, tzinfo=UTC)),
        ("2017-07-05T18:12:15.650811+02:00", datetime(2017, 7, 5, 16, 12, 15, 650811, tzinfo=UTC)),
        ("2017-07-05T18:12:15Z", datetime(2017, 7, 5, 18, 12, 15, tzinfo=UTC)),
        ("1499278335", datetime(2017, 7, 5, 18, 12, 15, tzinfo=UTC)),
        ("1499278335.650811", datetime(2017, 7, 5, 18, 12, 15, 650811, tzinfo=UTC)),
        ("1499278335650", datetime(2017, 7, 5, 18, 12, 15, 650000, tzinfo=UTC)),
        ("1499278335650811", datetime(2017, 7, 5, 18, 12, 15, 650811, tzinfo=UTC)),
    ],
)
def test_parse_flow_time_formats(text: str, expected: datetime) -> None:
    # A default zone of +08:00 applies only to stamps without an offset; epoch numbers are UTC.
    assert parse_flow_time(text, PLUS8) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2017-13-45 10:00:00", "32/07/2017 08:55"])
def test_parse_flow_time_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid time"):
        parse_flow_time(text, UTC)


# --- RowLayout -------------------------------------------------------------------


def test_layout_sample_header_types() -> None:
    layout = layout_for(CIC4_HEADER)

    assert dict((key, position) for position, key in layout.ips) == {"Src IP": 2, "Dst IP": 4}
    assert set(layout.long_keys) == {"Src Port", "Dst Port", "Protocol", "Flow Duration", "Fwd Init Win Bytes"}
    assert set(layout.double_keys) == {"Total Length of Fwd Packet", "Flow Bytes/s", "Flow Packets/s"}
    assert [key for _, key in layout.strings] == ["id", "Flow ID", "Timestamp", "Label"]
    assert layout.time_column == 7
    assert layout.ignored == ()


def test_layout_cse_cic_ids2018_names() -> None:
    header = ["Dst Port", "Protocol", "Timestamp", "Flow Duration", "Tot Fwd Pkts", "TotLen Fwd Pkts",
              "Flow Byts/s", "Init Fwd Win Byts", "Label"]
    layout = layout_for(header)

    assert layout.long_keys == ("Dst Port", "Protocol", "Flow Duration", "Total Fwd Packet", "Fwd Init Win Bytes")
    assert layout.double_keys == ("Total Length of Fwd Packet", "Flow Bytes/s")


def test_layout_cic_ids2017_spaces_and_duplicate() -> None:
    # The original MachineLearningCVE/TrafficLabelling CSVs: leading spaces and a repeated column.
    header = ["Flow ID", " Source IP", " Timestamp", " Fwd Header Length", " Fwd Header Length", " Label"]
    layout = layout_for(header)

    assert [key for _, key in layout.ips] == ["Src IP"]
    assert layout.longs == ((3, "Fwd Header Length"),)
    assert len(layout.ignored) == 1
    assert "column 5" in layout.ignored[0]


def test_layout_bom_and_empty_name() -> None:
    layout = layout_for(["\ufeffTimestamp", "Src IP", ""])

    assert layout.time_column == 0
    assert layout.ignored == ("column 3 has no name",)


def test_layout_without_timestamp() -> None:
    with pytest.raises(ValueError, match="no Timestamp column"):
        layout_for(["Src IP", "Dst IP", "Flow Duration"])


def test_layout_column_named_like_time_field() -> None:
    with pytest.raises(ValueError, match="--time-field"):
        layout_for(["Timestamp", "event", "Src IP"], ("event", "ingested"))


# --- row_to_document ---------------------------------------------------------------


def test_row_types_and_values() -> None:
    document = convert(CIC4_ROW)

    assert document["Src IP"] == "172.16.0.1"
    assert document["Src Port"] == 45022
    assert isinstance(document["Src Port"], int)
    assert document["Flow Duration"] == 119302728
    assert document["Total Length of Fwd Packet"] == 2683.0
    assert isinstance(document["Total Length of Fwd Packet"], float)
    assert document["Flow Bytes/s"] == 63411.92801559408
    assert document["id"] == "244353"
    assert document["Label"] == "Heartbleed"
    assert document["Timestamp"] == "2017-07-05 18:12:15.650811"
    assert document["@timestamp"] == "2017-07-05T18:12:15.650811Z"


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "inf", "NaN", "nan", ""])
def test_row_missing_numbers_become_null(value: str) -> None:
    document = convert(with_cell("Flow Bytes/s", value))
    assert document["Flow Bytes/s"] is None

    document = convert(with_cell("Flow Duration", value))
    assert document["Flow Duration"] is None


def test_row_float_text_in_long_field() -> None:
    assert convert(with_cell("Flow Duration", "2683.0"))["Flow Duration"] == 2683
    assert isinstance(convert(with_cell("Flow Duration", "2683.0"))["Flow Duration"], int)
    # A fraction stays in _source; Elasticsearch indexes the long truncated.
    assert convert(with_cell("Flow Duration", "12.5"))["Flow Duration"] == 12.5
    assert convert(with_cell("Flow Duration", "1.5E3"))["Flow Duration"] == 1500


def test_row_exponent_in_double_field() -> None:
    assert convert(with_cell("Flow Bytes/s", "1.596511622913498E15"))["Flow Bytes/s"] == 1.596511622913498e15


def test_row_non_numeric_value() -> None:
    with pytest.raises(RowError, match="'Flow Bytes/s' is 'fast'") as caught:
        convert(with_cell("Flow Bytes/s", "fast"))
    assert caught.value.reason == loader.NON_NUMERIC

    with pytest.raises(RowError, match="'Dst Port'") as caught:
        convert(with_cell("Dst Port", "http"))
    assert caught.value.reason == loader.NON_NUMERIC


def test_row_long_out_of_range() -> None:
    with pytest.raises(RowError, match="64-bit") as caught:
        convert(with_cell("Flow Duration", str(2**63)))
    assert caught.value.reason == loader.OUT_OF_RANGE


def test_row_invalid_ip() -> None:
    with pytest.raises(RowError, match="'Dst IP' is '192.168.10.300'") as caught:
        convert(with_cell("Dst IP", "192.168.10.300"))
    assert caught.value.reason == loader.INVALID_IP


def test_row_ipv6_and_empty_ip() -> None:
    assert convert(with_cell("Src IP", "fe80::1"))["Src IP"] == "fe80::1"
    assert convert(with_cell("Src IP", ""))["Src IP"] is None


def test_row_wrong_column_count() -> None:
    with pytest.raises(RowError, match="13 fields, the header has 14") as caught:
        convert(CIC4_ROW[:-1])
    assert caught.value.reason == loader.WRONG_COLUMN_COUNT


def test_row_invalid_timestamp() -> None:
    with pytest.raises(RowError, match="'not a time'") as caught:
        convert(with_cell("Timestamp", "not a time"))
    assert caught.value.reason == loader.INVALID_TIMESTAMP


def test_row_default_timezone() -> None:
    document = convert(CIC4_ROW, default_tz=PLUS8)

    assert document["@timestamp"] == "2017-07-05T10:12:15.650811Z"
    assert document["Timestamp"] == "2017-07-05 18:12:15.650811"


def test_row_dotted_time_field() -> None:
    document = convert(CIC4_ROW, time_path=("event", "ingested"))

    assert document["event"] == {"ingested": "2017-07-05T18:12:15.650811Z"}
    assert "@timestamp" not in document


def test_row_shift_moves_time_only() -> None:
    document = convert(CIC4_ROW, shift=timedelta(days=7))

    assert document["@timestamp"] == "2017-07-12T18:12:15.650811Z"
    assert document["Timestamp"] == "2017-07-05 18:12:15.650811"


def test_row_unknown_column_kept_as_text() -> None:
    header = [*CIC4_HEADER, "Attempted Category"]
    document = convert([*CIC4_ROW, "-1"], header)

    assert document["Attempted Category"] == "-1"


# --- document_id ---------------------------------------------------------------------


def test_document_id_shape_and_stability() -> None:
    raw = ",".join(CIC4_ROW).encode()
    first = document_id(raw)

    assert first == document_id(raw)
    assert len(first) == 20
    assert set(first) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_document_id_differs_per_row_and_shift() -> None:
    raw = ",".join(CIC4_ROW).encode()
    other = ",".join(with_cell("id", "244354")).encode()
    week = 7 * 86400 * 1_000_000

    assert document_id(raw) != document_id(other)
    assert document_id(raw, 0) == document_id(raw)
    assert document_id(raw, week) != document_id(raw)
    assert document_id(raw, week) != document_id(raw, 2 * week)


# --- Reading files ------------------------------------------------------------------------


def write_csv(path: Path, text: str, *, compress: bool = False) -> Path:
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def read_all(path: Path) -> tuple[list[str], list[CsvRow]]:
    with FlowFile(str(path)) as flow_file:
        rows = iter_rows(flow_file)
        header = next(rows)
        data = list(rows)
    assert header.cells is not None
    return header.cells, data


@pytest.mark.parametrize("compress", [False, True])
def test_iter_rows_lines_and_raw(tmp_path: Path, compress: bool) -> None:
    text = "a,b,Timestamp\r\n1,2,x\r\n\r\n3,\"multi\nline\",y\r\n4,5,z"
    header, rows = read_all(write_csv(tmp_path / "flows.csv", text, compress=compress))

    assert header == ["a", "b", "Timestamp"]
    assert [row.line for row in rows] == [2, 4, 6]
    assert rows[0].raw == b"1,2,x"
    assert rows[1].raw == b'3,"multi\nline",y'
    assert rows[1].cells == ["3", "multi\nline", "y"]
    assert rows[2].raw == b"4,5,z"


def test_iter_rows_same_raw_for_gzip_and_plain(tmp_path: Path) -> None:
    text = ",".join(CIC4_HEADER) + "\n" + ",".join(CIC4_ROW) + "\n"
    _, plain = read_all(write_csv(tmp_path / "flows.csv", text))
    _, packed = read_all(write_csv(tmp_path / "flows.csv.gz", text, compress=True))

    assert [row.raw for row in plain] == [row.raw for row in packed]


def test_iter_rows_invalid_csv_row_then_next(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "flows.csv", "Timestamp,a\n1,2\n3," + "x" * 200_000 + "\n5,6\n")
    _, rows = read_all(path)

    assert [(row.line, row.cells) for row in rows] == [(2, ["1", "2"]), (3, None), (4, ["5", "6"])]
    assert "field larger than field limit" in rows[1].error


def test_iter_rows_windows_1252_bytes(tmp_path: Path) -> None:
    # The original CIC-IDS2017 labels carry a Windows-1252 en dash (byte 0x96).
    path = tmp_path / "flows.csv"
    path.write_bytes(b"Timestamp,Label\n3/7/2017 8:55,Web Attack \x96 Brute Force\n")
    _, rows = read_all(path)

    assert rows[0].cells == ["3/7/2017 8:55", "Web Attack \u2013 Brute Force"]


def test_iter_rows_truncated_gzip(tmp_path: Path) -> None:
    text = ",".join(CIC4_HEADER) + "\n" + (",".join(CIC4_ROW) + "\n") * 2000
    path = tmp_path / "flows.csv.gz"
    path.write_bytes(gzip.compress(text.encode())[:-200])

    with pytest.raises(LoadError, match=r"flows\.csv\.gz: unreadable gzip data after line \d+ .*truncated or corrupt"):
        read_all(path)


def test_flow_file_missing(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"nothere\.csv: file not found; check the path"):
        FlowFile(str(tmp_path / "nothere.csv"))


def test_flow_file_folder(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="is a folder"):
        FlowFile(str(tmp_path))


def test_read_layout_empty_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "empty.csv", "\n\n")
    with pytest.raises(LoadError, match=r"empty\.csv: is empty"):
        read_layout(str(path), TIME_PATH)


def test_read_layout_no_timestamp_names_header_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "flows.csv", "\nSrc IP,Dst IP\n1.2.3.4,5.6.7.8\n")
    with pytest.raises(LoadError, match=r"flows\.csv:2: no Timestamp column"):
        read_layout(str(path), TIME_PATH)


def test_read_layout_not_gzip_after_magic(tmp_path: Path) -> None:
    path = tmp_path / "flows.csv.gz"
    path.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(LoadError, match=r"flows\.csv\.gz: unreadable gzip data at the start"):
        read_layout(str(path), TIME_PATH)


# --- LoadReport ---------------------------------------------------------------------------


def test_report_keeps_first_bad_rows_and_counts_rest() -> None:
    report = LoadReport(index="cic_x", files=1, max_bad_rows=2, loaded=5, seconds=1.0)
    for line in (2, 3, 4):
        report.reject("flows.csv", line, loader.INVALID_IP, f"'Src IP' is 'x{line}'")

    assert report.rejected_total == 3
    assert report.rows == 8
    assert report.bad_rows == [
        BadRow("flows.csv", 2, loader.INVALID_IP, "'Src IP' is 'x2'"),
        BadRow("flows.csv", 3, loader.INVALID_IP, "'Src IP' is 'x3'"),
    ]
    summary = report.summary()
    assert "flows.csv:3: invalid IP address: 'Src IP' is 'x3'" in summary
    assert "... and 1 more" in summary
    assert "invalid IP address: 3" in summary


# --- flow_index ---------------------------------------------------------------------------


def test_template_types() -> None:
    body = flow_index.flow_template(["cic_*"])
    properties = body["template"]["mappings"]["properties"]

    assert properties["Src IP"] == {"type": "ip"}
    assert properties["Dst IP"] == {"type": "ip"}
    assert properties["@timestamp"] == {"type": "date"}
    assert properties["Timestamp"]["type"] == "keyword"
    assert properties["Protocol"] == {"type": "long"}
    assert properties["Flow Duration"] == {"type": "long"}
    assert properties["Flow Bytes/s"] == {"type": "double"}
    assert properties["Idle Mean"] == {"type": "double"}
    assert body["template"]["settings"] == {"number_of_shards": 1, "number_of_replicas": 0}
    assert body["template"]["mappings"]["date_detection"] is False


def test_template_covers_contract_fields() -> None:
    properties = flow_index.flow_template(["cic_*"])["template"]["mappings"]["properties"]

    for name in schema.CONTRACT_NUMERIC_FIELDS:
        assert properties[name]["type"] in ("long", "double"), name


def test_template_dotted_time_field() -> None:
    properties = flow_index.flow_template(["cic_*"], time_field="event.ingested")["template"]["mappings"]["properties"]

    assert properties["event"] == {"properties": {"ingested": {"type": "date"}}}
    assert "@timestamp" not in properties


@pytest.mark.parametrize("time_field", ["Timestamp", "Src IP", "", "event..ingested"])
def test_template_rejects_time_field(time_field: str) -> None:
    with pytest.raises(ValueError, match="invalid time field"):
        flow_index.flow_template(["cic_*"], time_field=time_field)


def test_template_hash_changes_with_body() -> None:
    first = flow_index.flow_template(["cic_*"])["_meta"]["body_sha256"]

    assert flow_index.flow_template(["cic_*"])["_meta"]["body_sha256"] == first
    assert flow_index.flow_template(["flows-*"])["_meta"]["body_sha256"] != first


# --- Command line, up to the first connection ------------------------------------------------------


def test_main_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = loader.main([str(tmp_path / "nothere.csv"), "--index", "cic_x"])

    assert status == 2
    error = capsys.readouterr().err
    assert "nothere.csv: file not found; check the path" in error
    assert len(error.strip().splitlines()) == 1


def test_main_index_outside_pattern(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_csv(tmp_path / "flows.csv", ",".join(CIC4_HEADER) + "\n")
    status = loader.main([str(path), "--index", "flows_x"])

    assert status == 2
    assert "does not match source.index 'cic_*'" in capsys.readouterr().err


def test_main_invalid_timezone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_csv(tmp_path / "flows.csv", ",".join(CIC4_HEADER) + "\n")
    status = loader.main([str(path), "--index", "cic_x", "--timezone", "Asia/Taipei"])

    assert status == 2
    assert "--timezone: invalid timezone 'Asia/Taipei'" in capsys.readouterr().err


def test_main_unreachable_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A loopback port this test bound and released, so nothing listens there.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write_csv(tmp_path / "flows.csv", ",".join(CIC4_HEADER) + "\n")
    status = loader.main([str(path), "--index", "cic_x", "--es-url", f"http://127.0.0.1:{port}"])

    assert status == 2
    assert f"cannot reach Elasticsearch at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_main_help_states_null_policy(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        loader.main(["--help"])

    assert caught.value.code == 0
    assert "written as null" in " ".join(capsys.readouterr().out.split())


def test_nan_never_reaches_json() -> None:
    document = convert(with_cell("Flow Packets/s", "NaN"))
    assert not any(isinstance(value, float) and math.isnan(value) for value in document.values())
