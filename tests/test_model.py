"""sidecar.model.load_model: the shipped model, and each kind of bad file with a message naming file and fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from convert import export
from sidecar.errors import ModelError
from sidecar.model import load_model
from sidecar.rules import load_rules
from tests.helpers_model import SHIPPED_ONNX, SHIPPED_RULES, real_flows, small_model


@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small model converted to ONNX with metadata, not yet written anywhere."""
    directory = tmp_path_factory.mktemp("model")
    source = small_model(directory)
    converted = export.to_onnx(source)
    export.add_metadata(converted, source, export.DEFAULT_OPSET, export.DEFAULT_ML_OPSET)
    return converted.SerializeToString()


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def with_metadata(content: bytes, **changes: str | None) -> bytes:
    """Return a copy of an ONNX model with metadata entries replaced (value) or removed (None)."""
    model = onnx.load_from_string(content)
    props = {prop.key: prop.value for prop in model.metadata_props}
    for key, value in changes.items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    onnx.helper.set_model_props(model, props)
    return model.SerializeToString()


def stored_features(content: bytes) -> list[str]:
    props = {prop.key: prop.value for prop in onnx.load_from_string(content).metadata_props}
    return json.loads(props["features"])


def test_load_valid_model(tmp_path, onnx_bytes) -> None:
    path = write(tmp_path / "m.onnx", onnx_bytes)
    model = load_model(path)
    _, _, features, classes = real_flows(1)
    assert model.features == features
    assert model.classes == classes
    assert model.sha256 == hashlib.sha256(onnx_bytes).hexdigest()
    assert model.path == path
    assert json.loads(model.metadata["features"]) == list(features)
    assert "source_sha256" in model.metadata


def test_predict_proba_shape_and_sums(tmp_path, onnx_bytes) -> None:
    model = load_model(write(tmp_path / "m.onnx", onnx_bytes))
    matrix, _, _, _ = real_flows(5)
    probabilities = model.predict_proba(matrix)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(matrix), len(model.classes))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_predict_proba_nan_rows(tmp_path, onnx_bytes) -> None:
    model = load_model(write(tmp_path / "m.onnx", onnx_bytes))
    matrix = np.full((3, len(model.features)), np.nan, dtype=np.float32)
    matrix[1, :5] = 1.0
    probabilities = model.predict_proba(matrix)
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_predict_proba_accepts_float64_and_empty(tmp_path, onnx_bytes) -> None:
    model = load_model(write(tmp_path / "m.onnx", onnx_bytes))
    matrix, _, _, _ = real_flows(1)
    np.testing.assert_array_equal(model.predict_proba(matrix.astype(np.float64)), model.predict_proba(matrix))
    empty = model.predict_proba(np.empty((0, len(model.features)), dtype=np.float32))
    assert empty.shape == (0, len(model.classes))


def test_predict_proba_wrong_width(tmp_path, onnx_bytes) -> None:
    model = load_model(write(tmp_path / "m.onnx", onnx_bytes))
    width = len(model.features)
    with pytest.raises(ModelError, match=rf"m\.onnx: feature matrix has shape \(2, 3\), expected \(n, {width}\)"):
        model.predict_proba(np.zeros((2, 3), dtype=np.float32))


def test_intra_op_threads_option(tmp_path, onnx_bytes) -> None:
    path = write(tmp_path / "m.onnx", onnx_bytes)
    matrix, _, _, _ = real_flows(2)
    single = load_model(path, intra_op_threads=1).predict_proba(matrix)
    automatic = load_model(path).predict_proba(matrix)
    np.testing.assert_array_equal(single, automatic)
    with pytest.raises(ValueError, match="intra_op_threads"):
        load_model(path, intra_op_threads=-1)


# --- bad files -------------------------------------------------------------------


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ModelError, match=r"absent\.onnx: ONNX model file not found; create it with `eta1 convert`"):
        load_model(tmp_path / "absent.onnx")


