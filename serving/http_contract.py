"""The predictor's HTTP error contract, installed on KServe's FastAPI app without changing KServe.

- Every answer that is not a success is `{"error": "<field>: <rule>"}`. For a 4xx the field is `body`,
  a header (`content-type`, `inference-header-content-length`) or a path into the JSON body
  (`instances[0].tenure`, `inputs[contract].data[3]`, `id`, `parameters.x`); `path` and `method` for a
  route that does not exist. A 5xx names the server's part that failed.
- A client's mistake is a 4xx: 415 for a body that is not JSON, 413 for one over `MAX_BODY_BYTES`,
  400 for the rest (KServe's own messages are reworded to name the field).
- An unexpected exception is a 500 answered on a connection that stays open. uvicorn closes the
  connection after an exception escapes the app, and a client reusing it (the local plane's router)
  then fails its next, unrelated request.
- Every answer to an inference request for the served model is counted by outcome (`ok`, `invalid`,
  `error`) from the status actually sent, so no 5xx escapes the error-rate gate whatever raised it.
- KServe's model repository extension (`POST /v2/repository/models/<m>/load|unload`) is not served: a
  predictor serves the one registered version it started with, and that API would let anyone on the
  network unload it without a credential (predictions 404 while `/v2/health/ready` still says 200).
  Every method on `/v2/repository/...` is a 404 in the error shape, answered before KServe's routes.

KServe 0.21 registers its exception handlers when the server starts, after `install` ran, so the
handlers replacing KServe's are put in place when Starlette builds the middleware stack (at the first
request), after every registration.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

from fastapi.exceptions import RequestValidationError
from kserve.errors import InferenceError, InvalidInput, ModelNotFound
from starlette.exceptions import HTTPException
from starlette.responses import Response

logger = logging.getLogger("shepherd.predictor")

MAX_BODY_BYTES = 64 * 2**20
BINARY_HEADER = "inference-header-content-length"  # the OIP binary tensor extension (tritonclient's default)
BINARY_HEADER_KEY = BINARY_HEADER.encode()
OCTET_STREAM = "application/octet-stream"
JSON_TYPES = frozenset({"application/json", OCTET_STREAM})  # KServe's V1 reads octet-stream as JSON too
_DIGITS = re.compile(r"[0-9]{1,15}")
REPOSITORY_PREFIX = "/v2/repository/"  # KServe's model repository extension: refused


class ClientError(InvalidInput):
    """A request the predictor refuses, with a message that already names the field; served with `status`."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.status = status


def error_response(status: int, message: str) -> Response:
    """`{"error": message}`; ASCII-escaped JSON, so any text a client sent (a lone surrogate) is encodable."""
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


def is_json_type(content_type: str) -> bool:
    """`application/json`, `application/<x>+json` or octet-stream, with or without parameters (charset=...)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


# KServe's own InvalidInput messages (kserve/protocol/dataplane.py, infer_type.py) -> the contract.
_KSERVE_MESSAGES = (
    ("Unrecognized request format: ", "body: not valid JSON ({rest})"),
    (
        "received byte inputs",
        'body: expected a JSON object like {{"inputs": [...]}} (binary tensor data needs the '
        f"{BINARY_HEADER} header)",
    ),
)


def reworded(reason: str) -> str:
    """A message KServe raised -> one that starts with the field it is about."""
    for prefix, template in _KSERVE_MESSAGES:
        if reason.startswith(prefix):
            return template.format(rest=reason.removeprefix(prefix))
    return f"body: {reason}"


async def _client_error(_request, exc: ClientError) -> Response:
    return error_response(exc.status, exc.reason)


async def _kserve_invalid_input(_request, exc: InvalidInput) -> Response:
    return error_response(400, reworded(str(exc)))


async def _inference_error(_request, exc: InferenceError) -> Response:
    return error_response(500, str(exc))


async def _model_not_found(request, exc: ModelNotFound) -> Response:
    return error_response(404, f"path: {exc} ({request.url.path})")


async def _http_exception(request, exc: HTTPException) -> Response:
    if exc.status_code == 400:  # FastAPI: a body json.loads failed on (nested too deep, a 5000-digit number)
        cause = exc.__cause__
        message = f"body: could not be read as JSON ({_named(cause) if cause else exc.detail})"
    elif exc.status_code == 404:
        message = f"path: {request.url.path} not found"
    elif exc.status_code == 405:
        message = f"method: {request.method} not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    response = error_response(exc.status_code, message)
    response.headers.update(exc.headers or {})  # e.g. 405's Allow
    return response


async def _schema_error(_request, exc: RequestValidationError) -> Response:
    """FastAPI answers a V2 body that breaks the OIP schema with a 422 listing internal alternatives;
    answer 400 naming the fields, like every other client mistake."""
    problems = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            where = err.get("loc", ("body", "?"))[-1]
            problems.append(f"body: not valid JSON ({err.get('ctx', {}).get('error', 'decode error')} at char {where})")
            continue
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "InferenceRequest")]
        if loc == ["bytes"]:  # FastAPI's alternative reading of the body, not the client's field
            continue
        problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    return error_response(400, "; ".join(problems) or "body: invalid request")


HANDLERS = {
    ClientError: _client_error,
    InvalidInput: _kserve_invalid_input,
    InferenceError: _inference_error,
    ModelNotFound: _model_not_found,
    HTTPException: _http_exception,
    RequestValidationError: _schema_error,
}


class ContractMiddleware:
    """Pure ASGI (no per-request task): refuses bodies that are too large or not JSON before KServe
    reads them, answers exceptions that escaped every handler, and counts the served model's answers."""

    def __init__(
        self, app, counted_paths: frozenset[str], count: Callable[[str], None], versioned: tuple[str, str] = ("", "")
    ):
        self.app = app
        self.counted_paths = counted_paths
        self.count = count
        # (`/v2/models/<name>/versions/`, served version): KServe answers any versioned infer 501;
        # the served version's is its plain infer, any other version a 404 naming what is served.
        self.versions_prefix, self.version = versioned

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"].startswith(REPOSITORY_PREFIX):
            return await _repository_refused(scope["path"])(scope, receive, send)
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if self.versions_prefix and scope["path"].startswith(self.versions_prefix) and scope["path"].endswith("/infer"):
            asked = scope["path"][len(self.versions_prefix) : -len("/infer")]
            if asked != self.version:
                message = f"path: version {asked[:100]!r} is not served here (this server serves {self.version!r})"
                return await error_response(404, message)(scope, receive, send)
            plain = self.versions_prefix.removesuffix("versions/") + "infer"
            scope = {**scope, "path": plain, "raw_path": plain.encode()}
        counted = scope["path"] in self.counted_paths
        status = 0

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if counted:
                    self.count("ok" if status < 400 else "invalid" if status < 500 else "error")
                _type_binary_answer(message)
            await send(message)

        headers = dict(scope["headers"])
        refusal = _refusal(scope["path"], headers)
        if refusal is not None:
            return await refusal(scope, receive, send_counted)
        if b"content-type" not in headers and BINARY_HEADER_KEY not in headers and scope["path"].startswith("/v2/"):
            # FastAPI reads a body without a content type as bytes, which KServe takes for binary tensors
            # missing their header; an OIP body without that header is JSON (clients such as tritonclient
            # send no content type), as the local plane reads it too.
            scope["headers"] = [*scope["headers"], (b"content-type", b"application/json")]
        received = 0

        async def receive_limited():  # a chunked body has no content-length to check up front
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise HTTPException(413, _TOO_LARGE)
            return message

        try:
            await self.app(scope, receive if b"content-length" in headers else receive_limited, send_counted)
        except Exception as exc:
            if status:  # the answer has started: nothing left to do but let uvicorn close
                raise
            unchecked = _decoded_unchecked(headers)
            if unchecked:
                # KServe decodes these without checking them (a missing key, a size that does not fit
                # the shape, an empty CloudEvent): the model turns its own failures into InferenceError,
                # so what escapes from such a request is the client's.
                response = error_response(400, f"body: {unchecked} does not decode ({_named(exc)})")
            else:
                logger.error("unexpected error answering %s", scope["path"], exc_info=exc)
                response = error_response(500, f"server: {_named(exc)}")
            await response(scope, receive, send_counted)


