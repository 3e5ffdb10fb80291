"""Export an XGBoost model to ONNX, check parity on real flows, and swap the file in atomically.

Steps (``eta1 convert``, wrapped by ``make convert``):

1. Load the XGBoost model (JSON or UBJSON) with its feature list and class
   labels, from ``<name>.meta.json`` or from the command line. A feature
   count that differs from the model's ``num_feature`` is rejected.
2. Convert with onnxmltools. The classifier's outputs are ``label`` and
   ``probabilities``, both plain tensors (onnxmltools emits no ZipMap for XGBoost).
3. Check parity before anything is written. The sample is real flows from the
   training data, plus copies of them with values blanked to NaN. On every row
   the class probabilities of XGBoost and onnxruntime must differ by at most
   ``--tolerance``, and the arg-max class must be the same. Otherwise
   ParityError shows the worst row.
4. Store the feature list, classes, source model's SHA-256 and library
   versions in ``metadata_props``.
5. Write to a temporary file in the target directory, load it back with
   ``sidecar.model.load_model``, keep the current file as ``<name>.onnx.prev``,
   then ``os.replace`` the new file into place. A daemon reading the path gets
   either the old or the new file, never a partial one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxmltools
import onnxruntime as ort
import pandas as pd
import xgboost as xgb
from onnxmltools.convert.common.data_types import FloatTensorType

from convert import dataset, xgbmodel
from convert.xgbmodel import XGBModel
from sidecar import model as serving
from sidecar.errors import ModelError, ParityError, SidecarError
from sidecar.features import FeatureExtractor

logger = logging.getLogger(__name__)

DEFAULT_MODEL = dataset.REPO_ROOT / "models" / "eta1.json"
DEFAULT_ONNX = dataset.REPO_ROOT / "models" / "eta1.onnx"
DEFAULT_OPSET = 15  # highest default-domain opset onnxmltools 1.16 converts to
# TreeEnsembleClassifier exists in ai.onnx.ml opsets 1 to 4; opset 5 replaced it
# with TreeEnsemble, which onnxmltools 1.16 does not emit.
DEFAULT_ML_OPSET = 3
DEFAULT_TOLERANCE = 1e-5
DEFAULT_PARITY_ROWS = 2000
INPUT_NAME = "input"
PARITY_SEED = 20170703


@dataclass(frozen=True)
class ParityReport:
    """Outcome of comparing XGBoost and onnxruntime on the same rows."""

    rows: int
    rows_with_nan: int
    max_abs_diff: float
    worst_row: int


@dataclass(frozen=True)
class ExportResult:
    """The written ONNX file and the parity check it passed."""

    path: Path
    previous: Path | None  # where the replaced file was kept, if there was one
    sha256: str
    size: int
    parity: ParityReport


def parse_names(value: str) -> list[str]:
    """Parse --features/--classes: a JSON list file, a file with one name per line, or a comma-separated list."""
    path = Path(value)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            names = json.loads(text)
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise ModelError("expected a JSON list of strings", path=str(path))
            return names
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [name.strip() for name in value.split(",") if name.strip()]


def to_onnx(source: XGBModel, opset: int = DEFAULT_OPSET, ml_opset: int = DEFAULT_ML_OPSET) -> onnx.ModelProto:
    """Convert the booster to an ONNX model with probabilities as a plain (n, n_classes) float tensor."""
    # onnxmltools maps splits to input columns by XGBoost's default names f0, f1, ...
    booster = source.booster.copy()
    booster.feature_names = None
    try:
        converted = onnxmltools.convert_xgboost(
            booster,
            name="eta1",
            initial_types=[(INPUT_NAME, FloatTensorType([None, len(source.features)]))],
            target_opset=opset,
        )
    except (RuntimeError, ValueError, KeyError) as error:
        raise ModelError(f"onnxmltools could not convert the model: {error}", path=str(source.path)) from error

    for entry in converted.opset_import:
        if entry.domain == "ai.onnx.ml":
            entry.version = ml_opset
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ModelError(
            f"the converted model is invalid at opset {opset} / ai.onnx.ml {ml_opset}: {first_line}; "
            f"try the defaults --opset {DEFAULT_OPSET} --ml-opset {DEFAULT_ML_OPSET}",
            path=str(source.path),
        ) from error

    outputs = [output.name for output in converted.graph.output]
    if serving.PROBABILITIES_OUTPUT not in outputs:
        raise ModelError(
            f"the converted model has outputs {outputs}, not '{serving.PROBABILITIES_OUTPUT}'", path=str(source.path)
        )
    return converted


def add_metadata(onnx_model: onnx.ModelProto, source: XGBModel, opset: int, ml_opset: int) -> None:
    """Store the feature list, classes, source hash and library versions in metadata_props."""
    entries = {
        serving.FEATURES_KEY: json.dumps(list(source.features)),
        serving.CLASSES_KEY: json.dumps(list(source.classes)),
        "source_model": source.path.name,
        "source_sha256": source.sha256,
        "xgboost_version": xgb.__version__,
        "onnxmltools_version": onnxmltools.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "opset": str(opset),
        "ml_opset": str(ml_opset),
    }
    onnx.helper.set_model_props(onnx_model, entries)


def parity_sample(data_dir: Path, features: Sequence[str], rows: int, seed: int = PARITY_SEED) -> tuple[np.ndarray, int]:
    """Return (matrix, number of NaN rows): random real flows, plus a NaN-blanked copy of a quarter of them.

    The copies have about a fifth of their values set to NaN, and one row is
    all NaN, so the check covers XGBoost's and ONNX's handling of missing values.
    """
    extractor = FeatureExtractor(features)
    parts = []
    for path in dataset.data_files(data_dir):
        frame = pd.read_csv(path, low_memory=False)
        parts.append(extractor.from_frame(frame).matrix)
    flows = np.concatenate(parts)
    rng = np.random.default_rng(seed)
    chosen = flows[rng.choice(len(flows), size=min(rows, len(flows)), replace=False)]

    blanked = chosen[: max(1, len(chosen) // 4)].copy()
    blanked[rng.random(blanked.shape) < 0.2] = np.nan
    blanked[0, :] = np.nan
    return np.concatenate([chosen, blanked]).astype(np.float32), len(blanked)


def xgboost_probabilities(source: XGBModel, matrix: np.ndarray) -> np.ndarray:
    names = list(source.features) if source.booster.feature_names is not None else None
    dmatrix = xgb.DMatrix(matrix, feature_names=names, missing=np.nan)
    probabilities = source.booster.predict(dmatrix)
    if probabilities.ndim == 1:  # binary:logistic returns P(class 1)
        probabilities = np.column_stack([1.0 - probabilities, probabilities])
    return probabilities.astype(np.float32)


def check_parity(
    source: XGBModel, onnx_bytes: bytes, matrix: np.ndarray, nan_rows: int, tolerance: float = DEFAULT_TOLERANCE
) -> ParityReport:
    """Compare XGBoost and onnxruntime probabilities row by row; raise ParityError on any difference."""
    expected = xgboost_probabilities(source, matrix)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (actual,) = session.run([serving.PROBABILITIES_OUTPUT], {INPUT_NAME: matrix})
    if actual.shape != expected.shape:
        raise ParityError(f"onnxruntime returned shape {actual.shape}, XGBoost {expected.shape}")

    differences = np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max(axis=1)
    class_differs = actual.argmax(axis=1) != expected.argmax(axis=1)
    worst = int(np.argmax(differences))
    max_abs_diff = float(differences[worst])
    if max_abs_diff > tolerance or class_differs.any():
        row = int(np.flatnonzero(class_differs)[0]) if class_differs.any() else worst
        raise ParityError(
            f"ONNX export does not match XGBoost: max |difference| {max_abs_diff:.3g} (tolerance {tolerance:g}), "
            f"{int(class_differs.sum())} of {len(matrix)} rows with another predicted class. "
            f"Worst row: {row} of the parity sample; XGBoost {_vector(expected[row])}, "
            f"onnxruntime {_vector(actual[row])}, features {_vector(matrix[row])}. "
            "Nothing was written. Try other --opset/--ml-opset values, or report it with the model file."
        )
    return ParityReport(len(matrix), nan_rows, max_abs_diff, worst)


def _vector(values: np.ndarray) -> str:
    return np.array2string(values, precision=8, suppress_small=False, max_line_width=10_000)


def write_atomically(content: bytes, target: Path) -> Path | None:
    """Write content to target via a temporary file and os.replace; keep the old file as <target>.prev.

    The old file is hard-linked (or copied) to ``.prev`` before the swap, so
    the target path exists at every moment. The new file is loaded with
    sidecar.model.load_model before it replaces the old one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates mode 0600; give the new file the old file's mode, or 0644.
        os.chmod(temporary, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        serving.load_model(temporary)  # the file on disk loads and carries valid metadata

        previous = None
        if target.exists():
            previous = target.with_name(target.name + ".prev")
            _keep_previous(target, previous)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)
    return previous


