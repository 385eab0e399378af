"""The stream key of a request: what decides which replica serves it.

Pure Python (no Ray, no vLLM), so the rule can be tested on its own. A request's **stream key** is, in
this order:

1. the ``x-vtprune-stream-id`` HTTP header, if present and non-empty;
2. else ``mm_processor_kwargs.vtprune.stream_id`` of a JSON request body (the same field that makes the
   plugin keep STC / temporal-stage state per stream), so an OpenAI client needs nothing extra;
3. else none: the request may go to any replica.

The ingress hands the key to Ray Serve as the request's ``session_id``; Ray Serve's consistent-hash router
then sends every request of that session to the same replica (see ``deployment``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

STREAM_HEADER = "x-vtprune-stream-id"  # optional routing key; overrides the body's stream_id
REPLICA_HEADER = "x-vtprune-replica"  # set on every response: the Ray Serve replica that served it
STREAM_KEY_HEADER = "x-vtprune-stream-key"  # set on every response that had a stream key


def stream_key(headers: Mapping[str, str], body: bytes | None) -> str | None:
    """The routing key of one HTTP request (see the module docstring); ``headers`` are lower-cased."""
    header = (headers.get(STREAM_HEADER) or "").strip()
    if header:
        return header
    if not body or b"stream_id" not in body:  # cheap pre-check: most bodies carry no stream id
        return None
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return _body_stream_id(payload)


def _body_stream_id(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    mm_kwargs = payload.get("mm_processor_kwargs")
    vtprune = mm_kwargs.get("vtprune") if isinstance(mm_kwargs, dict) else None
    stream_id = vtprune.get("stream_id") if isinstance(vtprune, dict) else None
    return stream_id if isinstance(stream_id, str) and stream_id else None

