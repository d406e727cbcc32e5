"""Request payloads -> validated feature columns, with a 400 naming the field and the rule for every
mistake a client can make.

V1 (`/v1/models/<name>:predict`): `{"instances": [{"<feature>": value, ...}, ...]}`, one object per row.
V2 (Open Inference Protocol, `/v2/models/<name>/infer`): one input tensor per feature, shape `[n]` or
`[n, 1]`, datatype BYTES for categories and FP32/FP64/INT* for numbers.
A row carrying only the entity key (e.g. `{"customer_id": 42}`) is enriched from the Feast online store
when the predictor has one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from components.spec import ModelSpec
from components.train import MISSING_CATEGORY

MAX_BATCH = 10_000
NUMBER_TYPES = frozenset({int, float})
NUMERIC_V2_TYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)


class PayloadError(ValueError):
    """The request breaks a rule; the message names the field. Served as HTTP 400."""


@dataclass(frozen=True)
class FeatureRule:
    name: str
    numeric: bool
    nullable: bool
    categories: frozenset[str] | None


def rules_for(spec: ModelSpec) -> list[FeatureRule]:
    return [
        FeatureRule(
            f.name, f.type != "category", f.max_null_fraction > 0, frozenset(f.categories) if f.categories else None
        )
        for f in spec.features
    ]


# Looks up entity keys in the online store: keys -> one feature dict per key (None if unknown).
EntityLookup = Callable[[list], list[dict | None]]


class PayloadParser:
    """Validates payloads against a spec's features and turns them into model input columns."""

    def __init__(self, spec: ModelSpec, lookup: EntityLookup | None = None):
        self.rules = rules_for(spec)
        self.names = [r.name for r in self.rules]
        self.allowed = frozenset(self.names)
        self.entity_key = spec.entity.key
        self.lookup = lookup
        # row -> tuple of its feature values, in rule order (itemgetter of one name returns a bare value)
        self.row_values = itemgetter(*self.names) if len(self.names) > 1 else lambda row: (row[self.names[0]],)

    # -- V1 ---------------------------------------------------------------------------------------
    def from_v1(self, body: object) -> dict[str, list]:
        """`{"instances": [...]}` -> columns (feature name -> list of raw values, validated)."""
        if not isinstance(body, dict):
            raise PayloadError('body: expected a JSON object like {"instances": [{...}, ...]}')
        if "instances" not in body:
            keys = sorted(body)[:5]
            raise PayloadError(f"instances: required field missing (body has {keys}); V2 requests go to /v2/.../infer")
        rows = body["instances"]
        if not isinstance(rows, list):
            raise PayloadError(f"instances: expected a list of objects, got {type(rows).__name__}")
        self._check_batch_size(len(rows), "instances")
        rows = self._enrich(rows)
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise PayloadError(f"instances[{i}]: expected an object of feature values, got {type(row).__name__}")
            if row.keys() != self.allowed:  # the common case costs one comparison per row
                extra = sorted(set(row) - self.allowed - {self.entity_key})
                if extra:
                    raise PayloadError(f"instances[{i}].{extra[0]}: unknown field; expected the model's features")
                missing = next((n for n in self.names if n not in row), None)
                if missing is not None:
                    raise PayloadError(f"instances[{i}].{missing}: required field missing")
        # Rows -> columns without a Python loop per value: a tuple of feature values per row, transposed.
        transposed = zip(*map(self.row_values, rows), strict=True)
        return {
            rule.name: self._column(rule, list(values), lambda j, n=rule.name: f"instances[{j}].{n}")
            for rule, values in zip(self.rules, transposed, strict=True)
        }

    # -- V2 ---------------------------------------------------------------------------------------
    def from_v2(self, inputs: list) -> dict[str, list]:
        """OIP input tensors (objects with name, shape, datatype, data) -> validated columns."""
        if not inputs:
            raise PayloadError("inputs: empty; expected one tensor per feature")
        by_name = {}
        for i, tensor in enumerate(inputs):
            if tensor.name not in self.allowed:
                raise PayloadError(f"inputs[{i}].name: unknown input {tensor.name!r}; expected the model's features")
            if tensor.name in by_name:
                raise PayloadError(f"inputs[{i}].name: input {tensor.name!r} given twice")
            by_name[tensor.name] = tensor
        missing = [n for n in self.names if n not in by_name]
        if missing:
            raise PayloadError(
                f"inputs: missing input {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        columns: dict[str, list] = {}
        length = None
        for rule in self.rules:
            tensor = by_name[rule.name]
            where = f"inputs[{rule.name}]"
            if rule.numeric and tensor.datatype not in NUMERIC_V2_TYPES:
                raise PayloadError(
                    f"{where}.datatype: expected a numeric datatype (FP32, FP64, INT64, ...), got {tensor.datatype}"
                )
            if not rule.numeric and tensor.datatype != "BYTES":
                raise PayloadError(f"{where}.datatype: expected BYTES for a category, got {tensor.datatype}")
            shape = list(tensor.shape)
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
                raise PayloadError(f"{where}.shape: expected [n] or [n, 1], got {shape}")
            data = tensor.data if isinstance(tensor.data, list) else list(tensor.data)
            if len(data) != shape[0]:
                raise PayloadError(f"{where}.data: {len(data)} values for shape {shape}")
            if length is None:
                length = len(data)
                self._check_batch_size(length, "inputs")
            elif len(data) != length:
                raise PayloadError(f"{where}.shape: {len(data)} rows, other inputs have {length}")
            values = [v.decode() if isinstance(v, bytes) else v for v in data]
            columns[rule.name] = self._column(rule, values, lambda j, w=where: f"{w}.data[{j}]")
        return columns

    # -- shared -----------------------------------------------------------------------------------
    @staticmethod
    def _check_batch_size(n: int, field: str) -> None:
        if n == 0:
            raise PayloadError(f"{field}: empty batch; send at least one row")
        if n > MAX_BATCH:
            raise PayloadError(f"{field}: {n} rows, at most {MAX_BATCH} per request")

    def _column(self, rule: FeatureRule, values: list, where) -> list:
        """Validate one feature's values: a whole-column check for the common case, and the
        value-by-value walk (which names the offending row) only when that check fails."""
        if rule.numeric:
            # Plain ints and floats only (no bools, no None), and a finite sum: no NaN nor infinity
            # (a sum that overflows takes the slow path, which accepts it).
            if NUMBER_TYPES.issuperset(map(type, values)):
                total = sum(values)
                if total - total == 0:
                    return values
        elif rule.categories.issuperset(values):
            return values
        return [self._value(rule, v, where(j)) for j, v in enumerate(values)]

    def _value(self, rule: FeatureRule, value: object, where: str):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if not rule.nullable:
                raise PayloadError(f"{where}: null/NaN not allowed for this feature")
            return None
        if rule.numeric:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PayloadError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
            if math.isinf(value):
                raise PayloadError(f"{where}: expected a finite number, got {value}")
            return value
        if not isinstance(value, str):
            raise PayloadError(f"{where}: expected a string category, got {type(value).__name__} {value!r}")
        if value not in rule.categories:
            raise PayloadError(f"{where}: unknown category {value!r}; expected one of {sorted(rule.categories)}")
        return value

    def _enrich(self, rows: list) -> list:
        """Replace rows that carry only the entity key with the online store's features."""
        key = self.entity_key
        keyed = [i for i, row in enumerate(rows) if isinstance(row, dict) and len(row) == 1 and key in row]
        if not keyed:
            return rows
        if self.lookup is None:
            raise PayloadError(
                f"instances[{keyed[0]}]: only {self.entity_key!r} given, and this predictor has "
                "no feature store to look it up; send the features"
            )
        found = self.lookup([rows[i][self.entity_key] for i in keyed])
        rows = list(rows)
        for i, features in zip(keyed, found, strict=True):
            if features is None:
                raise PayloadError(
                    f"instances[{i}].{self.entity_key}: {rows[i][self.entity_key]!r} has no features "
                    "in the online store"
                )
            rows[i] = features
        return rows


def to_model_inputs(spec: ModelSpec, columns: dict[str, list]) -> dict[str, np.ndarray]:
    """Validated columns -> the ONNX graph's feeds ([n, 1] float32 or string)."""
    feeds = {}
    for f in spec.features:
        values = columns[f.name]
        if f.type == "category":
            if None in values:
                values = [MISSING_CATEGORY if v is None else v for v in values]
            feeds[f.name] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            feeds[f.name] = np.array(values, dtype=np.float32).reshape(-1, 1)  # None becomes NaN
    return feeds
