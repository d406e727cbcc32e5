"""Exporting a trained scikit-learn pipeline to ONNX, with a parity check on the holdout.

Serving the ONNX graph in ONNX Runtime costs ~0.1 ms per row where the scikit-learn pipeline costs
~15 ms per call in input checks, so every registered model gets an ONNX twin when its predictions
agree with the original on the holdout. When conversion fails or disagrees, the model is served by
scikit-learn and the reason is recorded on the version, loudly, not silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.model_input import columns_of, onnx_feeds, onnx_input_types
from components.model_output import graph_answers, output_name, predict
from components.spec import ModelSpec

# float32 inputs in the graph: probabilities agree with float64 scikit-learn to ~1e-7 here; predicted
# values to ~1e-7 of their size (float32 has 24 bits of mantissa), so regression is judged relatively.
PARITY_TOLERANCE = 1e-5
RELATIVE_PARITY_TOLERANCE = 1e-4
TARGET_OPSET = 17
# onnxmltools' tree converters write ai.onnx.ml operators up to version 3 (skl2onnx's default is newer).
THIRD_PARTY_OPSET = {"": TARGET_OPSET, "ai.onnx.ml": 3}


def parity(spec: ModelSpec, graph: np.ndarray, reference: np.ndarray) -> tuple[float, float, str]:
    """(difference, tolerance, what the difference is): absolute for probabilities, relative to the value's
    size (at least 1) for predicted values."""
    graph, reference = np.asarray(graph, dtype=float), np.asarray(reference, dtype=float)
    if not reference.size:
        return 0.0, PARITY_TOLERANCE, "max |diff|"
    if spec.task == "regression":
        diff = float(np.max(np.abs(graph - reference) / np.maximum(np.abs(reference), 1.0)))
        return diff, RELATIVE_PARITY_TOLERANCE, "max relative diff"
    return float(np.max(np.abs(graph - reference))), PARITY_TOLERANCE, "max |diff|"


@dataclass
class OnnxExport:
    """The serialized graph (None if unusable), its parity on the holdout, and why if unusable."""

    model: bytes | None
    max_abs_diff: float | None
    reason: str


def onnx_inputs(spec: ModelSpec, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A table -> the graph's feeds, through the encoder the predictor uses on a request's columns."""
    return onnx_feeds(spec, columns_of(frame, spec))


def _register_converter(estimator) -> bool:
    """skl2onnx converts scikit-learn's own estimators; XGBoost's and LightGBM's classifiers and
    regressors convert through onnxmltools' converters, registered here (skl2onnx's documented way to
    convert a pipeline that ends in one); True when one was. Any other estimator gets no converter: the
    export fails and says why."""
    package = type(estimator).__module__.split(".")[0]
    if package not in ("xgboost", "lightgbm"):
        return False
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    if package == "xgboost":
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost as convert
        from xgboost import XGBClassifier as classifier
        from xgboost import XGBRegressor as regressor
    else:
        from lightgbm import LGBMClassifier as classifier
        from lightgbm import LGBMRegressor as regressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm as convert
    if isinstance(estimator, classifier):
        update_registered_converter(
            classifier,
            f"{package}{classifier.__name__}",
            calculate_linear_classifier_output_shapes,
            convert,
            options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
        )
        return True
    if isinstance(estimator, regressor):
        update_registered_converter(
            regressor, f"{package}{regressor.__name__}", calculate_linear_regressor_output_shapes, convert
        )
        return True
    return False


def _convert(pipeline, spec: ModelSpec) -> bytes:
    from skl2onnx import convert_sklearn

    types = onnx_input_types(spec)
    estimator = pipeline.steps[-1][1]
    opset = THIRD_PARTY_OPSET if _register_converter(estimator) else TARGET_OPSET
    options = {id(estimator): {"zipmap": False}} if spec.task != "regression" else None
    graph = convert_sklearn(pipeline, initial_types=types, options=options, target_opset=opset)
    return graph.SerializeToString()


def session(model: bytes):
    """An ONNX Runtime session on one thread: the server scales by processes, not by threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def export(pipeline, spec: ModelSpec, holdout: pd.DataFrame) -> OnnxExport:
    """Convert `pipeline` and compare its answers with scikit-learn's on `holdout` (probabilities for a
    classifier, values for a regressor)."""
    try:
        model = _convert(pipeline, spec)
        raw = session(model).run([output_name(spec)], onnx_inputs(spec, holdout))[0]
        answers = graph_answers(spec, raw)
    except Exception as exc:  # skl2onnx/onnxruntime raise many types for unsupported estimators
        return OnnxExport(None, None, f"ONNX conversion failed ({type(exc).__name__}: {exc}); serving scikit-learn")
    reference = predict(pipeline, holdout, spec)
    diff, tolerance, what = parity(spec, answers, reference)
    if diff > tolerance:
        return OnnxExport(
            None, diff, f"ONNX answers differ ({what} {diff:.2e} > {tolerance:.0e}); serving scikit-learn"
        )
    return OnnxExport(model, diff, f"ONNX parity on {len(reference)} holdout rows: {what} {diff:.2e}")
