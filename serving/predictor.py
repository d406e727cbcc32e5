"""Shepherd's KServe predictor: one registered MLflow version behind `kserve.ModelServer`.

Loading verifies the artifact's sha256 recorded at registration before anything is deserialized, and
prefers the ONNX twin (ONNX Runtime, ~0.1 ms per row) over the scikit-learn pipeline. Every request is
validated against the model's feature spec; a client's mistake is a 400 naming the field, never a 500.

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
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from components import registry
from components.errors import RegistryError, ShepherdError
from components.spec import ModelSpec, parse_spec
from monitoring.metrics import OUTCOMES, ROLES, PredictorMetrics
from serving.payload import PayloadError, PayloadParser, to_model_inputs

logger = logging.getLogger("shepherd.predictor")
QUIET_LOGGING = Path(__file__).with_name("quiet_logging.yaml")


class ModelIntegrityError(ShepherdError):
    """The stored artifact is not the one registered (sha256 mismatch): refuse to load it."""

    exit_code = 8


@dataclass
class LoadedVersion:
    """What serving one version needs: its spec, a scorer, and where it came from."""

    spec: ModelSpec
    version: str
    serving_format: str  # onnx | sklearn
    score: object  # callable: feeds dict -> positive-class probabilities


def parse_model_uri(uri: str) -> tuple[str, str]:
    """`models:/churn/3` or `models:/churn@champion` -> (name, version-or-alias)."""
    if not uri.startswith("models:/"):
        raise RegistryError(f"model_uri {uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    rest = uri.removeprefix("models:/")
    name, sep, ref = rest.partition("@") if "@" in rest else rest.partition("/")
    if not name or not sep or not ref:
        raise RegistryError(f"model_uri {uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    return name, ref


def load_version(tracking_uri: str, model_uri: str) -> LoadedVersion:
    """Resolve, verify and load a registered version."""
    client = registry.connect(tracking_uri)
    name, ref = parse_model_uri(model_uri)
    version = registry.get_version(client, name, ref)
    tags = version.tags
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = client.download_artifacts(version.run_id, registry.SPEC_ARTIFACT, tmp)
        spec = parse_spec(Path(spec_path).read_text(), origin=f"{name} v{version.version} spec")
        if tags.get(registry.TAG_SERVING_FORMAT) == "onnx":
            path = Path(client.download_artifacts(version.run_id, f"{registry.ONNX_DIR}/{registry.ONNX_FILE}", tmp))
            _verify(registry.sha256_file(path), tags.get(registry.TAG_ONNX_SHA256), f"{name} v{version.version} ONNX")
            score = _onnx_scorer(path.read_bytes())
            serving_format = "onnx"
        else:
            logger.warning(
                "%s v%s: serving scikit-learn: %s",
                name,
                version.version,
                tags.get(registry.TAG_ONNX_NOTE, "no ONNX twin"),
            )
            score = _sklearn_scorer(client, version, spec, tmp)
            serving_format = "sklearn"
    return LoadedVersion(spec, str(version.version), serving_format, score)


def _verify(actual: str, recorded: str | None, what: str) -> None:
    if not recorded:
        raise ModelIntegrityError(f"{what}: no sha256 was recorded at registration; refusing to load")
    if actual != recorded:
        raise ModelIntegrityError(
            f"{what}: artifact sha256 {actual[:16]}… differs from the {recorded[:16]}… recorded at registration; "
            "the stored model was changed after registration — refusing to load it"
        )


def _onnx_scorer(model: bytes):
    from components.onnx_export import PROBABILITIES_OUTPUT, session

    sess = session(model)
    outputs = [PROBABILITIES_OUTPUT]

    def score(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return sess.run(outputs, feeds)[0][:, 1]

    return score


def _sklearn_scorer(client, version, spec: ModelSpec, tmp: str):
    import mlflow
    import pandas as pd

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=f"{tmp}/sklearn"))
    _verify(registry.sha256_tree(local), version.tags.get(registry.TAG_MODEL_SHA256), f"v{version.version} model")
    pipeline = mlflow.sklearn.load_model(str(local))
    columns = spec.feature_names

    def score(feeds: dict[str, np.ndarray]) -> np.ndarray:
        frame = pd.DataFrame({c: feeds[c][:, 0] for c in columns})
        return pipeline.predict_proba(frame)[:, 1]

    return score


# Fault injection for rollback drills: this share of requests fails with a 500 after parsing, as a
# broken model would. Set on the predictor container (the local plane passes it through too).
ENV_FAULT_ERROR_RATE = "SHEPHERD_FAULT_ERROR_RATE"
WARMUP_CALLS = 20


def make_model(
    name: str, loaded: LoadedVersion, role: str, metrics: PredictorMetrics, lookup=None, fault_error_rate: float = 0.0
):
    """The `kserve.Model` serving `loaded` under `name` (failing `fault_error_rate` of requests on purpose)."""
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    spec = loaded.spec
    parser = PayloadParser(spec, lookup)
    labels = {"model": spec.name, "version": loaded.version, "role": role}
    requests = {o: metrics.requests.labels(**labels, outcome=o) for o in OUTCOMES}
    duration = metrics.duration.labels(**labels)
    score_hist = metrics.score.labels(**labels)
    rows_total = metrics.rows.labels(**labels)
    positive, negative = spec.target.positive, spec.target.negative

    class ShepherdModel(kserve.Model):
        def load(self) -> bool:
            # Warm up before taking traffic: a runtime's first calls are several times slower, and a
            # canary's first interval would otherwise fail its latency gate on that alone.
            row = {f.name: [f.categories[0] if f.categories else (f.min or 0.0)] for f in spec.features}
            for _ in range(WARMUP_CALLS):
                loaded.score(to_model_inputs(spec, row))
            self.ready = True
            return self.ready

        def preprocess(self, payload, headers=None):
            started = time.perf_counter()
            try:
                if isinstance(payload, InferRequest):
                    return "v2", payload.id, parser.from_v2(payload.inputs), started
                if isinstance(payload, bytes | str):
                    content_type = (headers or {}).get("content-type", "none")
                    raise PayloadError(f"content-type: expected application/json, got {content_type!r}")
                return "v1", None, parser.from_v1(payload), started
            except PayloadError as exc:
                requests["invalid"].inc()
                raise InvalidInput(str(exc)) from None

        def predict(self, parsed, headers=None):
            protocol, request_id, columns, started = parsed
            try:
                if fault_error_rate and random.random() < fault_error_rate:
                    raise RuntimeError(f"injected fault ({ENV_FAULT_ERROR_RATE}={fault_error_rate:g})")
                proba = loaded.score(to_model_inputs(spec, columns))
            except Exception:
                requests["error"].inc()
                raise
            probabilities = proba.tolist()  # Python floats: cheaper to compare and serialise than numpy scalars
            n = len(probabilities)
            rows_total.inc(n)
            score_hist.observe_many(proba)
            requests["ok"].inc()
            duration.observe(time.perf_counter() - started)
            label = [positive if p >= 0.5 else negative for p in probabilities]
            if protocol == "v2":
                return InferResponse(
                    response_id=request_id or str(uuid.uuid4()),
                    model_name=self.name,
                    model_version=loaded.version,
                    infer_outputs=[
                        InferOutput("probability", [n], "FP32", probabilities),
                        InferOutput("label", [n], "BYTES", label),
                    ],
                )
            return {
                "model_version": loaded.version,
                "predictions": [{"label": lab, "probability": p} for lab, p in zip(label, probabilities, strict=True)],
            }

    return ShepherdModel(name)


def feast_lookup(repo: str, spec: ModelSpec):
    """Entity keys -> feature dicts from the Feast online store (None for keys it does not know)."""
    from components import features

    store = features.open_store(Path(repo))
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


def predictor_command(
    name: str, model_uri: str, tracking_uri: str, port: int, role: str = "champion", *extra: str
) -> list[str]:
    """The command line that serves `model_uri` as `name` on `port` (for process managers and tests)."""
    return [
        sys.executable,
        "-m",
        "serving.predictor",
        f"--model_name={name}",
        f"--model_uri={model_uri}",
        f"--tracking_uri={tracking_uri}",
        f"--role={role}",
        f"--http_port={port}",
        *extra,
    ]


def answer_schema_errors_with_400(app) -> None:
    """KServe lets FastAPI answer a V2 body that breaks the OIP schema with a 422 listing internal
    alternatives; answer 400 naming the field, like every other client mistake here."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import ORJSONResponse

    async def handler(_request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "InferenceRequest")]
            if loc == ["bytes"]:  # FastAPI's alternative reading of the body, not the client's field
                continue
            problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
        return ORJSONResponse(status_code=400, content={"error": "; ".join(problems) or "invalid request body"})

    app.add_exception_handler(RequestValidationError, handler)


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
    import kserve
    from kserve import model_server
    from prometheus_client import REGISTRY

    parser = argparse.ArgumentParser(
        parents=[model_server.parser], description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_uri", required=True, help="models:/<name>/<version> or models:/<name>@<alias>")
    parser.add_argument("--tracking_uri", default=None, help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]")
    parser.add_argument("--role", default="champion", choices=ROLES)
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
        help=f"fail this share (0..1) of requests with a 500, for rollback drills [env: {ENV_FAULT_ERROR_RATE}]",
    )
    args, _ = parser.parse_known_args(argv)
    if not 0.0 <= args.fault_error_rate <= 1.0:
        print(f"error: --fault_error_rate must be within 0..1, got {args.fault_error_rate}", flush=True)
        return 2
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        print("error: --tracking_uri or MLFLOW_TRACKING_URI is required", flush=True)
        return 2
    try:
        loaded = load_version(tracking_uri, args.model_uri)
    except ShepherdError as exc:
        print(f"error: {exc}", flush=True)
        return exc.exit_code
    lookup = feast_lookup(args.feature_repo, loaded.spec) if args.feature_repo else None
    metrics = PredictorMetrics.create(REGISTRY)
    model = make_model(args.model_name, loaded, args.role, metrics, lookup, args.fault_error_rate)
    if args.fault_error_rate:
        logger.warning("fault injection: %.0f %% of requests will fail with a 500", 100 * args.fault_error_rate)
    model.load()
    answer_schema_errors_with_400(model_server.app)
    if not args.log_each_request:
        drop_request_timing(model_server.app)
    loop = install_event_loop(args.event_loop)
    logger.info(
        "serving %s v%s (%s) as %s on the %s event loop",
        loaded.spec.name,
        loaded.version,
        loaded.serving_format,
        args.role,
        loop,
    )
    server = kserve.ModelServer(
        http_port=args.http_port,
        enable_grpc=False,
        workers=1,
        enable_latency_logging=args.log_each_request,
        event_loop=loop,
    )
    if not args.log_each_request and not args.log_config_file:
        # After ModelServer(): it configures KServe's default logging (an access line per request).
        logging.config.dictConfig(yaml.safe_load(QUIET_LOGGING.read_text()))
    server.start([model])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
