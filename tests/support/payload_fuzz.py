"""Property-based fuzzing of the predictor's request contract, reusable against any base URL that routes
`/v1/models/<name>:predict` and `/v2/models/<name>/infer` (one predictor, or the local plane).

Requests are built as raw bytes, so they can carry what a JSON library would not write: NaN and
Infinity, 400- and 5000-digit numbers, lists nested 3000 deep, duplicate keys, lone surrogates,
truncated or non-UTF-8 bodies; with missing, wrong or parameterised content types and the OIP binary
extension's header.

The contract every answer must keep (`violation` checks one answer):
- never a 5xx; a generated request gets 200, or 400/413/415 with the JSON body `{"error": "<field>: <rule>"}`
  whose field is one of FIELDS (`body`, a header, or a path into the request: `instances[0].tenure`,
  `inputs[contract].data[1]`, `inputs.2.shape.0`, `id`, `parameters.x`, `outputs.0.name`);
- a valid request, sent after every VALID_EVERY generated ones on the same connection, gets 200 with
  one prediction per row.

    report = fuzz("http://127.0.0.1:8080", spec, "churn", "v2", examples=5000)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from components.spec import ModelSpec

VALID_EVERY = 20
ANSWERED_STATUSES = frozenset({200, 400, 413, 415})
FIELDS = (
    "body",
    "content-type",
    "inference-header-content-length",
    "id",
    "parameters",
    "outputs",
    "instances",
    "inputs",
)
FIELD_FIRST = re.compile(rf"^({'|'.join(re.escape(f) for f in FIELDS)})([\[.:]|$)")
PROTOCOLS = ("v1", "v2")


# -- JSON written by hand ------------------------------------------------------------------------
@dataclass(frozen=True)
class Raw:
    """Text put into the body as is: `NaN`, `1e400`, a 5000-digit number, `[[[...]]]` 3000 deep."""

    text: str


@dataclass(frozen=True)
class Pairs:
    """A JSON object written from its (key, value) pairs, so a key may repeat."""

    items: tuple


def encode(value: object) -> str:
    """`value` as JSON text; floats NaN/±inf as the non-standard tokens, str escaped to ASCII (so a
    lone surrogate is written as a `\\udXXX` escape)."""
    if isinstance(value, Raw):
        return value.text
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(v) for v in value) + "]"
    if isinstance(value, dict):
        value = Pairs(tuple(value.items()))
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(str(k))}:{encode(v)}" for k, v in value.items) + "}"
    raise TypeError(f"cannot encode {type(value).__name__}")


# -- strategies ----------------------------------------------------------------------------------
SPECIAL_NUMBERS = [
    Raw(t)
    for t in (
        "NaN",
        "Infinity",
        "-Infinity",
        "1e39",
        "-1e39",
        "3.4028234e38",
        "3.5e38",
        "1e308",
        "1e400",
        "-1e400",
        "1e-400",
        "-0",
        "1" + "0" * 400,
        "-" + "9" * 400,
        "7" * 5000,
        "0.1e99999",
    )
]
ODD_TEXT = ["", " ", "\ud800", "a\udfff", "\x00", "é", "🦄", "null", "NaN", "1", "x" * 300]


def deep(depth: int, opener: str = "[", closer: str = "]", leaf: str = "") -> Raw:
    return Raw(opener * depth + leaf + closer * depth)


deep_values = st.one_of(
    st.integers(2, 4000).map(deep),
    st.integers(2, 4000).map(lambda d: deep(d, '{"a":', "}", "1")),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(ODD_TEXT),
    st.sampled_from(SPECIAL_NUMBERS),
)
json_values = st.one_of(
    st.recursive(
        scalars,
        lambda kids: st.one_of(
            st.lists(kids, max_size=4),
            st.dictionaries(st.text(max_size=6), kids, max_size=4),
            st.lists(st.tuples(st.sampled_from(["a", "a", "b"]), kids), max_size=3).map(lambda p: Pairs(tuple(p))),
        ),
        max_leaves=8,
    ),
    deep_values,
)


def valid_rows_pool(spec: ModelSpec, size: int = 32) -> list[dict]:
    """`size` valid rows spread over every category and each numeric range (drawing 19 values per row
    with hypothesis would cost more than sending the request)."""
    rows = []
    for i in range(size):
        row = {}
        for k, f in enumerate(spec.features):
            if f.type == "category":
                row[f.name] = f.categories[(i + k) % len(f.categories)]
                continue
            low, high = f.min if f.min is not None else -1e6, f.max if f.max is not None else 1e6
            value = low + (high - low) * ((i * 7 + k) % size) / (size - 1)
            row[f.name] = round(value) if f.type == "int" else value
        rows.append(row)
    return rows


def feature_values(feature):
    """Values for one feature: of the right kind near the rules' edges, or anything at all."""
    if feature.type == "category":
        near = (
            [c.upper() for c in feature.categories]
            + [c + " " for c in feature.categories]
            + ["[]", *feature.categories]
        )
    else:
        near = [-3.5e38, 3.4028234e38, 1.7e308, -0.0, 5e-324, float("nan"), float("inf"), True, 0, 1.5]
    return st.one_of(st.sampled_from(near), json_values)


