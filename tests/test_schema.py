"""Column names of every supported naming scheme map to the canonical CICFlowMeter-4 names; labels map to classes."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest

from convert import dataset
from convert.dataset import AttemptedPolicy, DatasetError, LabelMapper
from convert.featureset import default_features
from sidecar import schema
from sidecar.errors import SchemaError
from tests.helpers_model import data_dir

# (name as another exporter writes it, canonical name)
CIC_IDS2017_ORIGINAL = [
    (" Destination Port", "Dst Port"),
    (" Flow Duration", "Flow Duration"),
    (" Total Fwd Packets", "Total Fwd Packet"),
    (" Total Backward Packets", "Total Bwd packets"),
    ("Total Length of Fwd Packets", "Total Length of Fwd Packet"),
    (" Total Length of Bwd Packets", "Total Length of Bwd Packet"),
    ("Flow Bytes/s", "Flow Bytes/s"),
    (" Flow Packets/s", "Flow Packets/s"),
    (" Min Packet Length", "Packet Length Min"),
    (" Max Packet Length", "Packet Length Max"),
    (" Avg Fwd Segment Size", "Fwd Segment Size Avg"),
    (" CWE Flag Count", "CWR Flag Count"),
    ("Init_Win_bytes_forward", "Fwd Init Win Bytes"),
    (" Init_Win_bytes_backward", "Bwd Init Win Bytes"),
    (" act_data_pkt_fwd", "Fwd Act Data Pkts"),
    (" min_seg_size_forward", "Fwd Seg Size Min"),
    ("Fwd Avg Bytes/Bulk", "Fwd Bytes/Bulk Avg"),
    (" Source IP", "Src IP"),
    (" Label", "Label"),
]
CSE_CIC_IDS2018 = [
    ("Dst Port", "Dst Port"),
    ("Tot Fwd Pkts", "Total Fwd Packet"),
    ("Tot Bwd Pkts", "Total Bwd packets"),
    ("TotLen Fwd Pkts", "Total Length of Fwd Packet"),
    ("Fwd Pkt Len Max", "Fwd Packet Length Max"),
    ("Flow Byts/s", "Flow Bytes/s"),
    ("Flow Pkts/s", "Flow Packets/s"),
    ("Fwd IAT Tot", "Fwd IAT Total"),
    ("Fwd Header Len", "Fwd Header Length"),
    ("Pkt Len Var", "Packet Length Variance"),
    ("Pkt Size Avg", "Average Packet Size"),
    ("Init Fwd Win Byts", "Fwd Init Win Bytes"),
    ("Subflow Fwd Pkts", "Subflow Fwd Packets"),
]
CICFLOWMETER_SNAKE = [
    ("src_ip", "Src IP"),
    ("dst_port", "Dst Port"),
    ("flow_duration", "Flow Duration"),
    ("tot_fwd_pkts", "Total Fwd Packet"),
    ("totlen_bwd_pkts", "Total Length of Bwd Packet"),
    ("flow_byts_s", "Flow Bytes/s"),
    ("fwd_iat_tot", "Fwd IAT Total"),
    ("init_fwd_win_byts", "Fwd Init Win Bytes"),
    ("fwd_seg_size_min", "Fwd Seg Size Min"),
    ("idle_max", "Idle Max"),
]
IMPROVED_DATASET = [
    ("FWD Init Win Bytes", "Fwd Init Win Bytes"),
    ("Total Bwd packets", "Total Bwd packets"),
    ("Total Length of Fwd Packet", "Total Length of Fwd Packet"),
    ("Fwd Segment Size Avg", "Fwd Segment Size Avg"),
    ("Fwd Bytes/Bulk Avg", "Fwd Bytes/Bulk Avg"),
]


@pytest.mark.parametrize(
    ("name", "canonical"), CIC_IDS2017_ORIGINAL + CSE_CIC_IDS2018 + CICFLOWMETER_SNAKE + IMPROVED_DATASET
)
def test_canonical_name_each_scheme(name: str, canonical: str) -> None:
    assert schema.canonical_name(name) == canonical


def test_canonical_names_map_to_themselves() -> None:
    for name in schema.CANONICAL_FIELDS:
        assert schema.canonical_name(name) == name


def test_unknown_column_is_none() -> None:
    assert schema.canonical_name("Flow Colour") is None
    assert schema.canonical_name("id") is None


def test_map_columns_prefers_exact_canonical_spelling() -> None:
    # pandas renames the original CSVs' second "Fwd Header Length" to "Fwd Header Length.1";
    # both fold to the same field only when spelled alike, and the exact spelling must win.
    columns = [" Fwd Header Length", "Fwd Header Length", "Flow Duration"]
    column_map = schema.map_columns(columns, ["Fwd Header Length", "Flow Duration"])
    assert column_map.source_for["Fwd Header Length"] == "Fwd Header Length"
    assert column_map.rename() == {"Fwd Header Length": "Fwd Header Length", "Flow Duration": "Flow Duration"}


def test_map_columns_missing_field_lists_accepted_names() -> None:
    with pytest.raises(SchemaError, match=r"'Flow Bytes/s' \(accepted names: 'Flow Bytes/s', 'Flow Byts/s', 'flow_byts_s'\)"):
        schema.map_columns(["Flow Duration"], ["Flow Duration", "Flow Bytes/s"])


def test_training_csv_header_provides_every_default_feature() -> None:
    path = next(iter(sorted(data_dir().glob("*.csv.gz"))))
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split(",")
    column_map = schema.map_columns(header, default_features(), where=path.name)
    assert set(column_map.source_for) == set(default_features())
    assert column_map.source_for["Total Bwd packets"] == "Total Bwd packets"


# Header of the original CIC-IDS2017 "TrafficLabelling" CSVs: leading spaces, and
# " Fwd Header Length" twice.
ORIGINAL_HEADER = (  # noqa: SIM905 (one string keeps the header's exact spacing readable)
    "Flow ID, Source IP, Source Port, Destination IP, Destination Port, Protocol, Timestamp, Flow Duration,"
    " Total Fwd Packets, Total Backward Packets,Total Length of Fwd Packets, Total Length of Bwd Packets,"
    " Fwd Packet Length Max, Fwd Packet Length Min, Fwd Packet Length Mean, Fwd Packet Length Std,"
    "Bwd Packet Length Max, Bwd Packet Length Min, Bwd Packet Length Mean, Bwd Packet Length Std,"
    "Flow Bytes/s, Flow Packets/s, Flow IAT Mean, Flow IAT Std, Flow IAT Max, Flow IAT Min,"
    "Fwd IAT Total, Fwd IAT Mean, Fwd IAT Std, Fwd IAT Max, Fwd IAT Min,"
    "Bwd IAT Total, Bwd IAT Mean, Bwd IAT Std, Bwd IAT Max, Bwd IAT Min,"
    "Fwd PSH Flags, Bwd PSH Flags, Fwd URG Flags, Bwd URG Flags, Fwd Header Length, Bwd Header Length,"
    "Fwd Packets/s, Bwd Packets/s, Min Packet Length, Max Packet Length, Packet Length Mean,"
    " Packet Length Std, Packet Length Variance,FIN Flag Count, SYN Flag Count, RST Flag Count,"
    " PSH Flag Count, ACK Flag Count, URG Flag Count, CWE Flag Count, ECE Flag Count, Down/Up Ratio,"
    " Average Packet Size, Avg Fwd Segment Size, Avg Bwd Segment Size, Fwd Header Length,"
    "Fwd Avg Bytes/Bulk, Fwd Avg Packets/Bulk, Fwd Avg Bulk Rate, Bwd Avg Bytes/Bulk,"
    " Bwd Avg Packets/Bulk,Bwd Avg Bulk Rate,Subflow Fwd Packets, Subflow Fwd Bytes,"
    " Subflow Bwd Packets, Subflow Bwd Bytes,Init_Win_bytes_forward, Init_Win_bytes_backward,"
    " act_data_pkt_fwd, min_seg_size_forward,Active Mean, Active Std, Active Max, Active Min,"
    "Idle Mean, Idle Std, Idle Max, Idle Min, Label"
).split(",")


def test_original_cicids2017_header_maps_every_contract_field() -> None:
    column_map = schema.map_columns(ORIGINAL_HEADER, schema.CONTRACT_NUMERIC_FIELDS)
    assert column_map.source_for["Total Fwd Packet"] == " Total Fwd Packets"
    assert column_map.source_for["Fwd Init Win Bytes"] == "Init_Win_bytes_forward"
    assert column_map.source_for["Packet Length Min"] == " Min Packet Length"
    assert column_map.source_for["Src Port"] == " Source Port"


def test_original_header_through_pandas_picks_first_duplicate(tmp_path) -> None:
    path = tmp_path / "original.csv"
    values = [str(i) for i in range(len(ORIGINAL_HEADER))]
    path.write_text(",".join(ORIGINAL_HEADER) + "\n" + ",".join(values) + "\n", encoding="utf-8")
    frame = pd.read_csv(path)
    assert " Fwd Header Length.1" in frame.columns

    column_map = schema.map_columns(frame.columns, ["Fwd Header Length"])

    assert column_map.source_for["Fwd Header Length"] == " Fwd Header Length"


# --- training labels --------------------------------------------------------

LABEL_CASES = [
    ("BENIGN", "BENIGN", "BENIGN"),
    ("Benign", "BENIGN", "BENIGN"),
    ("DoS Hulk", "DoS", "DoS Hulk"),
    ("DoS slowloris", "DoS", "DoS Slowloris"),
    ("Portscan", "PortScan", "Portscan"),
    ("PortScan", "PortScan", "Portscan"),
    ("Infiltration - Portscan", "PortScan", "Infiltration - Portscan"),
    ("Bot", "Botnet", "Botnet"),
    ("Web Attack \u2013 Brute Force", "BruteForce", "Web Attack - Brute Force"),
    ("Web Attack \ufffd Brute Force", "BruteForce", "Web Attack - Brute Force"),
    ("Web Attack \u2013 Sql Injection", "Exploit", "Web Attack - SQL Injection"),
    ("Web Attack - XSS", "XSS", "Web Attack - XSS"),
    ("Heartbleed", "Exploit", "Heartbleed"),
    ("FTP-BruteForce", "BruteForce", "FTP-Patator"),
    ("DoS attacks-Hulk", "DoS", "DoS Hulk"),
    ("DDOS attack-HOIC", "DDoS", "DDoS"),
    ("Infilteration", "Infiltration", "Infiltration"),
]


@pytest.mark.parametrize(("raw", "model_class", "label"), LABEL_CASES)
def test_label_spellings_resolve(raw: str, model_class: str, label: str) -> None:
    assert LabelMapper().resolve(raw) == (model_class, label)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (AttemptedPolicy.BENIGN, ("BENIGN", "DoS Hulk - Attempted")),
        (AttemptedPolicy.DROP, (None, "DoS Hulk - Attempted")),
        (AttemptedPolicy.ATTACK, ("DoS", "DoS Hulk - Attempted")),
    ],
)
def test_attempted_label_policy(policy: AttemptedPolicy, expected: tuple[str | None, str]) -> None:
    assert LabelMapper(attempted=policy).resolve("DoS Hulk - Attempted") == expected


def test_unknown_label_raises() -> None:
    with pytest.raises(DatasetError, match="unknown label 'Teleportation'"):
        LabelMapper().resolve("Teleportation")


def test_unknown_attempted_label_raises() -> None:
    with pytest.raises(DatasetError, match="unknown label 'Teleportation - Attempted'"):
        LabelMapper().resolve("Teleportation - Attempted")


def _write_csv(path, rows: list[dict[str, object]]) -> None:
    columns = list(rows[0])
    lines = [",".join(columns)] + [",".join(str(row[column]) for column in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _flow(label: str, value: float) -> dict[str, object]:
    row: dict[str, object] = {name: value for name in default_features()}
    row["Label"] = label
    return row


def test_load_dataset_applies_attempted_policy(tmp_path) -> None:
    rows = [_flow(name, i) for i, name in enumerate(["BENIGN", "DoS Hulk", "DoS Hulk - Attempted", "Portscan"])]
    rows += [_flow(c.labels[0], 10 + i) for i, c in enumerate(dataset.DEFAULT_CLASSES)]
    _write_csv(tmp_path / "flows.csv", rows)

    as_benign = dataset.load_dataset(tmp_path, default_features(), LabelMapper(attempted=AttemptedPolicy.BENIGN))
    dropped = dataset.load_dataset(tmp_path, default_features(), LabelMapper(attempted=AttemptedPolicy.DROP))

    assert len(as_benign.y) == len(rows)
    assert as_benign.classes[as_benign.y[2]] == "BENIGN"
    assert as_benign.labels[2] == "DoS Hulk - Attempted"
    assert len(dropped.y) == len(rows) - 1
    assert sum(dropped.dropped.values()) == 1


def test_load_dataset_reports_unknown_labels(tmp_path) -> None:
    rows = [_flow(c.labels[0], i) for i, c in enumerate(dataset.DEFAULT_CLASSES)] + [_flow("Teleportation", 99)]
    _write_csv(tmp_path / "flows.csv", rows)
    with pytest.raises(DatasetError, match=r"unknown label\(s\) .*'Teleportation' \(1 rows\).*LABEL_ALIASES"):
        dataset.load_dataset(tmp_path, default_features())


def test_load_dataset_groups_identical_vectors(tmp_path) -> None:
    rows = [_flow(c.labels[0], i) for i, c in enumerate(dataset.DEFAULT_CLASSES)]
    rows.append(_flow("BENIGN", 0))  # same values as the first row
    _write_csv(tmp_path / "flows.csv", rows)
    data = dataset.load_dataset(tmp_path, default_features())
    assert data.groups[0] == data.groups[-1]
    assert len(set(data.groups.tolist())) == len(rows) - 1


def test_missing_data_dir_names_the_fix(tmp_path) -> None:
    with pytest.raises(DatasetError, match=r"not found; pass --data DIR or set ETA1_DATA_DIR"):
        dataset.data_files(tmp_path / "absent")


def test_data_dir_resolution(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(dataset.DATA_DIR_ENV, raising=False)
    assert dataset.resolve_data_dir(None) == dataset.REPO_ROOT / dataset.DEFAULT_DATA_DIR
    monkeypatch.setenv(dataset.DATA_DIR_ENV, str(tmp_path))
    assert dataset.resolve_data_dir(None) == tmp_path
    assert dataset.resolve_data_dir("elsewhere") == dataset.resolve_data_dir("elsewhere")
    assert str(dataset.resolve_data_dir("elsewhere")) == "elsewhere"
