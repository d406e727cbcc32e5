"""Batch encoding of payload-log events: one client's absurd body never costs the other events of its
batch (found by fuzzing through the plane: a 3,000-deep body dropped whole batches)."""

from __future__ import annotations

import base64
import json

import pytest

from serving.payload_logger import Body, PayloadEvent, encode_batch


def _event(event_id: str, data: bytes) -> PayloadEvent:
    return PayloadEvent(
        {"id": event_id, "type": "org.kubeflow.serving.inference.request"}, Body(data, "application/json")
    )


@pytest.mark.parametrize("depth", [900, 990, 3000, 100_000])
def test_a_deeply_nested_body_is_logged_as_base64_and_the_batch_survives(depth):
    deep = b"[" * depth + b"]" * depth
    good = b'{"instances": [{"tenure": 1}]}'
    decoded = json.loads(encode_batch([_event("1", good), _event("2", deep), _event("3", good)]))
    assert [e["id"] for e in decoded] == ["1", "2", "3"]
    assert decoded[0]["data"] == decoded[2]["data"] == {"instances": [{"tenure": 1}]}
    second = decoded[1]
    assert ("data" in second) or base64.b64decode(second["data_base64"]) == deep


def test_a_body_that_is_not_json_is_logged_as_base64():
    (event,) = json.loads(encode_batch([_event("1", b"{nope")]))
    assert base64.b64decode(event["data_base64"]) == b"{nope"


def _strict(constant: str):
    raise AssertionError(f"{constant} is not JSON")


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [{"tenure": NaN}]}',
        b'{"instances": [{"tenure": 1e400}]}',
        b"[" + b"9" * 400 + b"]",
        b'\xef\xbb\xbf{"instances": []}',
        b'{"x": "\\ud800"}',
        b"\xff\xfe",
    ],
)
def test_a_body_strict_json_cannot_carry_goes_as_base64_and_the_batch_stays_strict_json(body):
    good = b'{"instances": [{"tenure": 1}]}'
    decoded = json.loads(encode_batch([_event("1", body), _event("2", good)]), parse_constant=_strict)
    assert base64.b64decode(decoded[0]["data_base64"]) == body
    assert decoded[1]["data"] == {"instances": [{"tenure": 1}]}