class _Bodies:
    """Strategies for one spec's request bodies, built once (hypothesis validates a strategy on first use)."""

    def __init__(self, spec: ModelSpec, max_rows: int = 4):
        self.spec = spec
        self.names = [f.name for f in spec.features]
        self.values = {f.name: feature_values(f) for f in spec.features}
        pool = valid_rows_pool(spec)
        self.rows = st.tuples(st.integers(0, len(pool) - 1), st.integers(1, max_rows)).map(
            lambda start_n: [pool[(start_n[0] + k) % len(pool)] for k in range(start_n[1])]
        )
        self.v1 = self._v1()
        self.v2 = self._v2()

    def _v1(self):
        @st.composite
        def v1_bodies(draw):
            """Valid rows with one part of them broken (or nothing broken, now and then)."""
            rows = [dict(r) for r in draw(self.rows)]
            where = draw(
                st.sampled_from(["value"] * 3 + ["extra", "missing", "duplicate", "row", "rows", "body", "ok"])
            )
            i = draw(st.integers(0, len(rows) - 1))
            name = draw(st.sampled_from(self.names))
            if where == "value":
                rows[i][name] = draw(self.values[name])
            elif where == "extra":
                rows[i][draw(st.one_of(st.text(max_size=8), st.sampled_from(ODD_TEXT)))] = draw(json_values)
            elif where == "missing":
                rows[i].pop(name)
            elif where == "duplicate":
                rows[i] = Pairs((*rows[i].items(), (name, draw(self.values[name]))))
            elif where == "row":
                rows[i] = draw(json_values)
            elif where == "rows":
                return {"instances": draw(json_values)}
            elif where == "body":
                return draw(st.one_of(json_values, st.fixed_dictionaries({"inputs": json_values})))
            return {"instances": rows}

        return v1_bodies()

    def _tensors(self, rows: list[dict], draw) -> list[dict]:
        n = len(rows)
        layout = draw(st.sampled_from(["flat", "column", "column nested"]))
        numeric_type = draw(st.sampled_from(V2_DATATYPES))
        tensors = []
        for f in self.spec.features:
            values = [r[f.name] for r in rows]
            tensors.append(
                {
                    "name": f.name,
                    "shape": [n] if layout == "flat" else [n, 1],
                    "datatype": "BYTES" if f.type == "category" else numeric_type,
                    "data": [[v] for v in values] if layout == "column nested" else values,
                }
            )
        return tensors

    def _v2(self):
        @st.composite
        def v2_bodies(draw):
            """Valid tensors with one part of them broken (or nothing broken, now and then)."""
            rows = draw(self.rows)
            tensors = self._tensors(rows, draw)
            body: dict = {"inputs": tensors}
            request_id = draw(st.one_of(st.none(), st.sampled_from(ODD_TEXT), st.text(max_size=10)))
            if request_id is not None:
                body["id"] = request_id
            where = draw(st.sampled_from(["data"] * 3 + V2_PARTS))
            t = draw(st.integers(0, len(tensors) - 1))
            tensor, name, n = tensors[t], self.names[t], len(rows)
            if where == "data":
                j = draw(st.integers(0, n - 1))
                how = draw(st.sampled_from(["value", "value", "nest", "deep", "length", "any"]))
                data = list(tensor["data"])
                if how == "value":
                    data[j] = draw(self.values[name])
                elif how == "nest":
                    data[j] = [data[j]]
                elif how == "deep":
                    data = [[[v]] for v in data]
                elif how == "length":
                    data = data + data[:1] if draw(st.booleans()) else data[1:]
                else:
                    data = draw(json_values)
                tensor["data"] = data
            elif where == "shape":
                odd = [[], [n, 2], [n, 1, 1], [-1], [0], [1, n], [n + 1], [2**63 - 1], [10**30], [True]]
                tensor["shape"] = draw(st.one_of(st.sampled_from(odd), json_values))
            elif where == "datatype":
                tensor["datatype"] = draw(st.one_of(st.sampled_from(ODD_DATATYPES + V2_DATATYPES), json_values))
            elif where == "name":
                tensor["name"] = draw(st.one_of(st.sampled_from(self.names + ODD_TEXT), json_values))
            elif where == "tensor":
                key = draw(st.sampled_from(["parameters", "extra", "name", "shape", "datatype", "data"]))
                if key in ("name", "shape", "datatype", "data") and draw(st.booleans()):
                    tensor.pop(key)
                else:
                    tensor[key] = draw(json_values)
            elif where == "drop":
                tensors.pop(t)
            elif where == "twice":
                tensors.append(dict(tensor))
            elif where == "inputs":
                body["inputs"] = draw(json_values)
            elif where == "top":
                body[draw(st.sampled_from(["id", "parameters", "outputs", "extra"]))] = draw(json_values)
            elif where == "body":
                return draw(st.one_of(json_values, st.fixed_dictionaries({"instances": json_values})))
            return body

        return v2_bodies()


