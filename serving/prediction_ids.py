"""Prediction ids: every prediction a predictor answers (directly or through the plane) has one, so that
ground truth can later come back for it.

- The request id is the client's `x-request-id` header when it is usable as an id (1-128 characters
  of letters, digits and `._:-`), else a new one (32 hex digits).
- Row `i` of a request's batch is the prediction `<request id>-<i>`.
- The plane decides the request id before it forwards (its payload-log CloudEvents carry it as their
  `id`) and sends it to the predictor as `x-request-id`; the client gets it back as the `x-request-id`
  response header and in the body: V1 `id` and each prediction's `id`; V2 the `prediction_id` output
  tensor (BYTES, one per row, listed in the model's metadata). A V2 response's `id` stays what the Open
  Inference Protocol says (the request body's `id`, else the request id).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

HEADER = "x-request-id"
_USABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(headers: Mapping[str, str] | None) -> str:
    """The id of this request: a usable `x-request-id`, else a new one."""
    given = headers.get(HEADER) if headers is not None else None
    return given if given and _USABLE.fullmatch(given) else uuid.uuid4().hex


def prediction_ids(request: str, rows: int) -> list[str]:
    return [f"{request}-{i}" for i in range(rows)]
