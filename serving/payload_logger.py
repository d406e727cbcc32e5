"""The local plane's payload logger: KServe's logger CloudEvents, off the request path and bounded.

For every prediction it routes, the plane logs a request event and a response event (as KServe's
logger does; `spec.predictor.logger.mode` picks which), with the same `id`. Unlike KServe's logger,
which logs a response only for a 200, every response is logged and carries its HTTP status in the
`statuscode` extension attribute, so a receiver can pair every request and drop rejected ones at once.
A receiver that ignores the attribute sees KServe's events plus error responses.

`submit` never waits: it puts the events on the logger URL's bounded queue, and an event that does not
fit is dropped and counted (`shepherd_plane_payload_events_dropped_total{reason="queue_full"}`). One
task per logger URL delivers, with this module's own HTTP client (never the one that proxies
predictions):
- to the plane's own drift service in CloudEvents *batch* mode: one POST of everything queued (up to
  `BATCH_MAX` events) as a JSON array of structured events, `application/cloudevents-batch+json`. A
  batch waits up to `BATCH_LINGER_SECONDS` for more events, or until half the queue (at most
  `BATCH_MAX`) is waiting, so at a low request rate the plane does not make one extra HTTP call per
  prediction (a POST per prediction cost a single client 0.6 ms per request on these machines; the
  drift windows are seconds long, 50 ms of delay is nothing to them), and lingering never fills a
  queue into dropping;
- to any other URL in KServe's *binary* mode, one POST per event (ce-* headers, the payload as the
  body), which is what a receiver written for KServe's logger expects.
A destination that refuses or hangs only delays and drops its own events (`reason="undelivered"`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from prometheus_client import CollectorRegistry, Counter

from monitoring.metrics import (
    PLANE_PAYLOAD_DROP_REASONS,
    PLANE_PAYLOAD_EVENTS_DELIVERED_TOTAL,
    PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL,
)
from monitoring.payload_log import (
    BATCH_CONTENT_TYPE,
    HEADER_LENGTH_ATTRIBUTE,
    MODEL_ID_ATTRIBUTE,
    REQUEST_EVENT,
    RESPONSE_EVENT,
    STATUS_ATTRIBUTE,
)

logger = logging.getLogger("shepherd.plane.payload")

BATCH_MAX = 256  # events per batch POST
BATCH_LINGER_SECONDS = 0.05  # a batch waits this long for more events, unless enough are already waiting
DELIVERY_TIMEOUT_SECONDS = 5.0
DRAIN_SECONDS = 2.0  # at shutdown, time given to the queues to empty
WARN_EVERY_SECONDS = 60.0  # one warning per destination per minute, however many events fail
DEFAULT_QUEUE_SIZE = 1000  # events waiting per logger URL
ENV_QUEUE_SIZE = "SHEPHERD_PAYLOAD_QUEUE_SIZE"
_OFFLOAD_BYTES = 64 * 1024  # batches larger than this are encoded in a worker thread


@dataclass(frozen=True)
class Body:
    """One side of an exchange: the bytes, their content type and, for a binary tensor body, the
    length of its JSON header (`inference-header-content-length`)."""

    data: bytes
    content_type: str | None
    json_length: str | None = None


@dataclass(frozen=True)
class PayloadEvent:
    attributes: dict[str, str | int]  # CloudEvents context attributes and extensions, without data
    body: Body

    @property
    def content_type(self) -> str:
        return self.body.content_type or "application/octet-stream"

    def binary(self) -> tuple[dict[str, str], bytes]:
        """KServe's binary mode: attributes as ce-* headers, the payload as the body."""
        headers = {f"ce-{name}": str(value) for name, value in self.attributes.items()}
        headers["content-type"] = self.content_type
        return headers, self.body.data

    def structured(self) -> bytes:
        """The JSON event format, encoded: `data` for a JSON payload that strict JSON can carry (orjson:
        no NaN, no 400-digit integers, nesting within its limit), `data_base64` for anything else, so
        the receiver gets the client's bytes either way."""
        event = {**self.attributes, "datacontenttype": self.content_type}
        if self.body.json_length is None:
            try:
                return orjson.dumps({**event, "data": orjson.loads(self.body.data)})
            # Not JSON, not strict JSON, or nested deeper than orjson encodes: the client's bytes as they came.
            except (orjson.JSONDecodeError, orjson.JSONEncodeError):
                pass
        event["data_base64"] = base64.b64encode(self.body.data).decode()
        return orjson.dumps(event)


def encode_batch(events: list[PayloadEvent]) -> bytes:
    """A JSON array of structured events. Each is encoded on its own: a body nested too deeply to encode
    again goes as `data_base64` instead of failing the whole batch (other clients' events). orjson,
    because the plane encodes every prediction's two bodies: 56 vs 261 µs per 32-row event with `json`."""
    return b"[" + b",".join(event.structured() for event in events) + b"]"


def inference_events(
    mode: str,
    *,
    event_id: str,
    source: str,
    inference_service: str,
    namespace: str,
    endpoint: str,
    model_id: str,
    request: Body,
    response: Body,
    status: int,
) -> list[PayloadEvent]:
    """The request and/or response event of one prediction, as `mode` (all | request | response) says."""
    common: dict[str, str | int] = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "time": datetime.now(UTC).isoformat(),
        "inferenceservicename": inference_service,
        "namespace": namespace,
        "component": "predictor",
        "endpoint": endpoint,
        MODEL_ID_ATTRIBUTE: model_id,
    }
    events = []
    for kind, body, wanted, extra in (
        (REQUEST_EVENT, request, mode in ("all", "request"), {}),
        (RESPONSE_EVENT, response, mode in ("all", "response"), {STATUS_ATTRIBUTE: status}),
    ):
        if not wanted:
            continue
        attributes = {**common, "type": kind, **extra}
        if body.json_length is not None:
            attributes[HEADER_LENGTH_ATTRIBUTE] = body.json_length
        events.append(PayloadEvent(attributes, body))
    return events