def test_empty_file(tmp_path) -> None:
    with pytest.raises(ModelError, match=r"empty\.onnx: the ONNX model file is empty"):
        load_model(write(tmp_path / "empty.onnx", b""))


def test_truncated_file(tmp_path, onnx_bytes) -> None:
    path = write(tmp_path / "cut.onnx", onnx_bytes[: len(onnx_bytes) // 2])
    with pytest.raises(ModelError, match=r"cut\.onnx: not a loadable ONNX model \(truncated, or another file format\).*re-create it"):
        load_model(path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"learner": {"gradient_booster": {}}}', id="xgboost-json"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + bytes(range(256)), id="png"),
        pytest.param(b"Flow ID,Src IP\n1,2\n", id="csv"),
    ],
)
def test_foreign_file(tmp_path, content: bytes) -> None:
    with pytest.raises(ModelError, match=r"foreign\.onnx: not a loadable ONNX model"):
        load_model(write(tmp_path / "foreign.onnx", content))


@pytest.mark.parametrize("key", ["features", "classes"])
def test_missing_metadata(tmp_path, onnx_bytes, key: str) -> None:
    path = write(tmp_path / "bare.onnx", with_metadata(onnx_bytes, **{key: None}))
    with pytest.raises(ModelError, match=rf"bare\.onnx: the ONNX model has no '{key}' metadata.*eta1 convert"):
        load_model(path)


def test_no_metadata_at_all(tmp_path, onnx_bytes) -> None:
    model = onnx.load_from_string(onnx_bytes)
    del model.metadata_props[:]
    path = write(tmp_path / "bare.onnx", model.SerializeToString())
    with pytest.raises(ModelError, match=r"bare\.onnx: the ONNX model has no 'features' metadata"):
        load_model(path)


def test_metadata_not_json_list(tmp_path, onnx_bytes) -> None:
    path = write(tmp_path / "odd.onnx", with_metadata(onnx_bytes, classes='"BENIGN"'))
    with pytest.raises(ModelError, match=r"odd\.onnx: metadata 'classes' must be a JSON list of non-empty strings"):
        load_model(path)


def test_non_canonical_feature_names(tmp_path, onnx_bytes) -> None:
    features = stored_features(onnx_bytes)
    features[1] = "Tot Fwd Pkts"
    path = write(tmp_path / "alias.onnx", with_metadata(onnx_bytes, features=json.dumps(features)))
    with pytest.raises(ModelError, match=r"alias\.onnx: metadata 'features' has names that are not canonical.*'Tot Fwd Pkts'"):
        load_model(path)


def test_feature_count_differs_from_input(tmp_path, onnx_bytes) -> None:
    features = stored_features(onnx_bytes)
    path = write(tmp_path / "short.onnx", with_metadata(onnx_bytes, features=json.dumps(features[:-1])))
    expected = rf"short\.onnx: the model's input takes {len(features)} features but its metadata lists {len(features) - 1}"
    with pytest.raises(ModelError, match=expected):
        load_model(path)


def test_class_count_differs_from_output(tmp_path, onnx_bytes) -> None:
    path = write(tmp_path / "few.onnx", with_metadata(onnx_bytes, classes=json.dumps(["BENIGN", "DoS"])))
    with pytest.raises(ModelError, match=r"few\.onnx: the model returns 9 probabilities per row but its metadata lists 2 classes"):
        load_model(path)


# --- the shipped model -----------------------------------------------------------


def test_shipped_model_loads_and_fits_rules() -> None:
    if not SHIPPED_ONNX.is_file():
        pytest.skip("no shipped ONNX model; run `eta1 convert`")
    model = load_model(SHIPPED_ONNX)
    load_rules(SHIPPED_RULES).check_classes(model.classes)
    assert model.sha256 == hashlib.sha256(SHIPPED_ONNX.read_bytes()).hexdigest()
    matrix, y, features, classes = real_flows(20)
    assert model.features == features
    assert model.classes == classes
    predicted = model.predict_proba(matrix).argmax(axis=1)
    assert (predicted == y).mean() > 0.9
