"""Shepherd's KServe predictor: one registered MLflow version behind `kserve.ModelServer`.

Loading verifies the artifact's sha256 recorded at registration before anything is deserialized, and
prefers the ONNX twin (ONNX Runtime, ~0.1 ms per row) over the scikit-learn pipeline. Every request is
validated against the model's feature spec (`serving.payload`); a client's mistake is a 4xx naming the
field, never a 5xx, and every answer is counted by outcome (`serving.http_contract`).

Run: python -m serving.predictor --model_name churn --model_uri models:/churn@champion --http_port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from components.errors import ShepherdError
from components.model_output import answers
from components.spec import ModelSpec
from monitoring.metrics import OUTCOMES, ROLES, PredictorMetrics
from serving import model_files, prediction_ids
from serving.model_files import LoadedVersion, ModelIntegrityError, parse_model_uri  # noqa: F401 (this module's API)
from serving.payload import PayloadError, PayloadParser

logger = logging.getLogger("shepherd.predictor")
QUIET_LOGGING = Path(__file__).with_name("quiet_logging.yaml")


def load_version(tracking_uri: str, model_uri: str) -> LoadedVersion:
    """Resolve, verify and load a registered version (fetched into a temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        model_files.fetch(tracking_uri, model_uri, Path(tmp))
        return model_files.load(Path(tmp))


def load_for_serving(tracking_uri: str, model_uri: str, model_dir: Path | None) -> LoadedVersion:
    """From `model_dir` when KServe's storage initializer fetched this very version there (serving.model_check),
    else from the registry. A directory whose files no longer match the recorded sha256 is refused, not bypassed."""
    if model_dir is not None and model_files.fetched_here(model_dir, model_uri):
        loaded = model_files.load(model_dir)
        loaded.source = f"{model_dir}, fetched and verified by the storage initializer"
        return loaded
    return load_version(tracking_uri, model_uri)


# Fault injection for rollback drills: this share of valid requests fails with a 500 after parsing, as a
# broken model would, in the stage named by ENV_FAULT_STAGE (predict, or preprocess: a broken
# transformation). Set on the predictor container (the local plane passes them through too).
ENV_FAULT_ERROR_RATE = "SHEPHERD_FAULT_ERROR_RATE"
ENV_FAULT_STAGE = "SHEPHERD_FAULT_STAGE"
FAULT_STAGES = ("predict", "preprocess")
WARMUP_CALLS = 20
SERVING_PLATFORMS = {"onnx": "onnxruntime_onnx", "sklearn": "sklearn"}  # OIP model metadata `platform`


@dataclass(frozen=True)
class Fault:
    """Requests to fail on purpose: `rate` of them (0..1), in `stage`."""

    rate: float = 0.0
    stage: str = "predict"

    def strike(self, stage: str) -> None:
        if self.rate and stage == self.stage and random.random() < self.rate:
            raise RuntimeError(f"injected fault in {stage} ({ENV_FAULT_ERROR_RATE}={self.rate:g})")


def make_model(name: str, loaded: LoadedVersion, role: str, metrics: PredictorMetrics, lookup=None, fault=Fault()):
    """The `kserve.Model` serving `loaded` under `name` (failing some requests on purpose with `fault`).

    Outcomes are counted at the HTTP layer (`serving.http_contract`), from the status each answer
    gets; the model records what only it knows: rows, scores and the duration of successful calls."""
    import kserve
    from kserve.errors import InferenceError, InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    from serving.http_contract import ClientError

    spec = loaded.spec
    parser = PayloadParser(spec, lookup)
    labels = {"model": spec.name, "version": loaded.version, "role": role}
    duration = metrics.duration.labels(**labels)
    score_hist = metrics.score.labels(**labels)
    rows_total = metrics.rows.labels(**labels)
    input_types = [
        {"name": f.name, "datatype": "BYTES" if f.type == "category" else "FP32", "shape": [-1, 1]}
        for f in spec.features
    ]
    output_types = output_tensor_types(spec)
    names = output_names(spec)
    render_v1, render_v2 = answer_renderers(spec)

    class ShepherdModel(kserve.Model):
        def load(self) -> bool:
            # Warm up before taking traffic: a runtime's first calls are several times slower, and a
            # canary's first interval would otherwise fail its latency gate on that alone.
            row = {f.name: [f.categories[0] if f.categories else (f.min or 0.0)] for f in spec.features}
            for _ in range(WARMUP_CALLS):
                loaded.score(row)
            self.ready = True
            return self.ready

        def get_input_types(self) -> list[dict]:
            return input_types

        def get_output_types(self) -> list[dict]:
            return output_types

        async def __call__(self, *args, **kwargs):
            """KServe's preprocess -> predict -> postprocess, with any failure that is not the client's
            raised as KServe's InferenceError: KServe's handler answers it, where a raw exception would
            escape the app and make uvicorn drop the connection."""
            try:
                return await super().__call__(*args, **kwargs)
            except (InvalidInput, InferenceError, NotImplementedError):
                raise
            except Exception as exc:
                logger.error("%s v%s failed to answer", spec.name, loaded.version, exc_info=exc)
                raise InferenceError(f"model: {type(exc).__name__}: {str(exc)[:200]}") from exc

        def preprocess(self, payload, headers=None):
            started = time.perf_counter()
            try:
                ids = prediction_ids.request_id(headers)
                if isinstance(payload, InferRequest):
                    columns = parser.from_v2(payload.inputs, payload.id)
                    wanted = requested_outputs(payload, names)
                    parsed = "v2", (payload.id or ids, ids), columns, started, wanted
                else:
                    if isinstance(payload, bytes):  # a JSON type KServe does not know (with a charset, ...)
                        payload = parse_json_body(payload)
                    parsed = "v1", (ids, ids), parser.from_v1(payload), started, None
            except PayloadError as exc:
                raise ClientError(str(exc)) from None
            fault.strike("preprocess")
            return parsed

        def predict(self, parsed, headers=None, response_headers=None):
            protocol, (response_id, request_id), columns, started, wanted = parsed
            fault.strike("predict")
            served = answers(spec, loaded.score(columns))
            n = len(served.score)
            rows_total.inc(n)
            score_hist.observe_many(served.score)
            duration.observe(time.perf_counter() - started)
            ids = prediction_ids.prediction_ids(request_id, n)
            if response_headers is not None:
                response_headers[prediction_ids.HEADER] = request_id
            if protocol == "v2":
                use_binary, requested = wanted
                return InferResponse(
                    response_id=response_id,
                    model_name=self.name,
                    model_version=loaded.version,
                    infer_outputs=[
                        InferOutput(o["name"], [n, *o["shape"][1:]], o["datatype"], data)
                        for o, data in zip(output_types, render_v2(served, ids), strict=True)
                    ],
                    use_binary_outputs=use_binary,
                    requested_outputs=requested,
                )
            return {"id": request_id, "model_version": loaded.version, "predictions": render_v1(served, ids)}

    return ShepherdModel(name, return_response_headers=True)


def output_tensor_types(spec: ModelSpec) -> list[dict]:
    """A V2 answer's output tensors, in order, as the model metadata lists them: binary `probability`
    (of the positive class) and `label`; multiclass `label` and `probabilities` ([rows, classes], columns
    in the order of target.classes); regression `value`; every task `prediction_id`."""
    ids = {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]}
    label = {"name": "label", "datatype": "BYTES", "shape": [-1]}
    if spec.task == "binary":
        return [{"name": "probability", "datatype": "FP32", "shape": [-1]}, label, ids]
    if spec.task == "multiclass":
        return [label, {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(spec.target.classes)]}, ids]
    return [{"name": "value", "datatype": "FP32", "shape": [-1]}, ids]