class _Destination:
    def __init__(self, url: Callable[[], str], batch: bool, queue_size: int):
        self.url, self.batch = url, batch
        self.queue: asyncio.Queue[PayloadEvent] = asyncio.Queue(maxsize=queue_size)
        self.enough = min(BATCH_MAX, max(1, queue_size // 2))  # events that end a batch's wait
        self.enough_waiting = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.last_warning = 0.0

    def put(self, event: PayloadEvent) -> None:
        """Raises asyncio.QueueFull."""
        self.queue.put_nowait(event)
        if self.queue.qsize() >= self.enough:
            self.enough_waiting.set()

    async def linger(self) -> None:
        """Wait for `enough` events to be queued, at most `BATCH_LINGER_SECONDS`."""
        self.enough_waiting.clear()  # before looking at the queue: a put after the look sets it again
        if self.queue.qsize() < self.enough:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.enough_waiting.wait(), BATCH_LINGER_SECONDS)


class PayloadLogger:
    """Bounded queues, one delivery task per logger URL.

    `batch_target(url)` names the URL to deliver `url`'s events to in batch mode, or None to deliver
    them to `url` itself in KServe's binary mode."""

    def __init__(
        self,
        registry: CollectorRegistry,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        batch_target: Callable[[str], Callable[[], str] | None] = lambda _url: None,
    ):
        if queue_size < 1:
            raise ValueError(f"queue_size: must be at least 1, got {queue_size}")
        self.queue_size = queue_size
        self.batch_target = batch_target
        self.destinations: dict[str, _Destination] = {}
        self.client = None
        dropped = Counter(
            PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL.removesuffix("_total"),
            "Payload-log events the plane did not deliver.",
            ["reason"],
            registry=registry,
        )
        self.dropped = {reason: dropped.labels(reason=reason) for reason in PLANE_PAYLOAD_DROP_REASONS}
        self.delivered = Counter(
            PLANE_PAYLOAD_EVENTS_DELIVERED_TOTAL.removesuffix("_total"),
            "Payload-log events a logger URL accepted.",
            registry=registry,
        )

    def submit(self, url: str, events: list[PayloadEvent]) -> None:
        """Queue `events` for `url` without waiting; what does not fit is dropped and counted."""
        destination = self.destinations.get(url)
        if destination is None:
            target = self.batch_target(url)
            destination = _Destination(target or (lambda: url), target is not None, self.queue_size)
            destination.task = asyncio.create_task(self._deliver(destination))
            self.destinations[url] = destination
        for event in events:
            try:
                destination.put(event)
            except asyncio.QueueFull:
                self.dropped["queue_full"].inc()

    async def _deliver(self, destination: _Destination) -> None:
        import httpx

        if self.client is None:
            self.client = httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_SECONDS)
        queue = destination.queue
        while True:
            events = [await queue.get()]
            if destination.batch:
                await destination.linger()
                self._take_queued(queue, events)
            try:
                if destination.batch:
                    await self._post_batch(destination, events)
                else:
                    await self._post_binary(destination, events[0])
            finally:
                for _ in events:
                    queue.task_done()

    @staticmethod
    def _take_queued(queue: asyncio.Queue[PayloadEvent], events: list[PayloadEvent]) -> None:
        while len(events) < BATCH_MAX and not queue.empty():
            events.append(queue.get_nowait())

    async def _post_batch(self, destination: _Destination, events: list[PayloadEvent]) -> None:
        size = sum(len(e.body.data) for e in events)
        try:
            body = await asyncio.to_thread(encode_batch, events) if size > _OFFLOAD_BYTES else encode_batch(events)
            response = await self.client.post(
                destination.url(), content=body, headers={"content-type": BATCH_CONTENT_TYPE}
            )
            response.raise_for_status()
        except Exception as exc:  # best effort: a logger must never fail or slow a prediction
            self._undelivered(destination, len(events), exc)
            return
        self.delivered.inc(len(events))

    async def _post_binary(self, destination: _Destination, event: PayloadEvent) -> None:
        headers, body = event.binary()
        try:
            response = await self.client.post(destination.url(), content=body, headers=headers)
            response.raise_for_status()
        except Exception as exc:
            self._undelivered(destination, 1, exc)
            return
        self.delivered.inc()

    def _undelivered(self, destination: _Destination, count: int, exc: Exception) -> None:
        self.dropped["undelivered"].inc(count)
        now = time.monotonic()
        if now - destination.last_warning >= WARN_EVERY_SECONDS:  # a dead logger must not flood the log
            destination.last_warning = now
            logger.warning(
                "payload logger %s: %r (further failures counted, logged once a minute)", destination.url(), exc
            )

    async def close(self) -> None:
        """Give the queues `DRAIN_SECONDS` to empty, then stop delivering."""
        pending = [d.queue.join() for d in self.destinations.values()]
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending), DRAIN_SECONDS)
        for destination in self.destinations.values():
            if destination.task is not None:
                destination.task.cancel()
        for destination in self.destinations.values():
            if destination.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await destination.task
        if self.client is not None:
            await self.client.aclose()