def _keep_previous(target: Path, previous: Path) -> None:
    staging = previous.with_name(f".{previous.name}.tmp")
    staging.unlink(missing_ok=True)
    try:
        os.link(target, staging)
    except OSError:
        staging.write_bytes(target.read_bytes())
    os.replace(staging, previous)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        logger.debug("fsync of directory %s not supported", directory)
    finally:
        os.close(descriptor)


def export(
    model_path: Path,
    out: Path,
    *,
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    data_dir: Path | None = None,
    parity_rows: int = DEFAULT_PARITY_ROWS,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
    ml_opset: int = DEFAULT_ML_OPSET,
) -> ExportResult:
    """Convert, check parity, then write; nothing is written unless every check passes."""
    source = xgbmodel.load_model(model_path, features, classes)
    FeatureExtractor(source.features)  # rejects names that are not canonical CICFlowMeter-4 fields

    onnx_model = to_onnx(source, opset, ml_opset)
    add_metadata(onnx_model, source, opset, ml_opset)
    content = onnx_model.SerializeToString()

    matrix, nan_rows = parity_sample(data_dir or dataset.resolve_data_dir(None), source.features, parity_rows)
    parity = check_parity(source, content, matrix, nan_rows, tolerance)
    logger.info("parity: %s rows (%s with NaN), max |difference| %.3g", parity.rows, parity.rows_with_nan, parity.max_abs_diff)

    previous = write_atomically(content, out)
    return ExportResult(out, previous, xgbmodel.file_sha256(out), out.stat().st_size, parity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eta1 convert",
        description="Convert an XGBoost model to ONNX for the ETA1 daemon. Parity with XGBoost is checked "
        "on real flows before anything is written; the previous ONNX file is kept as <out>.prev.",
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="XGBoost model, JSON (.json) or UBJSON (.ubj) (default: %(default)s)",
    )

    parser.add_argument(
        "--features",
        help="the model's feature names in training order: a comma-separated list, a JSON list file, or a "
        "file with one name per line (default: read from <model>.meta.json)",
    )
    parser.add_argument(
        "--classes",
        help="class labels in the model's class-index order, same formats as --features "
        "(default: read from <model>.meta.json)",
    )

    parser.add_argument("--out", default=str(DEFAULT_ONNX), help="ONNX file to write (default: %(default)s)")
    parser.add_argument(
        "--data",
        help=f"directory of flow CSVs for the parity check (default: ${dataset.DATA_DIR_ENV}, else "
        f"{dataset.DEFAULT_DATA_DIR} relative to the repository root)",
    )
    parser.add_argument(
        "--parity-rows",
        type=int,
        default=DEFAULT_PARITY_ROWS,
        help="real flows sampled for the parity check; a quarter more rows with NaN holes are added (default: %(default)s)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest allowed absolute difference of any class probability (default: %(default)s)",
    )

    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="default-domain ONNX opset (default: %(default)s)")
    parser.add_argument(
        "--ml-opset",
        type=int,
        default=DEFAULT_ML_OPSET,
        help="ai.onnx.ml opset of the TreeEnsembleClassifier node, 1 to 4 (default: %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        features = parse_names(args.features) if args.features else None
        classes = parse_names(args.classes) if args.classes else None
        result = export(
            Path(args.model),
            Path(args.out),
            features=features,
            classes=classes,
            data_dir=dataset.resolve_data_dir(args.data),
            parity_rows=args.parity_rows,
            tolerance=args.tolerance,
            opset=args.opset,
            ml_opset=args.ml_opset,
        )
    except SidecarError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    previous_note = f"; previous file kept as {result.previous}" if result.previous else ""
    print(
        f"wrote {result.path} ({result.size} bytes, sha256 {result.sha256[:12]}){previous_note}\n"
        f"parity: {result.parity.rows} rows ({result.parity.rows_with_nan} with NaN), "
        f"max |difference| {result.parity.max_abs_diff:.3g}, same class in every row"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
