"""The model's input contract, in one place: what a model is fed, whoever feeds it.

Training, the ONNX export's parity check, `shepherd traffic` and the predictor all go through here, so
the model served is fed exactly what the model trained was:
- `feature_frame`: a table -> the scikit-learn pipeline's input (spec order; numbers as float with NaN
  for missing; categories as strings with MISSING_CATEGORY for missing, which no spec lists, so the
  one-hot encoder gives it all zeros).
- `columns_of`: a table -> columns of plain Python values (None for missing), the shape the predictor's
  payload parser produces from a request.
- `onnx_feeds`: columns -> the ONNX graph's feeds ([n, 1] float32 or string tensors); the one encoder
  the parity check and the predictor share.
- `frame_of`: columns -> the scikit-learn pipeline's input, as `feature_frame` makes it from a table
  (float64, as the pipeline was fitted: serving a pipeline must not round its inputs to float32).
- `onnx_input_types`: the graph's declared inputs, one per feature, for the converter.

Light on imports on purpose (numpy and pandas only): the predictor imports it and must start fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from components.spec import ModelSpec

if TYPE_CHECKING:
    import pandas as pd

MISSING_CATEGORY = ""


def feature_frame(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The model's input columns, in spec order: numbers as float (NaN for missing), categories as
    strings (MISSING_CATEGORY for missing)."""
    out = frame[spec.feature_names].copy()
    for f in spec.features:
        if f.type == "category":
            out[f.name] = out[f.name].where(out[f.name].notna(), MISSING_CATEGORY).astype(str)
        else:
            out[f.name] = out[f.name].astype(float)
    return out


def columns_of(frame: pd.DataFrame, spec: ModelSpec) -> dict[str, list]:
    """A table's features as the payload parser hands them over: one list of plain values per feature
    (numbers as float, categories as str, None for missing)."""
    columns = {}
    for f in spec.features:
        series = frame[f.name]
        missing = series.isna().to_numpy()
        values = series.astype(str).tolist() if f.type == "category" else series.astype(float).tolist()
        columns[f.name] = [None if gone else v for v, gone in zip(values, missing, strict=True)]
    return columns


def onnx_feeds(spec: ModelSpec, columns: Mapping[str, Sequence]) -> dict[str, np.ndarray]:
    """Columns (None for missing) -> the ONNX graph's feeds: one [n, 1] tensor per feature, float32
    (None becomes NaN, which the graph's imputer fills) or string (None becomes MISSING_CATEGORY)."""
    feeds = {}
    for f in spec.features:
        values = columns[f.name]
        if f.type == "category":
            if None in values:
                values = [MISSING_CATEGORY if v is None else v for v in values]
            feeds[f.name] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            feeds[f.name] = np.array(values, dtype=np.float32).reshape(-1, 1)
    return feeds


def frame_of(spec: ModelSpec, columns: Mapping[str, Sequence]) -> pd.DataFrame:
    """Columns (None for missing) -> the scikit-learn pipeline's input frame, encoded as `feature_frame`
    encodes a table."""
    import pandas as pd

    return feature_frame(pd.DataFrame({f.name: list(columns[f.name]) for f in spec.features}), spec)


def onnx_input_types(spec: ModelSpec) -> list[tuple[str, object]]:
    """The graph's inputs as skl2onnx declares them: a [None, 1] string or float tensor per feature."""
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    return [
        (f.name, StringTensorType([None, 1]) if f.type == "category" else FloatTensorType([None, 1]))
        for f in spec.features
    ]