def output_names(spec: ModelSpec) -> tuple[str, ...]:
    """What a V2 answer holds, in this order."""
    return tuple(o["name"] for o in output_tensor_types(spec))


def answer_renderers(spec: ModelSpec):
    """(V1, V2) renderers of a batch's answers: V1 one object per row; V2 each output tensor's data (flat,
    row-major) in the order of `output_tensor_types`."""
    if spec.task == "binary":

        def v1(served, ids):
            probabilities = served.score.tolist()  # Python floats: cheaper to serialise than numpy scalars
            return [
                {"id": i, "label": lab, "probability": p}
                for i, lab, p in zip(ids, served.labels, probabilities, strict=True)
            ]

        def v2(served, ids):
            return [served.score.tolist(), served.labels, ids]

    elif spec.task == "multiclass":
        classes = spec.target.classes

        def v1(served, ids):
            rows = served.probabilities.tolist()
            return [
                {"id": i, "label": lab, "probabilities": dict(zip(classes, p, strict=True))}
                for i, lab, p in zip(ids, served.labels, rows, strict=True)
            ]

        def v2(served, ids):
            return [served.labels, served.probabilities.reshape(-1).tolist(), ids]

    else:

        def v1(served, ids):
            return [{"id": i, "value": v} for i, v in zip(ids, served.score.tolist(), strict=True)]

        def v2(served, ids):
            return [served.score.tolist(), ids]

    return v1, v2