V2_PARTS = ["shape", "datatype", "name", "tensor", "drop", "twice", "inputs", "top", "body", "ok"]
V2_DATATYPES = ["FP32", "FP64", "INT32", "INT64"]
ODD_DATATYPES = ["FP16", "BOOL", "BYTES", "fp32", "", "UINT8", "FP8", "STRING"]


JSON_TYPES = ["application/json"]
OTHER_TYPES = [
    None,
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/json;charset=UTF-8",
    "application/cloudevents+json",
    "application/vnd.api+json",
    "application/octet-stream",
    "text/plain",
    "text/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "",
    "garbage",
    "*/*",
    "application/json; charset=latin-1",
]
BINARY_HEADER = "inference-header-content-length"
BINARY_HEADER_VALUES = ["0", "2", "99999", "x", "-1", "1e3", "", "1_2", "12a", "00000000000000000000001", "<length>"]
CLOUD_EVENT = {"ce-specversion": "1.0", "ce-source": "fuzz", "ce-type": "t", "ce-id": "1"}
# One draw picks all headers: the content type (JSON most of the time, so bodies reach the parser),
# sometimes with the binary extension's header or (some of) a binary CloudEvent's headers.
HEADERS = st.sampled_from(
    [(("content-type", "application/json"),)] * 40
    + [(("content-type", t),) for t in OTHER_TYPES]
    + [
        (("content-type", t), (BINARY_HEADER, v))
        for t in ("application/json", "application/octet-stream", None)
        for v in BINARY_HEADER_VALUES
    ]
    + [(("content-type", "application/json"), *list(CLOUD_EVENT.items())[:k]) for k in range(1, 5)]
)


@dataclass(frozen=True)
class FuzzRequest:
    path: str
    content: bytes
    headers: dict[str, str]


