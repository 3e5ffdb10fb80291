"""Serving side of the model: load the ONNX file written by ``convert.export`` and score batches.

The ONNX file carries its own feature list and class labels in
``metadata_props`` (keys ``features`` and ``classes``, each a JSON list), so a
model file is self-describing and the daemon needs no second file. The
classifier's ``probabilities`` output is a plain float tensor of shape
(n, n_classes) (the exporter emits no ZipMap).

Only onnxruntime and numpy are needed here; the ``onnx`` package is a
training-side dependency.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from sidecar import schema
from sidecar.errors import ModelError

logger = logging.getLogger(__name__)

FEATURES_KEY = "features"
CLASSES_KEY = "classes"
PROBABILITIES_OUTPUT = "probabilities"
EXPORT_COMMAND = "eta1 convert"

# onnxruntime's Python exceptions derive from Exception directly; these are the
# ones a bad model file can raise while a session is created or run.
_ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(ort_state, name)
    for name in (
        "Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile",
        "NoModel", "NotImplemented", "RuntimeException", "EPFail",
    )
    if isinstance(getattr(ort_state, name, None), type)
)


@dataclass
class Model:
    """A loaded ONNX classifier with its feature order and class labels."""

    path: Path
    features: tuple[str, ...]
    classes: tuple[str, ...]
    sha256: str  # of the ONNX file's bytes, as loaded
    metadata: dict[str, str]  # every metadata_props entry, as stored
    _session: ort.InferenceSession = field(repr=False)
    _input_name: str = field(repr=False)
    _output_name: str = field(repr=False)

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Return float32 class probabilities, shape (n, n_classes), for a (n, n_features) matrix.

        NaN means "missing" and follows the default branch learned in
        training, as in XGBoost. The whole batch runs in one onnxruntime call.
        """
        if matrix.ndim != 2 or matrix.shape[1] != len(self.features):
            raise ModelError(
                f"feature matrix has shape {matrix.shape}, expected (n, {len(self.features)}); "
                "build it with sidecar.features.FeatureExtractor(model.features)",
                path=str(self.path),
            )
        if matrix.shape[0] == 0:
            return np.empty((0, len(self.classes)), dtype=np.float32)
        batch = np.ascontiguousarray(matrix, dtype=np.float32)
        try:
            (probabilities,) = self._session.run([self._output_name], {self._input_name: batch})
        except _ORT_ERRORS as error:
            raise ModelError(f"onnxruntime failed on a batch of {len(batch)} rows: {error}", path=str(self.path)) from error
        return np.asarray(probabilities, dtype=np.float32)


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    """Build onnxruntime session options: full graph optimisation and the given intra-op thread count.

    0 lets onnxruntime choose (one thread per physical core). With the shipped
    model (237 rounds, 9 classes, depth 8), a batch of 1,000 flows took about
    11.5 ms with 0 or 2 threads and 18.5 ms with 1 thread (onnxruntime 1.32 on
    a busy 2-core machine).
    """
    if intra_op_threads < 0:
        raise ValueError(f"intra_op_threads must be 0 (automatic) or positive, got {intra_op_threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    return options


def load_model(path: str | Path, *, intra_op_threads: int = 0) -> Model:
    """Load an ONNX model written by ``convert.export`` and check it against its metadata.

    Raises ModelError, naming the file and the fix, in these cases: the file
    is missing, empty, truncated or not ONNX. The ``features`` or ``classes``
    metadata is missing or invalid. A feature is not a canonical
    CICFlowMeter-4 name. The graph's input or output size disagrees with the
    metadata.
    """
    model_path = Path(path)
    where = str(model_path)
    try:
        content = model_path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"ONNX model file not found; create it with `{EXPORT_COMMAND}` (make convert)", path=where) from None
    except OSError as error:
        raise ModelError(f"cannot read the ONNX model file: {error.strerror}", path=where) from error
    if not content:
        raise ModelError(f"the ONNX model file is empty; re-create it with `{EXPORT_COMMAND}`", path=where)

    # The session is built from the bytes hashed here, so sha256 names exactly
    # the model in use even if the file is replaced a moment later.
    digest = hashlib.sha256(content).hexdigest()
    try:
        session = ort.InferenceSession(content, sess_options=session_options(intra_op_threads), providers=["CPUExecutionProvider"])
    except _ORT_ERRORS as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"not a loadable ONNX model (truncated, or another file format): {first_line}; "
            f"re-create it with `{EXPORT_COMMAND}`",
            path=where,
        ) from error

    metadata = dict(session.get_modelmeta().custom_metadata_map)
    features = _name_list(metadata, FEATURES_KEY, where)
    classes = _name_list(metadata, CLASSES_KEY, where)
    _check_features(features, where)
    if len(set(classes)) != len(classes):
        raise ModelError(f"metadata 'classes' repeats a name: {classes}; re-export the model", path=where)

    input_name = _input_name(session, len(features), where)
    output_name = _output_name(session, where)
    model = Model(model_path, tuple(features), tuple(classes), digest, metadata, session, input_name, output_name)
    _check_output_width(model, where)
    logger.info(
        "loaded model %s (sha256 %s): %s features, classes %s", where, digest[:12], len(features), list(classes)
    )
    return model