def requested_outputs(request, names: tuple[str, ...]) -> tuple[bool, list | None]:
    """A V2 request's output choices -> (`use_binary_outputs`, `requested_outputs`) for KServe's InferResponse.

    The binary tensor extension: `parameters.binary_data_output` asks for every output as raw bytes after
    the JSON header, an output's own `parameters.binary_data` overrides it. KServe reads only the latter
    once outputs are named, so each requested output gets its effective flag spelled out. Raises a
    PayloadError naming the field for an unknown or repeated output or a flag that is not a boolean."""
    from kserve.protocol.infer_type import RequestedOutput

    parameters = request.parameters
    if parameters is not None and not isinstance(parameters, dict):
        raise PayloadError(f"parameters: expected an object, got {type(parameters).__name__}")
    default = _flag((parameters or {}).get("binary_data_output", False), "parameters.binary_data_output")
    if not request.request_outputs:  # absent or [] : every output
        return default, None
    requested, seen = [], set()
    for i, output in enumerate(request.request_outputs):
        name = output.name
        if not isinstance(name, str) or name not in names:
            raise PayloadError(f"outputs[{i}].name: expected one of {list(names)}, got {str(name)[:80]!r}")
        if name in seen:
            raise PayloadError(f"outputs[{name}]: requested twice")
        seen.add(name)
        own = output.parameters
        if own is not None and not isinstance(own, dict):
            raise PayloadError(f"outputs[{name}].parameters: expected an object, got {type(own).__name__}")
        field = f"outputs[{name}].parameters.binary_data"
        binary = _flag(own["binary_data"], field) if own and "binary_data" in own else default
        requested.append(RequestedOutput(name, {"binary_data": binary}))
    return default, requested


def _flag(value, field: str) -> bool:
    if not isinstance(value, bool):
        raise PayloadError(f"{field}: expected true or false, got {str(value)[:80]!r}")
    return value


def parse_json_body(body: bytes) -> object:
    """A request body KServe left unread -> its JSON value, or a PayloadError naming `body`."""
    import orjson

    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"body: not valid JSON ({exc})") from None


def count_outcomes(metrics: PredictorMetrics, loaded: LoadedVersion, role: str):
    """`count(outcome)` for `shepherd_predictor_requests_total` of the served version."""
    labels = {"model": loaded.spec.name, "version": loaded.version, "role": role}
    counters = {o: metrics.requests.labels(**labels, outcome=o) for o in OUTCOMES}

    def count(outcome: str) -> None:
        counters[outcome].inc()

    return count


SERVER_EXTENSIONS = ["binary_tensor_data"]  # OIP extensions served; not KServe's model repository (refused)


def serve_metadata(app, model, loaded: LoadedVersion) -> None:
    """`GET /v2/models/<name>` with the served version (KServe's own answer leaves `versions` empty);
    the inputs and outputs are the model's `get_input_types`/`get_output_types`, as KServe's are.
    `GET /v2` lists the extensions really served: KServe's names its model repository extension, which
    `serving.http_contract` refuses, and not the binary tensor extension, which works."""
    from importlib.metadata import version

    from kserve.constants.constants import KSERVE_MODEL_SERVER_NAME
    from starlette.responses import JSONResponse

    server = {"name": KSERVE_MODEL_SERVER_NAME, "version": version("kserve"), "extensions": SERVER_EXTENSIONS}

    async def server_metadata():
        return JSONResponse(server)

    async def metadata():
        return JSONResponse(
            {
                "name": model.name,
                "versions": [loaded.version],
                "platform": SERVING_PLATFORMS[loaded.serving_format],
                "inputs": model.get_input_types(),
                "outputs": model.get_output_types(),
            }
        )

    # Routes match in order, and KServe adds its routers when the server starts, after this one.
    app.add_api_route("/v2", server_metadata, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"/v2/models/{model.name}", metadata, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        f"/v2/models/{model.name}/versions/{loaded.version}", metadata, methods=["GET"], include_in_schema=False
    )