def fuzz_requests(spec: ModelSpec, model: str, protocol: str):
    """Requests to `model` over `protocol` (v1 or v2), as raw bytes with their headers."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    bodies = _Bodies(spec)
    return _requests(bodies.v1 if protocol == "v1" else bodies.v2, request_path(model, protocol))


@st.composite
def _requests(draw, bodies, path: str):
    body = draw(bodies)
    content = encode(body).encode()
    mangle = draw(st.sampled_from(["none"] * 12 + ["truncate", "not utf-8", "bytes", "empty"]))
    if mangle == "truncate":
        content = content[: draw(st.integers(0, max(0, len(content) - 1)))]
    elif mangle == "not utf-8":
        at = draw(st.integers(0, len(content)))
        content = content[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + content[at:]
    elif mangle == "bytes":
        content = draw(st.binary(max_size=40))
    elif mangle == "empty":
        content = b""
    headers = dict(draw(HEADERS))
    if headers.get(BINARY_HEADER) == "<length>":
        headers[BINARY_HEADER] = str(len(content))
    return FuzzRequest(path, content, {k: v for k, v in headers.items() if v is not None})


def request_path(model: str, protocol: str) -> str:
    return f"/v1/models/{model}:predict" if protocol == "v1" else f"/v2/models/{model}/infer"


def valid_body(spec: ModelSpec, protocol: str, rows: int = 2) -> bytes:
    """A request every predictor of `spec` answers with 200."""
    row = {f.name: f.categories[-1] if f.categories else (f.max or 1.0) / 2 for f in spec.features}
    if protocol == "v1":
        return json.dumps({"instances": [row] * rows}).encode()
    inputs = [
        {
            "name": f.name,
            "shape": [rows],
            "datatype": "BYTES" if f.type == "category" else "FP32",
            "data": [row[f.name]] * rows,
        }
        for f in spec.features
    ]
    return json.dumps({"id": "fuzz-valid", "inputs": inputs}).encode()


# -- the contract --------------------------------------------------------------------------------
def violation(response: httpx.Response, protocol: str, must_succeed: bool = False) -> str | None:
    """What is wrong with one answer, or None when it keeps the contract."""
    status = response.status_code
    if must_succeed and status != 200:
        return f"a valid request got {status}: {response.text[:300]}"
    if status not in ANSWERED_STATUSES:
        return f"status {status}: {response.text[:300]}"
    try:
        body = response.json()
    except ValueError:
        return f"status {status} with a body that is not JSON: {response.content[:200]!r}"
    if status == 200:
        key = "predictions" if protocol == "v1" else "outputs"
        if isinstance(body, dict) and "specversion" in body:  # a structured CloudEvent in, one out (KServe)
            body = body.get("data")
        return None if isinstance(body, dict) and key in body else f"200 without {key!r}: {response.text[:300]}"
    if not (isinstance(body, dict) and list(body) == ["error"] and isinstance(body["error"], str)):
        return f'status {status}: expected {{"error": str}}, got {response.text[:300]}'
    if not FIELD_FIRST.match(body["error"]):
        return f"status {status}: the message does not start with a field of {FIELDS}: {body['error'][:300]!r}"
    return None


def _post(client: httpx.Client, path: str, content: bytes, headers: dict, previous: list) -> httpx.Response:
    try:
        return client.post(path, content=content, headers=headers)
    except httpx.TransportError as exc:
        # The server dropped the keep-alive connection, most likely after answering the request before.
        after = _shown(previous[0]) if previous else "nothing"
        raise AssertionError(f"the connection broke ({exc!r}); the request before was: {after}") from exc


def _shown(request: FuzzRequest) -> str:
    return f"{request.headers} {request.content[:500]!r}"


@dataclass
class FuzzReport:
    sent: int = 0
    valid_sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


def fuzz(
    base_url: str,
    spec: ModelSpec,
    model: str,
    protocol: str,
    examples: int,
    client: httpx.Client | None = None,
    seed: int = 0,
) -> FuzzReport:
    """Send `examples` generated requests (and a valid one after every VALID_EVERY) to `base_url`;
    raise AssertionError (after hypothesis shrank it to a small case) on the first broken promise.

    Seeded: the same requests every run for the same `seed`. One keep-alive connection throughout, so an answer
    that makes the server drop the connection shows up as a transport error on the next request."""
    report = FuzzReport()
    own_client = client is None
    client = client or httpx.Client(base_url=base_url, timeout=30)
    path = request_path(model, protocol)
    valid = valid_body(spec, protocol)

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.generate, Phase.shrink),
        print_blob=False,
    )
    @given(fuzz_requests(spec, model, protocol))
    def one(request: FuzzRequest) -> None:
        response = _post(client, request.path, request.content, request.headers, previous)
        previous[:] = [request]
        report.sent += 1
        report.statuses[response.status_code] = report.statuses.get(response.status_code, 0) + 1
        problem = violation(response, protocol)
        assert problem is None, f"{problem}\nrequest: {_shown(request)}"
        if report.sent % VALID_EVERY == 0:
            answer = _post(client, path, valid, {"content-type": "application/json"}, previous)
            report.valid_sent += 1
            problem = violation(answer, protocol, must_succeed=True)
            assert problem is None, f"{problem}\nafter request: {_shown(request)}"

    previous: list[FuzzRequest] = []
    try:
        one()
    finally:
        if own_client:
            client.close()
    return report
