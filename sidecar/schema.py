"""Flow schema: the canonical column names and the names other exporters use for them.

Canonical names are CICFlowMeter-4's, as flow documents in Elasticsearch carry
them (spaces and capitals included). Three other naming schemes map onto them:

* the original CIC-IDS2017 CSVs ("MachineLearningCVE"), whose names often start
  with a space (`` Total Fwd Packets``, ``Init_Win_bytes_forward``);
* CSE-CIC-IDS2018's short names (``Tot Fwd Pkts``, ``TotLen Fwd Pkts``);
* the snake_case names of the Python ``cicflowmeter`` package (``tot_fwd_pkts``).

Names are matched after trimming whitespace and folding case, so
``FWD Init Win Bytes`` and `` Flow Duration`` resolve too.

Value policy, shared by training and serving: every feature becomes a float.
Numbers, numeric strings and booleans (as 1 and 0) are taken as they are. ``null``, a missing key, an
empty string, ``NaN`` and ``±Infinity`` (as numbers or strings) become NaN,
which XGBoost and its ONNX export treat as a missing value. Anything else
(a word, an object, a list) makes the flow unusable; see
``sidecar.features``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sidecar.errors import SchemaError

# Identifier and metadata columns: never model features.
SRC_IP = "Src IP"
DST_IP = "Dst IP"
SRC_PORT = "Src Port"
DST_PORT = "Dst Port"
PROTOCOL = "Protocol"
TIMESTAMP = "Timestamp"
FLOW_ID = "Flow ID"
LABEL = "Label"

# canonical name -> other names for it (CIC-IDS2017, CSE-CIC-IDS2018, cicflowmeter).
_ALIASES: dict[str, tuple[str, ...]] = {
    SRC_IP: ("Source IP", "src_ip"),
    DST_IP: ("Destination IP", "dst_ip"),
    SRC_PORT: ("Source Port", "src_port"),
    DST_PORT: ("Destination Port", "dst_port"),
    PROTOCOL: ("protocol",),
    TIMESTAMP: ("timestamp",),
    FLOW_ID: ("flow_id",),
    LABEL: ("label",),
    "Flow Duration": ("flow_duration",),
    "Total Fwd Packet": ("Total Fwd Packets", "Tot Fwd Pkts", "tot_fwd_pkts"),
    "Total Bwd packets": ("Total Backward Packets", "Tot Bwd Pkts", "tot_bwd_pkts"),
    "Total Length of Fwd Packet": ("Total Length of Fwd Packets", "TotLen Fwd Pkts", "totlen_fwd_pkts"),
    "Total Length of Bwd Packet": ("Total Length of Bwd Packets", "TotLen Bwd Pkts", "totlen_bwd_pkts"),
    "Fwd Packet Length Max": ("Fwd Pkt Len Max", "fwd_pkt_len_max"),
    "Fwd Packet Length Min": ("Fwd Pkt Len Min", "fwd_pkt_len_min"),
    "Fwd Packet Length Mean": ("Fwd Pkt Len Mean", "fwd_pkt_len_mean"),
    "Fwd Packet Length Std": ("Fwd Pkt Len Std", "fwd_pkt_len_std"),
    "Bwd Packet Length Max": ("Bwd Pkt Len Max", "bwd_pkt_len_max"),
    "Bwd Packet Length Min": ("Bwd Pkt Len Min", "bwd_pkt_len_min"),
    "Bwd Packet Length Mean": ("Bwd Pkt Len Mean", "bwd_pkt_len_mean"),
    "Bwd Packet Length Std": ("Bwd Pkt Len Std", "bwd_pkt_len_std"),
    "Flow Bytes/s": ("Flow Byts/s", "flow_byts_s"),
    "Flow Packets/s": ("Flow Pkts/s", "flow_pkts_s"),
    "Flow IAT Mean": ("flow_iat_mean",),
    "Flow IAT Std": ("flow_iat_std",),
    "Flow IAT Max": ("flow_iat_max",),
    "Flow IAT Min": ("flow_iat_min",),
    "Fwd IAT Total": ("Fwd IAT Tot", "fwd_iat_tot"),
    "Fwd IAT Mean": ("fwd_iat_mean",),
    "Fwd IAT Std": ("fwd_iat_std",),
    "Fwd IAT Max": ("fwd_iat_max",),
    "Fwd IAT Min": ("fwd_iat_min",),
    "Bwd IAT Total": ("Bwd IAT Tot", "bwd_iat_tot"),
    "Bwd IAT Mean": ("bwd_iat_mean",),
    "Bwd IAT Std": ("bwd_iat_std",),
    "Bwd IAT Max": ("bwd_iat_max",),
    "Bwd IAT Min": ("bwd_iat_min",),
    "Fwd PSH Flags": ("fwd_psh_flags",),
    "Bwd PSH Flags": ("bwd_psh_flags",),
    "Fwd URG Flags": ("fwd_urg_flags",),
    "Bwd URG Flags": ("bwd_urg_flags",),
    "Fwd Header Length": ("Fwd Header Len", "fwd_header_len"),
    "Bwd Header Length": ("Bwd Header Len", "bwd_header_len"),
    "Fwd Packets/s": ("Fwd Pkts/s", "fwd_pkts_s"),
    "Bwd Packets/s": ("Bwd Pkts/s", "bwd_pkts_s"),
    "Packet Length Min": ("Min Packet Length", "Pkt Len Min", "pkt_len_min"),
    "Packet Length Max": ("Max Packet Length", "Pkt Len Max", "pkt_len_max"),
    "Packet Length Mean": ("Pkt Len Mean", "pkt_len_mean"),
    "Packet Length Std": ("Pkt Len Std", "pkt_len_std"),
    "Packet Length Variance": ("Pkt Len Var", "pkt_len_var"),
    "FIN Flag Count": ("FIN Flag Cnt", "fin_flag_cnt"),
    "SYN Flag Count": ("SYN Flag Cnt", "syn_flag_cnt"),
    "RST Flag Count": ("RST Flag Cnt", "rst_flag_cnt"),
    "PSH Flag Count": ("PSH Flag Cnt", "psh_flag_cnt"),
    "ACK Flag Count": ("ACK Flag Cnt", "ack_flag_cnt"),
    "URG Flag Count": ("URG Flag Cnt", "urg_flag_cnt"),
    "CWR Flag Count": ("CWE Flag Count", "CWE Flag Cnt", "cwe_flag_count"),
    "ECE Flag Count": ("ECE Flag Cnt", "ece_flag_cnt"),
    "Down/Up Ratio": ("down_up_ratio",),
    "Average Packet Size": ("Pkt Size Avg", "pkt_size_avg"),
    "Fwd Segment Size Avg": ("Avg Fwd Segment Size", "Fwd Seg Size Avg", "fwd_seg_size_avg"),
    "Bwd Segment Size Avg": ("Avg Bwd Segment Size", "Bwd Seg Size Avg", "bwd_seg_size_avg"),
    "Fwd Bytes/Bulk Avg": ("Fwd Avg Bytes/Bulk", "Fwd Byts/b Avg", "fwd_byts_b_avg"),
    "Fwd Packet/Bulk Avg": ("Fwd Avg Packets/Bulk", "Fwd Pkts/b Avg", "fwd_pkts_b_avg"),
    "Fwd Bulk Rate Avg": ("Fwd Avg Bulk Rate", "Fwd Blk Rate Avg", "fwd_blk_rate_avg"),
    "Bwd Bytes/Bulk Avg": ("Bwd Avg Bytes/Bulk", "Bwd Byts/b Avg", "bwd_byts_b_avg"),
    "Bwd Packet/Bulk Avg": ("Bwd Avg Packets/Bulk", "Bwd Pkts/b Avg", "bwd_pkts_b_avg"),
    "Bwd Bulk Rate Avg": ("Bwd Avg Bulk Rate", "Bwd Blk Rate Avg", "bwd_blk_rate_avg"),
    "Subflow Fwd Packets": ("Subflow Fwd Pkts", "subflow_fwd_pkts"),
    "Subflow Fwd Bytes": ("Subflow Fwd Byts", "subflow_fwd_byts"),
    "Subflow Bwd Packets": ("Subflow Bwd Pkts", "subflow_bwd_pkts"),
    "Subflow Bwd Bytes": ("Subflow Bwd Byts", "subflow_bwd_byts"),
    "Fwd Init Win Bytes": ("Init_Win_bytes_forward", "Init Fwd Win Byts", "init_fwd_win_byts"),
    "Bwd Init Win Bytes": ("Init_Win_bytes_backward", "Init Bwd Win Byts", "init_bwd_win_byts"),
    "Fwd Act Data Pkts": ("act_data_pkt_fwd", "fwd_act_data_pkts"),
    "Fwd Seg Size Min": ("min_seg_size_forward", "fwd_seg_size_min"),
    "Active Mean": ("active_mean",),
    "Active Std": ("active_std",),
    "Active Max": ("active_max",),
    "Active Min": ("active_min",),
    "Idle Mean": ("idle_mean",),
    "Idle Std": ("idle_std",),
    "Idle Max": ("idle_max",),
    "Idle Min": ("idle_min",),
}

# Numeric flow fields that production flow documents carry (the compatibility
# contract's input document). Only these may be model features; the rest of
# _ALIASES (RST, CWR/ECE, Bwd PSH/URG and bulk fields) exists in some exports
# but not in the indices ETA1 reads.
CONTRACT_NUMERIC_FIELDS: tuple[str, ...] = (
    SRC_PORT, DST_PORT, PROTOCOL,
    "Flow Duration", "Total Fwd Packet", "Total Bwd packets",
    "Total Length of Fwd Packet", "Total Length of Bwd Packet",
    "Fwd Packet Length Max", "Fwd Packet Length Min", "Fwd Packet Length Mean", "Fwd Packet Length Std",
    "Bwd Packet Length Max", "Bwd Packet Length Min", "Bwd Packet Length Mean", "Bwd Packet Length Std",
    "Flow Bytes/s", "Flow Packets/s",
    "Flow IAT Mean", "Flow IAT Std", "Flow IAT Max", "Flow IAT Min",
    "Fwd IAT Total", "Fwd IAT Mean", "Fwd IAT Std", "Fwd IAT Max", "Fwd IAT Min",
    "Bwd IAT Total", "Bwd IAT Mean", "Bwd IAT Std", "Bwd IAT Max", "Bwd IAT Min",
    "Fwd PSH Flags", "Fwd URG Flags", "Fwd Header Length", "Bwd Header Length",
    "Fwd Packets/s", "Bwd Packets/s",
    "Packet Length Min", "Packet Length Max", "Packet Length Mean", "Packet Length Std",
    "Packet Length Variance",
    "FIN Flag Count", "SYN Flag Count", "PSH Flag Count", "ACK Flag Count", "URG Flag Count",
    "Down/Up Ratio", "Average Packet Size", "Fwd Segment Size Avg", "Bwd Segment Size Avg",
    "Subflow Fwd Packets", "Subflow Fwd Bytes", "Subflow Bwd Packets", "Subflow Bwd Bytes",
    "Fwd Init Win Bytes", "Bwd Init Win Bytes", "Fwd Act Data Pkts", "Fwd Seg Size Min",
    "Active Mean", "Active Std", "Active Max", "Active Min",
    "Idle Mean", "Idle Std", "Idle Max", "Idle Min",
)

# Fields the alert document copies from the flow.
ALERT_SOURCE_FIELDS: tuple[str, ...] = (SRC_IP, DST_IP, SRC_PORT, DST_PORT, PROTOCOL)

# Fields that identify the testbed (hosts, session, time) rather than the
# behaviour; they are never model features.
IDENTIFIER_FIELDS: frozenset[str] = frozenset({SRC_IP, DST_IP, SRC_PORT, TIMESTAMP, FLOW_ID, LABEL})

CANONICAL_FIELDS: tuple[str, ...] = tuple(_ALIASES)


def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()


_LOOKUP: dict[str, str] = {}
for _canonical, _others in _ALIASES.items():
    for _name in (_canonical, *_others):
        _LOOKUP[_fold(_name)] = _canonical


def canonical_name(name: str) -> str | None:
    """Return the canonical name for a column name, or None for an unknown column."""
    return _LOOKUP.get(_fold(name))


def accepted_names(canonical: str) -> tuple[str, ...]:
    """Return every column name accepted for a canonical field, canonical first."""
    return (canonical, *_ALIASES.get(canonical, ()))


@dataclass(frozen=True)
class ColumnMap:
    """Mapping from each wanted canonical field to the input column that provides it."""

    source_for: Mapping[str, str]  # canonical name -> column name in the input

    def rename(self) -> dict[str, str]:
        """Return the input-name -> canonical-name mapping (for pandas ``rename``)."""
        return {source: canonical for canonical, source in self.source_for.items()}


def map_columns(columns: Iterable[str], wanted: Iterable[str], *, where: str = "input") -> ColumnMap:
    """Map input column names onto the wanted canonical fields.

    Unknown columns are ignored. A wanted field that no column provides raises
    SchemaError naming the field and every name accepted for it. When two input
    columns map to the same field, the one spelled exactly as the canonical name
    wins, so a pandas-deduplicated ``Fwd Header Length.1`` is never chosen.
    """
    wanted = list(wanted)
    found: dict[str, str] = {}
    for column in columns:
        canonical = canonical_name(column)
        if canonical is None:
            continue
        if canonical not in found or column == canonical:
            found[canonical] = column

    missing = [name for name in wanted if name not in found]
    if missing:
        details = "; ".join(
            f"{name!r} (accepted names: {', '.join(repr(n) for n in accepted_names(name))})"
            for name in missing
        )
        raise SchemaError(
            f"{where} lacks {len(missing)} model feature column(s): {details}. "
            "Add the columns to the flow export, or train a model without them."
        )
    return ColumnMap({name: found[name] for name in wanted})