def feast_lookup(repo: str, spec: ModelSpec):
    """Entity keys -> feature dicts from the Feast online store (None for keys it does not know)."""
    from components import features

    store = features.open_store(repo)
    names = spec.feature_names

    def lookup(keys: list) -> list[dict | None]:
        frame = features.online_features(store, spec, keys)
        found = []
        for _, row in frame.iterrows():
            values = {n: (None if _missing(row[n]) else row[n]) for n in names}
            found.append(None if all(v is None for v in values.values()) else values)
        return found

    return lookup


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


LOOPBACK = "127.0.0.1"
DEFAULT_HTTP_HOST = "0.0.0.0"  # what a container needs (KServe's own, hard-coded choice)


def predictor_command(
    name: str,
    model_uri: str,
    tracking_uri: str,
    port: int,
    role: str = "champion",
    *extra: str,
    host: str = LOOPBACK,
) -> list[str]:
    """The command line that serves `model_uri` as `name` on `host:port` (for process managers and
    tests, on this machine: loopback unless told otherwise)."""
    return [
        sys.executable,
        "-m",
        "serving.predictor",
        f"--model_name={name}",
        f"--model_uri={model_uri}",
        f"--tracking_uri={tracking_uri}",
        f"--role={role}",
        f"--http_host={host}",
        f"--http_port={port}",
        *extra,
    ]


def bound_model_server(host: str, **kwargs):
    """A `kserve.ModelServer` whose REST server listens on `host`.

    KServe hard-codes `host="0.0.0.0"` in the uvicorn config its RESTServer builds inside `start`, and
    has no flag for it. `start` builds that server, then calls `setup_event_loop`, then runs it; uvicorn
    reads `config.host` only when it binds, so setting it in `setup_event_loop` decides the address."""
    import kserve

    class BoundModelServer(kserve.ModelServer):
        def setup_event_loop(self):
            if self._rest_server is None:  # several workers: KServe binds in another way
                raise RuntimeError("--http_host needs the single-process REST server (workers=1)")
            self._rest_server.config.host = host
            super().setup_event_loop()

    return BoundModelServer(**kwargs)


def drop_request_timing(app) -> None:
    """Leave out KServe's TimingMiddleware, which exists only to print the `kserve.trace` line per request.

    KServe adds it whatever `enable_latency_logging` says, and it reads the process's CPU time
    (getrusage) twice per request: a quarter of the server's CPU under load here, for a line that the
    quiet logging drops anyway. Starlette builds the middleware stack on the first ASGI call (after
    KServe registered its middleware), so the stack is filtered at that moment."""
    from timing_asgi import TimingMiddleware

    build = app.build_middleware_stack

    def build_without_timing():
        app.user_middleware = [m for m in app.user_middleware if m.cls is not TimingMiddleware]
        return build()

    app.build_middleware_stack = build_without_timing


def install_event_loop(choice: str) -> str:
    """Make KServe's `--event-loop` flag count: "auto" (its default) and "uvloop" mean uvloop.

    KServe hands the flag to uvicorn's config, but `ModelServer.start` runs `asyncio.run` itself, so
    the server always ends up on the standard asyncio loop. Setting the policy before `start` is what
    puts uvloop under it. Returns the loop in use."""
    if choice == "asyncio":
        return choice
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())  # ModelServer.start asks for the current loop first
    return "uvloop"


