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

from components.model_input import columns_of, feature_frame, onnx_feeds, onnx_input_types
from components.spec import ModelSpec

# float32 inputs in the graph: probabilities agree with float64 scikit-learn to ~1e-7 here.
PARITY_TOLERANCE = 1e-5
TARGET_OPSET = 17
# onnxmltools' tree converters write ai.onnx.ml operators up to version 3 (skl2onnx's default is newer).
THIRD_PARTY_OPSET = {"": TARGET_OPSET, "ai.onnx.ml": 3}
PROBABILITIES_OUTPUT = "probabilities"


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
    """skl2onnx converts scikit-learn's own estimators; XGBoost's and LightGBM's classifiers convert
    through onnxmltools' converters, registered here (skl2onnx's documented way to convert a pipeline
    that ends in one); True when one was. Any other estimator gets no converter: the export fails and
    says why."""
    package = type(estimator).__module__.split(".")[0]
    if package not in ("xgboost", "lightgbm"):
        return False
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    if package == "xgboost":
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost as convert
        from xgboost import XGBClassifier as known
    else:
        from lightgbm import LGBMClassifier as known
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm as convert
    if isinstance(estimator, known):
        update_registered_converter(
            known,
            f"{package}{known.__name__}",
            calculate_linear_classifier_output_shapes,
            convert,
            options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
        )
        return True
    return False


def _convert(pipeline, spec: ModelSpec) -> bytes:
    from skl2onnx import convert_sklearn

    types = onnx_input_types(spec)
    estimator = pipeline.steps[-1][1]
    opset = THIRD_PARTY_OPSET if _register_converter(estimator) else TARGET_OPSET
    graph = convert_sklearn(
        pipeline, initial_types=types, options={id(estimator): {"zipmap": False}}, target_opset=opset
    )
    return graph.SerializeToString()


def session(model: bytes):
    """An ONNX Runtime session on one thread: the server scales by processes, not by threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def export(pipeline, spec: ModelSpec, holdout: pd.DataFrame) -> OnnxExport:
    """Convert `pipeline` and compare positive-class probabilities with scikit-learn on `holdout`."""
    try:
        model = _convert(pipeline, spec)
        onnx_proba = session(model).run([PROBABILITIES_OUTPUT], onnx_inputs(spec, holdout))[0][:, 1]
    except Exception as exc:  # skl2onnx/onnxruntime raise many types for unsupported estimators
        return OnnxExport(None, None, f"ONNX conversion failed ({type(exc).__name__}: {exc}); serving scikit-learn")
    reference = pipeline.predict_proba(feature_frame(holdout, spec))[:, 1]
    diff = float(np.max(np.abs(onnx_proba - reference))) if len(reference) else 0.0
    if diff > PARITY_TOLERANCE:
        return OnnxExport(
            None, diff, f"ONNX probabilities differ by {diff:.2e} > {PARITY_TOLERANCE:.0e}; serving scikit-learn"
        )
    return OnnxExport(model, diff, f"ONNX parity on {len(reference)} holdout rows: max |diff| {diff:.2e}")