def _name_list(metadata: dict[str, str], key: str, where: str) -> list[str]:
    raw = metadata.get(key)
    if raw is None:
        raise ModelError(
            f"the ONNX model has no '{key}' metadata, so its {key} are unknown; "
            f"export it with `{EXPORT_COMMAND}`, which stores the feature list and class labels",
            path=where,
        )
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise ModelError(
            f"metadata '{key}' must be a JSON list of non-empty strings, got {raw[:80]!r}; "
            f"re-export the model with `{EXPORT_COMMAND}`",
            path=where,
        )
    return value


def _check_features(features: list[str], where: str) -> None:
    unknown = [name for name in features if schema.canonical_name(name) != name]
    if unknown:
        raise ModelError(
            f"metadata 'features' has names that are not canonical CICFlowMeter-4 field names: {unknown}; "
            "retrain or re-export the model with names from sidecar/schema.py",
            path=where,
        )
    if len(set(features)) != len(features):
        raise ModelError(f"metadata 'features' repeats a name: {features}; re-export the model", path=where)


def _input_name(session: ort.InferenceSession, n_features: int, where: str) -> str:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"the model has {len(inputs)} inputs, expected 1 float tensor (n, {n_features})", path=where)
    shape = inputs[0].shape
    width = shape[-1] if shape else None
    if isinstance(width, int) and width != n_features:
        raise ModelError(
            f"the model's input takes {width} features but its metadata lists {n_features}; "
            "re-export the model so both come from the same training run",
            path=where,
        )
    return str(inputs[0].name)


def _output_name(session: ort.InferenceSession, where: str) -> str:
    outputs = session.get_outputs()
    names = [output.name for output in outputs]
    if PROBABILITIES_OUTPUT in names:
        return PROBABILITIES_OUTPUT
    tensors = [o.name for o in outputs if o.type == "tensor(float)" and len(o.shape or ()) == 2]
    if len(tensors) == 1:
        return str(tensors[0])
    raise ModelError(
        f"cannot find the class-probability output among {names}; expected a float tensor named "
        f"'{PROBABILITIES_OUTPUT}' (export with `{EXPORT_COMMAND}`, which disables ZipMap)",
        path=where,
    )


def _check_output_width(model: Model, where: str) -> None:
    """Score one all-missing row to confirm the output has one column per class."""
    probe = np.full((1, len(model.features)), np.nan, dtype=np.float32)
    probabilities = model.predict_proba(probe)
    if probabilities.shape != (1, len(model.classes)):
        raise ModelError(
            f"the model returns {probabilities.shape[1] if probabilities.ndim == 2 else probabilities.shape} "
            f"probabilities per row but its metadata lists {len(model.classes)} classes; re-export the model",
            path=where,
        )