def main(argv: list[str] | None = None) -> int:
    from kserve import model_server
    from prometheus_client import REGISTRY

    from serving import http_contract

    parser = argparse.ArgumentParser(
        parents=[model_server.parser], description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_uri", required=True, help="models:/<name>/<version> or models:/<name>@<alias>")
    parser.add_argument("--tracking_uri", default=None, help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]")
    parser.add_argument("--role", default="champion", choices=ROLES)
    parser.add_argument(
        "--http_host",
        default=DEFAULT_HTTP_HOST,
        help=f"address to listen on (default {DEFAULT_HTTP_HOST}, for a container; {LOOPBACK} on a shared machine)",
    )
    parser.add_argument(
        "--model_dir",
        type=Path,
        default=None,
        help="where KServe's storage initializer fetched and verified the version (serving.model_check; the "
        "ServingRuntime passes /mnt/models): loaded from there, not downloaded again; without it, or when it holds "
        "another version, the predictor fetches --model_uri from the registry itself",
    )
    parser.add_argument("--feature_repo", default=None, help="Feast repo for entity-key lookups (optional)")
    parser.add_argument(
        "--log_each_request",
        action="store_true",
        help="KServe's per-request log lines (latency trace + access log) and the middleware that times them; "
        "off by default: they cost about a third of the throughput and the Prometheus metrics carry the same facts",
    )
    parser.add_argument(
        "--fault_error_rate",
        type=float,
        default=float(os.environ.get(ENV_FAULT_ERROR_RATE, "0") or 0),
        help=f"fail this share (0..1) of valid requests with a 500, for rollback drills [env: {ENV_FAULT_ERROR_RATE}]",
    )
    parser.add_argument(
        "--fault_stage",
        default=os.environ.get(ENV_FAULT_STAGE) or "predict",
        help=f"where injected faults happen: {' or '.join(FAULT_STAGES)} (a broken transformation) "
        f"[env: {ENV_FAULT_STAGE}, default predict]",
    )
    args, _ = parser.parse_known_args(argv)
    if not 0.0 <= args.fault_error_rate <= 1.0:
        print(f"error: --fault_error_rate must be within 0..1, got {args.fault_error_rate}", flush=True)
        return 2
    if args.fault_stage not in FAULT_STAGES:
        print(f"error: --fault_stage must be one of {list(FAULT_STAGES)}, got {args.fault_stage!r}", flush=True)
        return 2
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri and not (args.model_dir and model_files.fetched_here(args.model_dir, args.model_uri)):
        print("error: --tracking_uri or MLFLOW_TRACKING_URI is required (or a --model_dir holding it)", flush=True)
        return 2
    try:
        loaded = load_for_serving(tracking_uri, args.model_uri, args.model_dir)
    except ShepherdError as exc:
        print(f"error: {exc}", flush=True)
        return exc.exit_code
    lookup = feast_lookup(args.feature_repo, loaded.spec) if args.feature_repo else None
    metrics = PredictorMetrics.create(REGISTRY, loaded.score_buckets)
    fault = Fault(args.fault_error_rate, args.fault_stage)
    model = make_model(args.model_name, loaded, args.role, metrics, lookup, fault)
    if fault.rate:
        logger.warning("fault injection: %.0f %% of requests will fail with a 500 in %s", 100 * fault.rate, fault.stage)
    model.load()
    http_contract.install(
        model_server.app, args.model_name, count_outcomes(metrics, loaded, args.role), version=loaded.version
    )
    serve_metadata(model_server.app, model, loaded)
    if not args.log_each_request:
        drop_request_timing(model_server.app)
    loop = install_event_loop(args.event_loop)
    server = bound_model_server(
        args.http_host,
        http_port=args.http_port,
        enable_grpc=False,
        workers=1,
        enable_latency_logging=args.log_each_request,
        event_loop=loop,
    )
    if not args.log_each_request and not args.log_config_file:
        # After ModelServer(): it configures KServe's default logging (an access line per request).
        logging.config.dictConfig(yaml.safe_load(QUIET_LOGGING.read_text()))
    # Once logging is configured (ModelServer() does it): a line logged before would be lost.
    logger.info(
        "serving %s v%s (%s, loaded from %s) as %s on %s:%s, %s event loop",
        loaded.spec.name,
        loaded.version,
        loaded.serving_format,
        loaded.source,
        args.role,
        args.http_host,
        args.http_port,
        loop,
    )
    server.start([model])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
