"""Issue 7: the stream key that decides a request's replica, on its own (no Ray, no vLLM)."""

from __future__ import annotations

import json

import pytest

from vllm_vtprune.serve.routing import STREAM_HEADER, stream_key


def body(stream_id=None, **extra) -> bytes:
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    if stream_id is not None:
        payload["mm_processor_kwargs"] = {"vtprune": {"method": "stc", "stream_id": stream_id}}
    return json.dumps(payload).encode()


def test_stream_key_comes_from_the_body_the_plugin_already_reads():
    assert stream_key({}, body("cam-1")) == "cam-1"


def test_header_overrides_the_body_and_works_without_one():
    assert stream_key({STREAM_HEADER: "route-me"}, body("cam-1")) == "route-me"
    assert stream_key({STREAM_HEADER: "route-me"}, b"") == "route-me"


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[1, 2]", body(), body(mm_processor_kwargs={"fps": 2}),
    json.dumps({"mm_processor_kwargs": {"vtprune": {"stream_id": ""}}}).encode(),
    json.dumps({"mm_processor_kwargs": {"vtprune": {"stream_id": 7}}}).encode(),
    json.dumps({"mm_processor_kwargs": {"vtprune": "stream_id"}}).encode(),
    b"\xff\xfe stream_id",
])
def test_no_stream_key_means_any_replica(raw):
    assert stream_key({STREAM_HEADER: "  "}, raw) is None

