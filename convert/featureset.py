"""The default model's feature list, and the reason each contract field is in or out.

Candidates are the numeric fields that production flow documents carry
(``schema.CONTRACT_NUMERIC_FIELDS``). Every candidate sits in exactly one
group below, and the group records whether the default model uses it and why.
The model card prints this table, so the reasons live in one place.

The leading concern is generalisation. In the training data (CIC-IDS2017)
every DoS, DDoS, Patator, web and port-scan flow goes from one host
(172.16.0.1) to one web server (192.168.10.50). Fields that fingerprint those
two hosts, or the lab's port plan, would score well here and fail on a network
the model never saw. Groups left out for that reason were chosen with the
leave-scenario-out evaluation (``convert.grouped``), whose variant table the
model card prints.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sidecar import schema


@dataclass(frozen=True)
class FeatureGroup:
    """Contract fields that share one reason to be used or left out."""

    name: str
    fields: tuple[str, ...]
    used: bool
    reason: str


FEATURE_GROUPS: tuple[FeatureGroup, ...] = (
    FeatureGroup(
        "Volume and size",
        (
            "Flow Duration", "Total Fwd Packet", "Total Bwd packets",
            "Fwd Packet Length Max", "Fwd Packet Length Min", "Fwd Packet Length Mean", "Fwd Packet Length Std",
            "Bwd Packet Length Max", "Bwd Packet Length Min", "Bwd Packet Length Mean", "Bwd Packet Length Std",
            "Packet Length Min", "Packet Length Max", "Packet Length Mean", "Packet Length Std",
            "Packet Length Variance", "Average Packet Size", "Fwd Segment Size Avg", "Bwd Segment Size Avg",
            "Down/Up Ratio", "Fwd Act Data Pkts",
        ),
        True,
        "How many packets each side sends and in what packet sizes: the core of flooding, "
        "brute-force and scanning behaviour, and independent of the hosts involved.",
    ),
    FeatureGroup(
        "Byte totals",
        ("Total Length of Fwd Packet", "Total Length of Bwd Packet"),
        False,
        "Total payload bytes per direction. In the lab they are the exact size of one tool's "
        "requests and of the one victim web server's reply page (11,595 bytes for both Hulk and "
        "the DDoS), which another network's servers will not share. Each total equals the packet "
        "count times the mean packet length, both still features, so leaving the totals out does "
        "not hide that value: it takes away the single split that matches it exactly, which a "
        "depth-2 tree can only approximate from the two fields. Left out after the leave-scenario-out "
        "evaluation (variant table in the model card).",
    ),
    FeatureGroup(
        "Rates",
        ("Flow Bytes/s", "Flow Packets/s", "Fwd Packets/s", "Bwd Packets/s"),
        True,
        "Floods and slow-rate DoS differ from normal traffic mainly in rate. "
        "Live CICFlowMeter output can put Infinity or NaN here, and the feature "
        "extractor turns those into missing values, which the trees handle.",
    ),
    FeatureGroup(
        "Inter-arrival times",
        (
            "Flow IAT Mean", "Flow IAT Std", "Flow IAT Max",
            "Fwd IAT Total", "Fwd IAT Mean", "Fwd IAT Std", "Fwd IAT Max",
        ),
        True,
        "Timing separates slow-rate DoS (Slowloris, Slowhttptest) and tool-driven "
        "login attempts from people. Round-trip times of the lab network shift these "
        "values somewhat on other networks.",
    ),
    FeatureGroup(
        "Inter-arrival minimums",
        ("Flow IAT Min", "Fwd IAT Min"),
        False,
        "The shortest gap between two packets of a flow is set by the round-trip time and "
        "the hosts' network stacks, a property of the lab's links rather than of the "
        "behaviour. Left out after the leave-scenario-out evaluation (variant table in the "
        "model card).",
    ),
    FeatureGroup(
        "Backward inter-arrival times",
        ("Bwd IAT Total", "Bwd IAT Mean", "Bwd IAT Std", "Bwd IAT Max", "Bwd IAT Min"),
        False,
        "Gaps between the responder's packets: for every lab DoS, brute-force and web attack "
        "this is the timing of one victim server (192.168.10.50), so they describe that server "
        "more than the attack. The sender's timing stays in. Left out after the "
        "leave-scenario-out evaluation (variant table in the model card).",
    ),
    FeatureGroup(
        "TCP flag counts",
        (
            "Fwd PSH Flags", "Fwd URG Flags", "FIN Flag Count", "SYN Flag Count",
            "PSH Flag Count", "ACK Flag Count", "URG Flag Count",
        ),
        True,
        "Connection shape: half-open scans, resets and keep-alive floods show in "
        "the flags regardless of the operating system.",
    ),
    FeatureGroup(
        "Transport protocol",
        (schema.PROTOCOL,),
        True,
        "TCP versus UDP is a property of the behaviour, not of a particular host.",
    ),
    FeatureGroup(
        "Active periods",
        ("Active Mean", "Active Std", "Active Max", "Active Min"),
        True,
        "Bursts of activity inside a flow, in microseconds. They depend on "
        "CICFlowMeter's activity timeout (5 s by default), so a sensor with "
        "another setting shifts them.",
    ),
    FeatureGroup(
        "Idle periods",
        ("Idle Mean", "Idle Std", "Idle Max", "Idle Min"),
        False,
        "Production flow documents sometimes carry an absolute epoch in microseconds "
        "here (about 1.6e15, a CICFlowMeter bug), a value no training row has. Leaving "
        "the group out made no measurable difference on validation and removes that risk.",
    ),
    FeatureGroup(
        "Destination port",
        (schema.DST_PORT,),
        False,
        "Every lab attack of one kind used one port (21, 22, 80, 444, 8080), so the "
        "port would stand in for the label. Left out, so that the same attack on "
        "another port, or benign traffic on port 80, is judged by its behaviour.",
    ),
    FeatureGroup(
        "Source port",
        (schema.SRC_PORT,),
        False,
        "An ephemeral port chosen by the client's operating system: it identifies "
        "the session, not the behaviour.",
    ),
    FeatureGroup(
        "Operating-system fingerprint",
        ("Fwd Init Win Bytes", "Bwd Init Win Bytes", "Fwd Seg Size Min", "Fwd Header Length", "Bwd Header Length"),
        False,
        "Initial TCP windows and header sizes (TCP options) are set by the "
        "operating systems at both ends. In the lab they single out the attacking "
        "host and the victim server, which lowered the false-alert count in "
        "validation but would not carry over to other hosts. Header lengths are "
        "also negative in a few rows because of a CICFlowMeter bug on long flows.",
    ),
    FeatureGroup(
        "Subflow counters",
        ("Subflow Fwd Packets", "Subflow Fwd Bytes", "Subflow Bwd Packets", "Subflow Bwd Bytes"),
        False,
        "Their meaning differs between CICFlowMeter versions. In the training data "
        "'Subflow Fwd Packets' is only ever 0 or 1 and 'Subflow Bwd Packets' is always 0, "
        "yet 'Subflow Fwd Packets' alone would tell the two port-scan sources apart.",
    ),
)


def default_features() -> tuple[str, ...]:
    """Return the default model's features, in contract order."""
    used = {name for group in FEATURE_GROUPS if group.used for name in group.fields}
    return tuple(name for name in schema.CONTRACT_NUMERIC_FIELDS if name in used)


def group_of(feature: str) -> FeatureGroup | None:
    """Return the group a contract field belongs to, or None for a field outside the contract."""
    for group in FEATURE_GROUPS:
        if feature in group.fields:
            return group
    return None


def features_with(groups: Iterable[str]) -> tuple[str, ...]:
    """Return the default features plus the fields of the named left-out groups, in contract order.

    Raises ValueError for a name that is not a group.
    """
    names = set(groups)
    unknown = names - {group.name for group in FEATURE_GROUPS}
    if unknown:
        raise ValueError(f"unknown feature group(s) {sorted(unknown)}. Use names from FEATURE_GROUPS")
    used = {name for group in FEATURE_GROUPS if group.used or group.name in names for name in group.fields}
    return tuple(name for name in schema.CONTRACT_NUMERIC_FIELDS if name in used)
