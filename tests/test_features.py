"""Feature extraction gives the same matrix from pandas frames and from Elasticsearch records; the feature set is deliberate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from convert.featureset import FEATURE_GROUPS, default_features, group_of
from sidecar import schema
from sidecar.errors import SchemaError
from sidecar.features import FeatureExtractor

FEATURES = ("Flow Duration", "Flow Bytes/s", "Flow Packets/s", "Total Fwd Packet")

# Each record exercises one value rule. Expected row values follow, NaN = missing.
RECORDS: list[dict[str, Any]] = [
    {"Flow Duration": 10, "Flow Bytes/s": 1.5, "Flow Packets/s": 2.0, "Total Fwd Packet": 3},
    {"Flow Duration": 10, "Flow Bytes/s": "Infinity", "Flow Packets/s": "-Infinity", "Total Fwd Packet": 3},
    {"Flow Duration": 10, "Flow Bytes/s": math.inf, "Flow Packets/s": -math.inf, "Total Fwd Packet": 3},
    {"Flow Duration": 10, "Flow Bytes/s": "NaN", "Flow Packets/s": math.nan, "Total Fwd Packet": 3},
    {"Flow Duration": 10, "Flow Bytes/s": "", "Flow Packets/s": None, "Total Fwd Packet": 3},
    {"Flow Duration": "27843", "Flow Bytes/s": " 107962.5 ", "Flow Packets/s": "1e3", "Total Fwd Packet": "5"},
    {"Flow Duration": 10, "Flow Bytes/s": "inf", "Flow Packets/s": "nan", "Total Fwd Packet": 3},
]
EXPECTED = np.array(
    [
        [10, 1.5, 2.0, 3],
        [10, np.nan, np.nan, 3],
        [10, np.nan, np.nan, 3],
        [10, np.nan, np.nan, 3],
        [10, np.nan, np.nan, 3],
        [27843, 107962.5, 1000.0, 5],
        [10, np.nan, np.nan, 3],
    ],
    dtype=np.float32,
)


def test_value_rules_records_and_frame_agree() -> None:
    extractor = FeatureExtractor(FEATURES)

    from_records = extractor.from_records(RECORDS)
    from_frame = extractor.from_frame(pd.DataFrame(RECORDS))

    np.testing.assert_array_equal(from_records.matrix, EXPECTED)
    np.testing.assert_array_equal(from_frame.matrix, EXPECTED)
    np.testing.assert_array_equal(from_records.rows, np.arange(len(RECORDS)))
    np.testing.assert_array_equal(from_frame.rows, np.arange(len(RECORDS)))
    assert from_records.matrix.dtype == np.float32
    assert from_frame.matrix.dtype == np.float32


@pytest.mark.parametrize(
    "value",
    ["Infinity", "-Infinity", "inf", "NaN", "", "  ", None, math.inf, -math.inf, math.nan, "null"],
)
def test_each_missing_spelling_gives_nan_both_ways(value: Any) -> None:
    extractor = FeatureExtractor(FEATURES)
    record = {"Flow Duration": 1, "Flow Bytes/s": value, "Flow Packets/s": 2, "Total Fwd Packet": 3}

    via_records = extractor.from_records([record]).matrix
    via_frame = extractor.from_frame(pd.DataFrame([record])).matrix

    assert np.isnan(via_records[0, 1])
    assert np.isnan(via_frame[0, 1])
    np.testing.assert_array_equal(via_records, via_frame)


def test_numeric_frame_with_inf_matches_records() -> None:
    # A float column that pandas reads from CSV contains inf and nan as floats, not strings.
    frame = pd.DataFrame(
        {
            "Flow Duration": [1.0, 2.0],
            "Flow Bytes/s": [np.inf, np.nan],
            "Flow Packets/s": [-np.inf, 4.0],
            "Total Fwd Packet": [1, 2],
        }
    )
    extractor = FeatureExtractor(FEATURES)

    via_frame = extractor.from_frame(frame).matrix
    via_records = extractor.from_records(frame.to_dict("records")).matrix

    np.testing.assert_array_equal(via_frame, via_records)
    assert np.isnan(via_frame[0, 1])
    assert np.isnan(via_frame[0, 2])


def test_csv_strings_match_records(tmp_path) -> None:
    path = tmp_path / "flows.csv"
    path.write_text(
        "Flow Duration,Flow Bytes/s,Flow Packets/s,Total Fwd Packet\n"
        "10,Infinity,NaN,3\n"
        "20,,12.5,4\n",
        encoding="utf-8",
    )
    records = [
        {"Flow Duration": 10, "Flow Bytes/s": "Infinity", "Flow Packets/s": "NaN", "Total Fwd Packet": 3},
        {"Flow Duration": 20, "Flow Bytes/s": "", "Flow Packets/s": 12.5, "Total Fwd Packet": 4},
    ]
    extractor = FeatureExtractor(FEATURES)

    np.testing.assert_array_equal(extractor.from_frame(pd.read_csv(path)).matrix, extractor.from_records(records).matrix)


def test_float32_overflow_becomes_nan_both_ways() -> None:
    record = {"Flow Duration": 1e300, "Flow Bytes/s": 1.0, "Flow Packets/s": 2.0, "Total Fwd Packet": 3}
    extractor = FeatureExtractor(FEATURES)
    via_records = extractor.from_records([record]).matrix
    via_frame = extractor.from_frame(pd.DataFrame([record])).matrix
    assert np.isnan(via_records[0, 0])
    np.testing.assert_array_equal(via_records, via_frame)


def test_garbage_value_marks_same_row_unusable() -> None:
    records = [
        {"Flow Duration": 1, "Flow Bytes/s": 1.0, "Flow Packets/s": 2.0, "Total Fwd Packet": 3},
        {"Flow Duration": 1, "Flow Bytes/s": "fast", "Flow Packets/s": 2.0, "Total Fwd Packet": 3},
        {"Flow Duration": 2, "Flow Bytes/s": 1.0, "Flow Packets/s": 2.0, "Total Fwd Packet": 4},
    ]
    extractor = FeatureExtractor(FEATURES)

    via_records = extractor.from_records(records)
    via_frame = extractor.from_frame(pd.DataFrame(records))

    np.testing.assert_array_equal(via_records.rows, [0, 2])
    np.testing.assert_array_equal(via_frame.rows, [0, 2])
    np.testing.assert_array_equal(via_records.matrix, via_frame.matrix)
    assert [u.row for u in via_records.unusable] == [1]
    assert [u.row for u in via_frame.unusable] == [1]
    assert "'fast' is not a number" in via_records.unusable[0].reason
    assert "'fast' is not a number" in via_frame.unusable[0].reason


# TODO: from_records' fast path (np.fromiter) turns a JSON true into 1.0 while from_frame rejects it.
def test_boolean_is_one_or_zero_both_ways() -> None:
    records = [
        {"Flow Duration": True, "Flow Bytes/s": 1.0, "Flow Packets/s": 2.0, "Total Fwd Packet": 3},
        {"Flow Duration": False, "Flow Bytes/s": 1.0, "Flow Packets/s": 2.0, "Total Fwd Packet": 3},
    ]
    extractor = FeatureExtractor(FEATURES)
    via_records = extractor.from_records(records)
    via_frame = extractor.from_frame(pd.DataFrame(records, dtype=object))
    mixed = extractor.from_records([records[0], {**records[1], "Flow Bytes/s": "x"}])
    assert via_records.matrix[:, 0].tolist() == [1.0, 0.0]
    assert via_frame.matrix[:, 0].tolist() == [1.0, 0.0]
    assert mixed.matrix[:, 0].tolist() == [1.0]


def test_mostly_missing_row_is_unusable_both_ways() -> None:
    records = [
        {"Flow Duration": 1, "Flow Bytes/s": 1.0, "Flow Packets/s": 2.0, "Total Fwd Packet": 3},
        {"Flow Duration": 1, "Flow Bytes/s": None, "Flow Packets/s": "", "Total Fwd Packet": "NaN"},
    ]
    extractor = FeatureExtractor(FEATURES)
    via_records = extractor.from_records(records)
    via_frame = extractor.from_frame(pd.DataFrame(records))
    np.testing.assert_array_equal(via_records.rows, [0])
    np.testing.assert_array_equal(via_frame.rows, [0])
    assert via_records.reasons() == via_frame.reasons()
    assert "too many missing features" in via_records.reasons()


def test_alias_names_in_records_and_frame() -> None:
    records = [{"flow_duration": 7, "Flow Byts/s": "Infinity", " Flow Packets/s": 2, "Tot Fwd Pkts": "4"}]
    extractor = FeatureExtractor(FEATURES)
    via_records = extractor.from_records(records).matrix
    via_frame = extractor.from_frame(pd.DataFrame(records)).matrix
    np.testing.assert_array_equal(via_records, via_frame)
    np.testing.assert_array_equal(via_records, np.array([[7, np.nan, 2, 4]], dtype=np.float32))


def test_missing_key_in_record_is_nan() -> None:
    records = [
        {"Flow Duration": 1, "Flow Bytes/s": 1.0, "Flow Packets/s": 2.0, "Total Fwd Packet": 3},
        {"Flow Duration": 1, "Flow Packets/s": 2.0, "Total Fwd Packet": 3},
    ]
    matrix = FeatureExtractor(FEATURES).from_records(records).matrix
    assert np.isnan(matrix[1, 1])
    assert matrix[1, 0] == 1


def test_extractor_rejects_non_canonical_feature() -> None:
    with pytest.raises(SchemaError, match="not canonical CICFlowMeter-4 names"):
        FeatureExtractor(["Flow Duration", "Tot Fwd Pkts"])


# --- the default model's feature set -------------------------------------------


def test_feature_groups_cover_each_contract_field_once() -> None:
    listed = [name for group in FEATURE_GROUPS for name in group.fields]
    assert sorted(listed) == sorted(schema.CONTRACT_NUMERIC_FIELDS)
    assert len(listed) == len(set(listed))


def test_default_features_are_contract_fields() -> None:
    features = default_features()
    assert set(features) <= set(schema.CONTRACT_NUMERIC_FIELDS)
    assert len(features) == len(set(features))
    for name in features:
        assert schema.canonical_name(name) == name


def test_default_features_leave_out_identifiers_and_fingerprints() -> None:
    features = set(default_features())
    assert not features & schema.IDENTIFIER_FIELDS
    for name in ("Src Port", "Dst Port", "Fwd Init Win Bytes", "Bwd Init Win Bytes", "Fwd Seg Size Min",
                 "Fwd Header Length", "Bwd Header Length", "Idle Max", "Subflow Fwd Packets"):
        assert name not in features, name


def test_every_group_states_a_reason() -> None:
    for group in FEATURE_GROUPS:
        assert len(group.reason) > 40, group.name
    assert group_of("Dst Port") is not None
    assert group_of("Dst Port").used is False
    assert group_of("Label") is None
