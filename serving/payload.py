"""Request payloads -> validated feature columns, with a 400 naming the field and the rule for every
mistake a client can make.

V1 (`/v1/models/<name>:predict`): `{"instances": [{"<feature>": value, ...}, ...]}`, one object per row.
V2 (Open Inference Protocol, `/v2/models/<name>/infer`): one input tensor per feature, shape `[n]` or
`[n, 1]` (data flat, or one-element rows `[[v], [v], ...]` for `[n, 1]`), datatype BYTES for categories
and FP32/FP64/INT* for numbers.
Numbers must be finite and within float32's range (the model computes in float32). Every error message
starts with the field it is about: `body`, `id`, `instances[<row>].<feature>`, `inputs[<feature>]...`.
A row carrying only the entity key (e.g. `{"customer_id": 42}`) is enriched from the Feast online store
when the predictor has one.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from components.spec import ModelSpec

MAX_BATCH = 10_000
FLOAT32_MAX = float(np.finfo(np.float32).max)  # larger magnitudes become infinity in the model's float32 input
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
            raise PayloadError(f'body: expected a JSON object like {{"instances": [{{...}}, ...]}}, got {_kind(body)}')
        if "instances" not in body:
            keys = sorted(body)[:5]
            raise PayloadError(f"instances: required field missing (body has {keys}); V2 requests go to /v2/.../infer")
        rows = body["instances"]
        if not isinstance(rows, list):
            raise PayloadError(f"instances: expected a list of objects, got {_kind(rows)}")
        self._check_batch_size(len(rows), "instances")
        rows = self._enrich(rows)
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise PayloadError(f"instances[{i}]: expected an object of feature values, got {_kind(row)}")
            if row.keys() != self.allowed:  # the common case costs one comparison per row
                extra = sorted(set(row) - self.allowed - {self.entity_key})
                if extra:
                    raise PayloadError(f"instances[{i}].{_key(extra[0])}: unknown field; expected the model's features")
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
    def from_v2(self, inputs: list, request_id: object = None) -> dict[str, list]:
        """OIP input tensors (objects with name, shape, datatype, data) -> validated columns.

        The tensors' fields are checked here too: KServe validates JSON requests against the OIP
        schema, but not the JSON header of a binary-extension request."""
        if request_id is not None and not (isinstance(request_id, str) and _is_utf8(request_id)):
            raise PayloadError(f"id: expected Unicode text, got {_kind(request_id)} {_show(request_id)}")
        if not inputs:
            raise PayloadError("inputs: empty; expected one tensor per feature")
        by_name = {}
        for i, tensor in enumerate(inputs):
            name = tensor.name
            if not isinstance(name, str) or name not in self.allowed:
                raise PayloadError(f"inputs[{i}].name: unknown input {_show(name)}; expected the model's features")
            if name in by_name:
                raise PayloadError(f"inputs[{i}].name: input {_show(name)} given twice")
            by_name[name] = tensor
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
            datatype = tensor.datatype
            if rule.numeric and datatype not in NUMERIC_V2_TYPES:  # KServe made it an upper-case str
                raise PayloadError(
                    f"{where}.datatype: expected a numeric datatype (FP32, FP64, INT64, ...), got {_show(datatype)}"
                )
            if not rule.numeric and datatype != "BYTES":
                raise PayloadError(f"{where}.datatype: expected BYTES for a category, got {_show(datatype)}")
            shape = tensor.shape
            if not (
                isinstance(shape, list | tuple)
                and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))
                and all(type(d) is int for d in shape)
            ):
                raise PayloadError(f"{where}.shape: expected [n] or [n, 1], got {_show(shape)}")
            data = self._tensor_data(rule, tensor.data, len(shape), where)
            if len(data) != shape[0]:
                raise PayloadError(f"{where}.data: {len(data)} values for shape {list(shape)}")
            if length is None:
                length = len(data)
                self._check_batch_size(length, "inputs")
            elif len(data) != length:
                raise PayloadError(f"{where}.shape: {len(data)} rows, other inputs have {length}")
            columns[rule.name] = self._column(rule, data, lambda j, w=where: f"{w}.data[{j}]")
        return columns

    @staticmethod
    def _tensor_data(rule: FeatureRule, data: object, dims: int, where: str) -> list:
        """A tensor's values as a flat list of Python values: JSON data as sent (one-element rows
        `[[v], [v], ...]` flattened for shape [n, 1]), binary data (a numpy array) converted."""
        if isinstance(data, np.ndarray):  # the binary tensor extension: KServe has decoded the bytes
            values = data.reshape(-1).tolist()
            if rule.numeric:
                return values
            return [_decoded(v, f"{where}.data[{j}]") if isinstance(v, bytes) else v for j, v in enumerate(values)]
        if not isinstance(data, list):
            raise PayloadError(f"{where}.data: expected a list of values, got {_kind(data)}")
        if data and isinstance(data[0], list):
            if dims == 2 and all(isinstance(v, list) and len(v) == 1 for v in data):
                return [v[0] for v in data]
            raise PayloadError(
                f"{where}.data: nested lists; expected a flat list, or one-element rows [[v], ...] for shape [n, 1]"
            )
        return data

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
            # Plain ints and floats only (no bools, no None), whose magnitudes add up to at most
            # float32's largest: then each is within float32's range and finite (NaN and infinity fail
            # the comparison). One pass in C; a column of large values that add up past it takes the
            # value-by-value walk, which judges each on its own.
            if NUMBER_TYPES.issuperset(map(type, values)) and sum(map(abs, values)) <= FLOAT32_MAX:
                return values
        else:
            try:
                if rule.categories.issuperset(values):
                    return values
            except TypeError:  # an unhashable value (a list or an object): the walk names it
                pass
        return [self._value(rule, v, where(j)) for j, v in enumerate(values)]

    def _value(self, rule: FeatureRule, value: object, where: str):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if not rule.nullable:
                raise PayloadError(f"{where}: null/NaN not allowed for this feature")
            return None
        if rule.numeric:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PayloadError(f"{where}: expected a number, got {_kind(value)} {_show(value)}")
            if isinstance(value, float) and math.isinf(value):
                raise PayloadError(f"{where}: expected a finite number, got {value}")
            if not -FLOAT32_MAX <= value <= FLOAT32_MAX:
                raise PayloadError(f"{where}: {_show(value)} is beyond the float32 range ±3.4e38")
            return value
        if not isinstance(value, str):
            raise PayloadError(f"{where}: expected a string category, got {_kind(value)} {_show(value)}")
        if value not in rule.categories:
            raise PayloadError(f"{where}: unknown category {_show(value)}; expected one of {sorted(rule.categories)}")
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
        keys = [rows[i][key] for i in keyed]
        for i, value in zip(keyed, keys, strict=True):
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise PayloadError(f"instances[{i}].{key}: expected a string or an integer key, got {_kind(value)}")
        found = self.lookup(keys)
        rows = list(rows)
        for i, features in zip(keyed, found, strict=True):
            if features is None:
                raise PayloadError(
                    f"instances[{i}].{self.entity_key}: {_show(rows[i][self.entity_key])} has no features "
                    "in the online store"
                )
            rows[i] = features
        return rows


def _kind(value: object) -> str:
    return type(value).__name__


class _ShortRepr(reprlib.Repr):
    """Values in error messages: short whatever the client sent (a 60 MB string, a 1000-deep list, a
    400-digit integer), and never failing on it."""

    def __init__(self):
        super().__init__()
        self.maxstring = self.maxother = 60

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() <= 64:
            return str(x)
        digits = int(x.bit_length() * 0.30103) + 1  # str() refuses past 4300 digits; this never does
        return f"{'-' if x < 0 else ''}(an integer of about {digits} digits)"


_show = _ShortRepr().repr


def _key(name: str) -> str:
    """A client's JSON key as a field in a message: shortened, without the quotes."""
    return _show(name)[1:-1]


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _decoded(value: bytes, where: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise PayloadError(f"{where}: BYTES element is not UTF-8 text") from None
