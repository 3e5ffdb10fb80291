"""convert.export: parity on real flows (NaN included), metadata, atomic swap, and rejected user models."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxmltools
import onnxruntime as ort
import pytest
import xgboost as xgb

from convert import export, train, xgbmodel
from sidecar.errors import ModelError, ParityError
from sidecar.model import load_model
from tests.helpers_model import (
    SHIPPED_XGB,
    data_dir,
    real_flows,
    small_model,
    train_small_booster,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> xgbmodel.XGBModel:
    return small_model(tmp_path_factory.mktemp("source"))


def metadata_of(path: Path) -> dict[str, str]:
    return {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}


def test_export_parity_on_real_flows(tmp_path, source) -> None:
    out = tmp_path / "eta1.onnx"

    result = export.export(source.path, out, data_dir=data_dir(), parity_rows=400)

    assert result.parity.rows == 500
    assert result.parity.rows_with_nan == 100
    assert result.parity.max_abs_diff <= 1e-5
    assert result.previous is None
    assert result.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert result.size == out.stat().st_size


def test_export_metadata_props(tmp_path, source) -> None:
    out = tmp_path / "eta1.onnx"
    export.export(source.path, out, data_dir=data_dir(), parity_rows=50)

    props = metadata_of(out)

    assert json.loads(props["features"]) == list(source.features)
    assert json.loads(props["classes"]) == list(source.classes)
    assert props["source_sha256"] == hashlib.sha256(source.path.read_bytes()).hexdigest()
    assert props["xgboost_version"] == xgb.__version__
    assert props["onnxmltools_version"] == onnxmltools.__version__
    assert props["onnx_version"] == onnx.__version__
    assert props["onnxruntime_version"] == ort.__version__
    assert props["ml_opset"] == str(export.DEFAULT_ML_OPSET)


def test_onnx_outputs_plain_probability_tensor(tmp_path, source) -> None:
    converted = export.to_onnx(source)
    outputs = [output.name for output in converted.graph.output]
    assert "probabilities" in outputs
    assert not any(node.op_type == "ZipMap" for node in converted.graph.node)


def test_parity_holds_on_nan_rows(source) -> None:
    matrix, _, _, _ = real_flows(10)
    rng = np.random.default_rng(3)
    holes = matrix.copy()
    holes[rng.random(holes.shape) < 0.5] = np.nan
    all_missing = np.full((2, matrix.shape[1]), np.nan, dtype=np.float32)
    one_present = all_missing.copy()
    one_present[:, 1] = [0.0, 1e8]  # only Flow Duration known
    rows = np.concatenate([holes, all_missing, one_present]).astype(np.float32)

    content = export.to_onnx(source).SerializeToString()
    report = export.check_parity(source, content, rows, nan_rows=len(rows))

    assert report.max_abs_diff <= 1e-5
    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    (actual,) = session.run(["probabilities"], {"input": rows})
    expected = export.xgboost_probabilities(source, rows)
    np.testing.assert_array_equal(actual.argmax(axis=1), expected.argmax(axis=1))


def test_parity_failure_shows_worst_row(tmp_path, source) -> None:
    matrix, y, features, classes = real_flows(20, seed=11)
    other = train_small_booster(matrix, (y + 1) % len(classes), len(classes), features, rounds=5)
    other_model = xgbmodel.save_model(other, tmp_path / "other.json", features, classes)
    content = export.to_onnx(other_model).SerializeToString()
    rows = real_flows(5)[0]

    with pytest.raises(ParityError, match=r"does not match XGBoost: max \|difference\| .*Worst row: \d+ of the parity sample; XGBoost \[.*\], onnxruntime \[.*\]"):
        export.check_parity(source, content, rows, nan_rows=0)


def test_parity_failure_writes_nothing(tmp_path, source, monkeypatch) -> None:
    out = tmp_path / "eta1.onnx"
    export.export(source.path, out, data_dir=data_dir(), parity_rows=50)
    before = out.read_bytes()

    def shifted(model, matrix):
        probabilities = xgbmodel_probabilities(model, matrix)
        probabilities[:, 0] += 1e-3
        return probabilities

    xgbmodel_probabilities = export.xgboost_probabilities
    monkeypatch.setattr(export, "xgboost_probabilities", shifted)
    with pytest.raises(ParityError):
        export.export(source.path, out, data_dir=data_dir(), parity_rows=50)

    assert out.read_bytes() == before
    assert not (tmp_path / "eta1.onnx.prev").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eta1.onnx"]


def test_atomic_swap_keeps_previous(tmp_path, source) -> None:
    out = tmp_path / "eta1.onnx"
    export.export(source.path, out, data_dir=data_dir(), parity_rows=50)
    first = out.read_bytes()

    matrix, y, features, classes = real_flows(30, seed=5)
    second_model = xgbmodel.save_model(
        train_small_booster(matrix, y, len(classes), features, rounds=8), tmp_path / "second.json", features, classes
    )
    result = export.export(second_model.path, out, data_dir=data_dir(), parity_rows=50)

    assert result.previous == tmp_path / "eta1.onnx.prev"
    assert (tmp_path / "eta1.onnx.prev").read_bytes() == first
    assert out.read_bytes() != first
    assert metadata_of(out)["source_sha256"] == second_model.sha256
    assert load_model(out).sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_write_atomically_never_removes_target(tmp_path, onnx_model_bytes) -> None:
    target = tmp_path / "eta1.onnx"
    target.write_bytes(onnx_model_bytes)
    inode_before = target.stat().st_ino

    export.write_atomically(onnx_model_bytes, target)

    assert target.exists()
    assert target.stat().st_ino != inode_before  # replaced by rename, not rewritten in place
    assert (tmp_path / "eta1.onnx.prev").stat().st_ino == inode_before


@pytest.fixture
def onnx_model_bytes(source) -> bytes:
    converted = export.to_onnx(source)
    export.add_metadata(converted, source, export.DEFAULT_OPSET, export.DEFAULT_ML_OPSET)
    return converted.SerializeToString()


def test_write_atomically_rejects_unloadable_file(tmp_path) -> None:
    target = tmp_path / "eta1.onnx"
    target.write_bytes(b"old")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        export.write_atomically(b"not onnx", target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eta1.onnx"]


@pytest.mark.parametrize("ml_opset", [1, 4])
def test_ml_opset_is_configurable(tmp_path, source, ml_opset: int) -> None:
    out = tmp_path / "eta1.onnx"
    result = export.export(source.path, out, data_dir=data_dir(), parity_rows=50, ml_opset=ml_opset)
    versions = {entry.domain: entry.version for entry in onnx.load(str(out)).opset_import}
    assert versions["ai.onnx.ml"] == ml_opset
    assert result.parity.max_abs_diff <= 1e-5


def test_unsupported_ml_opset_rejected(source) -> None:
    with pytest.raises(ModelError, match=r"invalid at opset 15 / ai\.onnx\.ml 5.*try the defaults"):
        export.to_onnx(source, ml_opset=5)


# --- user models -----------------------------------------------------------------


def user_booster(n_features: int, n_classes: int = 3) -> xgb.Booster:
    rng = np.random.default_rng(0)
    matrix = rng.random((60, n_features)).astype(np.float32)
    labels = rng.integers(0, n_classes, size=60)
    return train_small_booster(matrix, labels, n_classes, None, rounds=3)


def test_wrong_feature_count_rejected(tmp_path) -> None:
    path = tmp_path / "user.json"
    user_booster(4).save_model(str(path))
    features = ["Flow Duration", "Flow Bytes/s", "Flow Packets/s"]
    with pytest.raises(ModelError, match=r"user\.json: the model has 4 features \(num_feature\) but the feature list names 3"):
        export.export(path, tmp_path / "user.onnx", features=features, classes=["BENIGN", "DoS", "DDoS"])
    assert not (tmp_path / "user.onnx").exists()


def test_wrong_class_count_rejected(tmp_path) -> None:
    path = tmp_path / "user.json"
    user_booster(3).save_model(str(path))
    features = ["Flow Duration", "Flow Bytes/s", "Flow Packets/s"]
    with pytest.raises(ModelError, match=r"the model predicts 3 classes but the class list names 2"):
        export.export(path, tmp_path / "user.onnx", features=features, classes=["BENIGN", "DoS"])


def test_cli_wrong_feature_count_names_both_numbers(tmp_path, capsys) -> None:
    path = tmp_path / "user.ubj"
    user_booster(4).save_model(str(path))
    features_file = tmp_path / "features.json"
    features_file.write_text(json.dumps(["Flow Duration", "Flow Bytes/s"]), encoding="utf-8")

    code = export.main(
        ["--model", str(path), "--features", str(features_file), "--classes", "BENIGN,DoS,DDoS",
         "--out", str(tmp_path / "user.onnx")]
    )

    assert code == 1
    message = capsys.readouterr().err
    assert "has 4 features (num_feature)" in message
    assert "names 2" in message


def test_user_ubj_model_exports(tmp_path) -> None:
    matrix, y, features, classes = real_flows(20)
    path = tmp_path / "user.ubj"
    train_small_booster(matrix, y, len(classes), None, rounds=5).save_model(str(path))
    names_file = tmp_path / "features.txt"
    names_file.write_text("\n".join(features) + "\n", encoding="utf-8")

    code = export.main(
        ["--model", str(path), "--features", str(names_file), "--classes", ",".join(classes),
         "--out", str(tmp_path / "user.onnx"), "--data", str(data_dir()), "--parity-rows", "100"]
    )

    assert code == 0
    model = load_model(tmp_path / "user.onnx")
    assert model.features == features
    assert model.classes == classes


def test_non_canonical_feature_names_rejected(tmp_path) -> None:
    path = tmp_path / "user.json"
    user_booster(3).save_model(str(path))
    with pytest.raises(Exception, match="not canonical CICFlowMeter-4 names"):
        export.export(path, tmp_path / "user.onnx", features=["Flow Duration", "Tot Fwd Pkts", "Flow Bytes/s"],
                      classes=["BENIGN", "DoS", "DDoS"])


def test_missing_meta_file_names_fix(tmp_path) -> None:
    path = tmp_path / "user.json"
    user_booster(3).save_model(str(path))
    with pytest.raises(ModelError, match=r"user\.meta\.json is missing; pass --features and --classes"):
        export.export(path, tmp_path / "user.onnx")


def test_pickle_or_garbage_model_rejected(tmp_path) -> None:
    path = tmp_path / "user.json"
    path.write_bytes(b"\x80\x04\x95garbage")
    with pytest.raises(ModelError, match=r"user\.json: not a readable XGBoost JSON/UBJSON model"):
        export.export(path, tmp_path / "user.onnx", features=["Flow Duration", "Flow Bytes/s"], classes=["A", "B"])


def test_parse_names_formats(tmp_path) -> None:
    as_json = tmp_path / "f.json"
    as_json.write_text('["Flow Duration", "Flow Bytes/s"]', encoding="utf-8")
    as_lines = tmp_path / "f.txt"
    as_lines.write_text("Flow Duration\nFlow Bytes/s\n\n", encoding="utf-8")
    expected = ["Flow Duration", "Flow Bytes/s"]
    assert export.parse_names(str(as_json)) == expected
    assert export.parse_names(str(as_lines)) == expected
    assert export.parse_names("Flow Duration, Flow Bytes/s") == expected


# --- the shipped model and the training entry point ----------------------------------


def test_shipped_model_parity(tmp_path) -> None:
    if not SHIPPED_XGB.is_file():
        pytest.skip("no shipped XGBoost model; run `eta1 train`")
    result = export.export(SHIPPED_XGB, tmp_path / "eta1.onnx", data_dir=data_dir(), parity_rows=500)
    assert result.parity.max_abs_diff <= 1e-5
    assert result.parity.rows_with_nan == 125


def test_train_then_export_end_to_end(tmp_path) -> None:
    out = tmp_path / "models" / "eta1.json"
    code = train.main(
        ["--out", str(out), "--data", str(data_dir()), "--grid", "quick", "--max-rows-per-label", "25",
         "--max-rounds", "15", "--folds", "2", "--seed", "5"]
    )
    assert code == 0
    meta = json.loads((out.parent / "eta1.meta.json").read_text(encoding="utf-8"))
    assert meta["model_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert meta["classes"][0] == "BENIGN"
    card = (out.parent / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "benign flows raised an alert" in card
    assert (out.parent / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")

    onnx_path = tmp_path / "models" / "eta1.onnx"
    assert export.main(["--model", str(out), "--out", str(onnx_path), "--data", str(data_dir()), "--parity-rows", "200"]) == 0
    assert load_model(onnx_path).classes == tuple(meta["classes"])


def test_train_is_reproducible(tmp_path) -> None:
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run / "eta1.json"
        assert train.main(
            ["--out", str(out), "--data", str(data_dir()), "--grid", "quick", "--max-rows-per-label", "20",
             "--max-rounds", "10", "--folds", "2"]
        ) == 0
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert os.path.exists(tmp_path / "a" / "MODEL_CARD.md")