def _repository_refused(path: str) -> Response:
    return error_response(
        404,
        f"path: {path[:200]} not found (the model repository extension is disabled: this server serves one "
        "registered version, changed by deploying another revision)",
    )


def _type_binary_answer(start: dict) -> None:
    """A binary tensor answer (JSON header, then raw output bytes) says `application/octet-stream`, as
    Triton's does: KServe sends it without a content type."""
    names = [name for name, _ in start.get("headers", ())]
    if BINARY_HEADER_KEY in names and b"content-type" not in names:
        start["headers"] = [*start["headers"], (b"content-type", OCTET_STREAM.encode())]


_TOO_LARGE = f"body: larger than {MAX_BODY_BYTES // 2**20} MiB; send fewer rows per request"


def _refusal(path: str, headers: dict[bytes, bytes]) -> Response | None:
    """The answer for a request refused on its headers alone, or None."""
    length = headers.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return error_response(413, _TOO_LARGE)
    binary = headers.get(BINARY_HEADER_KEY)
    if binary is not None and not _DIGITS.fullmatch(binary.decode("latin-1")):
        return error_response(
            400, f"{BINARY_HEADER}: expected the byte length of the JSON part, got {binary.decode('latin-1')!r}"
        )
    content_type = headers.get(b"content-type")
    if content_type is None:
        return None  # JSON: KServe's V1 reads it so, and the middleware says so to FastAPI for V2
    text = content_type.decode("latin-1")
    if not is_json_type(text):
        return error_response(415, f"content-type: expected application/json, got {text[:80]!r}")
    if binary is None and path.startswith("/v2/") and text.split(";", 1)[0].strip().lower() == OCTET_STREAM:
        return error_response(
            415, f"content-type: {OCTET_STREAM} means binary tensors, which need the {BINARY_HEADER} header"
        )
    return None


_CLOUD_EVENT_HEADERS = (b"ce-specversion", b"ce-source", b"ce-type", b"ce-id")


def _decoded_unchecked(headers: dict[bytes, bytes]) -> str | None:
    """What KServe decodes from this request without checking it first, if anything."""
    if BINARY_HEADER_KEY in headers:
        return "binary tensor request"
    if all(h in headers for h in _CLOUD_EVENT_HEADERS):  # KServe's test for a binary-mode CloudEvent
        return "binary CloudEvent"
    return None


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def install(app, model_name: str, count: Callable[[str], None], version: str = "") -> None:
    """Put the contract on KServe's app for a server serving `model_name` (`version` of it); `count(outcome)`
    is called once per answer to `/v1/models/<name>:predict` and `/v2/models/<name>/infer` (and
    `/v2/models/<name>/versions/<version>/infer`, the same)."""
    paths = frozenset({f"/v1/models/{model_name}:predict", f"/v2/models/{model_name}/infer"})
    versioned = (f"/v2/models/{model_name}/versions/", version) if version else ("", "")
    app.add_middleware(ContractMiddleware, counted_paths=paths, count=count, versioned=versioned)
    build = app.build_middleware_stack

    def build_with_contract():
        for exc_class, handler in HANDLERS.items():
            app.exception_handlers[exc_class] = handler
        return build()

    app.build_middleware_stack = build_with_contract
