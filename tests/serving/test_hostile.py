"""Issue 11: untrusted clients cannot hurt the server. A bounded hostile suite against the shared servers.

Each test is one batch of requests with the exact status each must get: 400 naming the key for a bad
``mm_processor_kwargs.vtprune`` value (the design's promise), 200 for valid ones, 400 for media vLLM cannot make a
video of (vanilla vLLM's answer, checked side by side in ``test_vanilla_parity.py``). After every batch the server
is healthy and a known-good request gets the same prompt tokens as at the start. Expectations come from the
rules below, never from a recorded run.
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from transformers import AutoConfig

from vllm_vtprune.core import PruneConfig, available_methods
from vllm_vtprune.settings import MAX_STREAM_ID_CHARS, SERVER_ONLY, preset_names
from vllm_vtprune.testing.hostile import NOT_SET, RawChat, long_clip, metric, odd_media
from vllm_vtprune.testing.tiny_qwen3vl import DEFAULT_ARCH
from vllm_vtprune.testing.videos import make_frames, mp4_data_url, write_mp4

HUGE = 10**400  # any JSON integer reaches the server as a Python int
JUNK = {"a": [{"b": None}, 1.5, "x"]}
MEGABYTE = "x" * 2**20
# Every key gets every one of these.
BAD_TYPES: list[Any] = [None, "", False, 0, [], {}, "junk", HUGE, -1, JUNK, MEGABYTE]

# ---- what the design accepts --------------------------------------------------------------------------------


def number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def in_open_unit(v: Any) -> bool:  # (0, 1]
    return number(v) and 0 < v <= 1


def in_unit(v: Any) -> bool:  # [0, 1]
    return number(v) and 0 <= v <= 1


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: any(type(v) is type(c) and v == c for c in choices)


def stream_id_ok(v: Any) -> bool:
    if v is None:
        return True
    if not isinstance(v, str) or not 0 < len(v) <= MAX_STREAM_ID_CHARS:
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


METHODS = available_methods()
# (method, option) -> whether a value is valid; the methods' documented option types and ranges.
METHOD_OPTIONS: dict[tuple[str, str], Callable[[Any], bool]] = {
    ("vcast", "temperature"): lambda v: number(v) and v > 0,
    ("stc", "strategy"): one_of("gaussian", "dual_anchor"),
    ("stc", "channel_keep_ratio"): in_open_unit,
    ("stc", "alpha"): in_unit,
    ("stc", "chunk_slices"): lambda v: integer(v) and v >= 0,
    ("mssavt", "mask"): one_of("checkerboard", "greedy"),
    ("mssavt", "parity"): one_of(0, 1),
    ("mssavt", "alternate_parity"): one_of(True, False),
    ("mssavt", "temporal"): one_of("dtd", "dycoke", "evs", "none"),
    ("mssavt", "temporal_share"): in_unit,
}
CACHER_KEYS: dict[str, Callable[[Any], bool]] = {
    "enabled": one_of(True, False),
    "recompute_ratio": in_open_unit,
    "refresh_interval": lambda v: integer(v) and v >= 1,
}


def test_the_rules_cover_every_option():
    from dataclasses import fields

    from vllm_vtprune.core import get_method
    from vllm_vtprune.vision.cacher_config import CacherConfig

    assert {(m, f.name) for m in METHODS for f in fields(get_method(m).Options)} == set(METHOD_OPTIONS)
    assert {f.name for f in fields(CacherConfig)} == set(CACHER_KEYS)


# ---- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(videos) -> str:
    return mp4_data_url(videos["near_static"])


@pytest.fixture(scope="module")
def slice_tokens(tiny_model, videos) -> int:
    """LLM tokens per temporal slice of the 256x256 clips (they keep their size: the pixel budget allows it)."""
    vision = AutoConfig.from_pretrained(tiny_model).vision_config
    side = 256 // (vision.patch_size * vision.spatial_merge_size)
    return side * side


def _known_good(raw: RawChat, clip: str) -> list[int]:
    reply = raw.ask([clip], "Describe the clip.", return_token_ids=True)
    assert reply.status == 200, reply.body
    return reply.body["prompt_token_ids"]


class Guard:
    """The server's state at the start of a module, and the check after each batch."""

    def __init__(self, raw: RawChat, clip: str) -> None:
        self.raw, self.clip = raw, clip
        self.prompt = _known_good(raw, clip)

    def still_serving(self) -> None:
        assert self.raw.health() == 200
        assert _known_good(self.raw, self.clip) == self.prompt


@pytest.fixture(scope="module")
def raw(servers, tiny_model):
    """A client of the dense model's plugin server, for the whole module (the server outlives it)."""
    client = RawChat(servers.get(DEFAULT_ARCH, "plugin").url, tiny_model)
    yield client
    client.close()


@pytest.fixture(scope="module")
def guard(raw, clip) -> Guard:
    return Guard(raw, clip)


def _check(replies: list[tuple[str, Any, int, str | None]]) -> None:
    """``(case, reply, expected status, text the error must hold)``: all mismatches in one assertion."""
    wrong = [f"{case}: got {reply.status} {reply.message[:160]!r}, expected {status} naming {needle!r}"
             for case, reply, status, needle in replies
             if reply.status != status or (status == 400 and needle is not None and needle not in reply.message)]
    assert not wrong, "\n".join(wrong)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 40 else text[:40] + "..."


# ---- batches ----------------------------------------------------------------------------------------------


def test_odd_and_corrupt_media(raw, guard, tmp_path_factory):
    """Every odd video under the server's method and two others; legitimate odd grids never make a method or
    the tower's reuse fall back."""
    media = odd_media(tmp_path_factory.mktemp("odd-media"))
    before = raw.http.get("/metrics").text
    replies = []
    for vtprune in (NOT_SET, {"method": "stc", "retention": 0.3, "stream_id": "odd"},
                    {"method": "mssavt", "retention": 0.2, "cacher": {"enabled": True}}):
        for m in media:
            reply = raw.ask([m.url], vtprune=vtprune)
            replies.append((f"{m.name} {_show(vtprune)}", reply, 200 if m.decodable else 400, None))
    _check(replies)
    after = raw.http.get("/metrics").text
    for name in ("vtprune:selection_fallbacks_total", "vtprune:tower_fallbacks_total"):
        assert metric(after, name) == metric(before, name), name
    guard.still_serving()


def _value_cases(slice_tokens: int) -> list[tuple[str, Any, bool, str]]:
    """(case, override, valid, key an error must name) for every top-level key and value."""
    rules: dict[str, tuple[Callable[[Any], bool], list[Any]]] = {
        "method": (lambda v: v in METHODS, ["stc", "none"]),
        "retention": (in_open_unit, [1, 0.3]),
        "min_tokens_per_slice": (lambda v: integer(v) and 0 <= v <= slice_tokens, [slice_tokens, slice_tokens + 1]),
        "options": (lambda v: v is None or v == {}, [{"temperature": 2}]),
        "stream_id": (stream_id_ok, ["s" * MAX_STREAM_ID_CHARS, "s" * (MAX_STREAM_ID_CHARS + 1)]),
        "cacher": (lambda v: v is None or v == {}, [{"enabled": True}]),
        "slice_cache": (one_of(True, False), [True]),
        "preset": (lambda v: v in preset_names(), preset_names()),
    }
    cases = []
    for key, (valid, extra) in rules.items():
        for value in [*BAD_TYPES, *extra]:
            ok = valid(value) or (key == "options" and value == {"temperature": 2}) or (
                key == "cacher" and value == {"enabled": True})
            needle = "preset" if key == "preset" else f"vtprune.{key}"
            if key in ("options", "cacher") and value == JUNK:
                needle = f"vtprune.{key}.a"  # a mapping with an unknown name
            cases.append((f"{key}={_show(value)}", {key: value}, ok, needle))
    for key in ("foo", "Method", MEGABYTE):  # unknown keys, whatever their value
        for value in BAD_TYPES if key == "foo" else [1]:
            cases.append((f"unknown {_show(key)}={_show(value)}", {key: value}, False, f"vtprune.{key[:20]}"))
    for key in SERVER_ONLY:
        for value in BAD_TYPES:
            cases.append((f"server-only {key}={_show(value)}", {key: value}, False,
                          f"vtprune.{key} is a server setting"))
    return cases


def test_every_bad_value_of_every_key(raw, guard, clip, slice_tokens):
    cases = _value_cases(slice_tokens)
    assert len(cases) > 120
    _check([(case, raw.ask([clip], vtprune=override), 200 if ok else 400, needle)
            for case, override, ok, needle in cases])
    guard.still_serving()


def test_every_bad_value_of_every_method_option_and_cacher_key(raw, guard, clip):
    replies = []
    for (method, option), valid in METHOD_OPTIONS.items():
        for value in BAD_TYPES:
            override = {"method": method, "retention": 0.3, "options": {option: value}}
            replies.append((f"{method}.{option}={_show(value)}", raw.ask([clip], vtprune=override),
                            200 if valid(value) else 400, f"vtprune.options.{option}"))
    for method in ("none", "evs"):  # no options at all
        replies.append((f"{method} with an option", raw.ask([clip], vtprune={"method": method, "options": {"k": 1}}),
                        400, "vtprune.options.k"))
    for key, valid in CACHER_KEYS.items():
        for value in BAD_TYPES:
            override = {"cacher": {"enabled": True, key: value}}
            replies.append((f"cacher.{key}={_show(value)}", raw.ask([clip], vtprune=override),
                            200 if valid(value) else 400, f"vtprune.cacher.{key}"))
    _check(replies)
    guard.still_serving()


def test_the_vtprune_object_itself_and_its_container(raw, guard, clip):
    replies = []
    for value in BAD_TYPES:  # null and {} mean "no override"; anything else that is not an object is refused
        expected = 200 if value is None or value == {} else 400
        needle = "vtprune.a is not a known key" if value == JUNK else "must be an object"
        replies.append((f"vtprune={_show(value)}", raw.ask([clip], vtprune=value), expected, needle))
        replies.append((f"vtprune={_show(value)}, no video", raw.ask([], vtprune=value), expected, needle))
    body = raw.body([clip])
    for container in ("x", [], 5):  # mm_processor_kwargs itself: vLLM's own validation
        replies.append((f"mm_processor_kwargs={container!r}", raw.post({**body, "mm_processor_kwargs": container}),
                        400, "mm_processor_kwargs"))
    # Other processor kwargs stay behind vLLM's --trust-request-mm-kwargs gate, with or without ours.
    for kwargs in ({"fps": 1}, {"vtprune": {"method": "stc"}, "do_resize": False}):
        replies.append((f"mm_processor_kwargs={kwargs}", raw.post({**body, "mm_processor_kwargs": kwargs}), 400,
                        "--trust-request-mm-kwargs"))
    head = json.dumps(body)[:-1]
    for name, tail, expected, needle in [
        ("duplicate key, last wins", '{"method": "stc", "method": "bogus"}', 400, "bogus"),
        ("nested 5000 deep", '{"options": ' + "[" * 5000 + "]" * 5000 + "}", 400, None),
        ("NaN", '{"retention": NaN}', 400, "vtprune.retention"),
        ("Infinity", '{"retention": Infinity}', 400, "vtprune.retention"),
        ("1e400", '{"retention": 1e400}', 400, "vtprune.retention"),
    ]:
        replies.append((name, raw.post(head + ', "mm_processor_kwargs": {"vtprune": ' + tail + "}}"), expected, needle))
    _check(replies)
    guard.still_serving()


def test_huge_and_unicode_stream_ids(raw, guard, clip):
    replies = []
    for sid, expected in [("🎥" * MAX_STREAM_ID_CHARS, 200), ("视频流-直播", 200), ("x\u0000y", 200),
                          ("e\u0301\u200f\u202e", 200), ("🎥" * (MAX_STREAM_ID_CHARS + 1), 400), (MEGABYTE, 400)]:
        for method in ("stc", "mssavt"):  # stateful: the id keys the stream store
            replies.append((f"stream_id={_show(sid)} {method}", raw.ask([clip], vtprune={"method": method,
                                                                                           "stream_id": sid}),
                            expected, "vtprune.stream_id"))
    for escaped, expected in [('"\\ud800"', 400), ('"a\\udfff"', 400), ('"\\ud83d\\ude00"', 200)]:
        reply = raw.ask_raw_vtprune([clip], '{"method": "stc", "stream_id": ' + escaped + "}")
        replies.append((f"stream_id={escaped}", reply, expected, "vtprune.stream_id"))
    # The same lone surrogate as raw (invalid UTF-8) bytes, and bytes that are no UTF-8 at all.
    head = json.dumps(raw.body([clip]))[:-1] + ', "mm_processor_kwargs": {"vtprune": {"stream_id": "'
    replies.append(("surrogate bytes", raw.post(head + "\ud800" + '"}}}'), 400, "vtprune.stream_id"))
    _check(replies)
    guard.still_serving()


# Stateful and stateless settings; a stream sees every ordered pair of them once.
STREAM_CONFIGS = [
    {"method": "none"}, {"method": "vcast", "retention": 0.3}, {"method": "evs", "retention": 0.3},
    {"method": "stc", "retention": 0.3}, {"method": "stc", "retention": 0.5},
    {"method": "stc", "retention": 0.3, "options": {"strategy": "dual_anchor"}},
    {"method": "mssavt", "retention": 0.3}, {"method": "mssavt", "retention": 0.3, "options": {"temporal": "evs"}},
    {"method": "mssavt", "retention": 0.3, "options": {"alternate_parity": True}},
]


def every_ordered_pair(n: int) -> list[int]:
    """A walk over 0..n-1 in which every ordered pair (i, j), i == j included, is consecutive exactly once
    (an Eulerian circuit of the complete directed graph with loops: n*n + 1 steps)."""
    unused = {i: list(range(n)) for i in range(n)}
    stack, walk = [0], []
    while stack:
        node = stack[-1]
        if unused[node]:
            stack.append(unused[node].pop())
        else:
            walk.append(stack.pop())
    return walk[::-1]


def test_every_ordered_pair_walk():
    walk = every_ordered_pair(4)
    assert len(walk) == 17 and sorted(zip(walk, walk[1:])) == [(i, j) for i in range(4) for j in range(4)]


def expected_resets(configs: list[dict]) -> int:
    """The stream starts afresh when a stateful request's method or options differ from the stream's state."""
    resets, state = 0, None
    for cfg in map(PruneConfig.from_dict, configs):
        if not cfg.stateful:
            continue
        signature = (cfg.method, cfg.options)
        resets += state is not None and signature != state
        state = signature
    return resets


def test_one_stream_through_every_method_pair_and_option_change(raw, guard, tmp_path):
    """Every request succeeds; the stream restarts exactly where its method or options change. Each step sends
    another clip (sizes vary too), so every request runs the tower and the selection."""
    walk = [STREAM_CONFIGS[i] for i in every_ordered_pair(len(STREAM_CONFIGS))]
    stream = f"pairs-{uuid.uuid4()}"
    before = raw.http.get("/metrics").text
    replies = []
    for step, cfg in enumerate(walk):
        width, height = (64, 64) if step % 3 else (96, 64)
        path = write_mp4(make_frames("moving_objects", 8, width, height, seed=step), tmp_path / f"{step}.mp4", 4.0)
        replies.append((f"step {step} {cfg}", raw.ask([mp4_data_url(path)], vtprune={**cfg, "stream_id": stream}),
                        200, None))
    _check(replies)
    after = raw.http.get("/metrics").text
    assert metric(after, "vtprune:selection_fallbacks_total") == metric(before, "vtprune:selection_fallbacks_total")
    resets = metric(after, "vtprune:stream_resets_total") - metric(before, "vtprune:stream_resets_total")
    assert resets == expected_resets(walk) > 0
    guard.still_serving()


def test_sixteen_concurrent_mixed_requests(raw, guard, clip, videos):
    other = mp4_data_url(videos["scene_cut"])
    shared = f"shared-{uuid.uuid4()}"
    cases: list[tuple[str, list[str], Any, int]] = [
        ("default", [clip], NOT_SET, 200), ("none", [other], {"method": "none"}, 200),
        ("stc shared a", [clip], {"method": "stc", "stream_id": shared}, 200),
        ("stc shared b", [other], {"method": "stc", "stream_id": shared}, 200),
        ("mssavt shared", [clip], {"method": "mssavt", "stream_id": shared}, 200),
        ("two videos", [clip, other], {"method": "evs", "retention": 0.2}, 200),
        ("cacher", [other], {"cacher": {"enabled": True, "recompute_ratio": 0.5}}, 200),
        ("no video", [], {"method": "vcast"}, 200),
        ("bad retention", [clip], {"retention": -1}, 400), ("bad method", [other], {"method": []}, 400),
        ("bad stream", [clip], {"stream_id": MEGABYTE}, 400), ("server key", [clip], {"slice_cache_mb": 1}, 400),
        ("corrupt video", ["data:video/mp4;base64,AAAA"], NOT_SET, 400),
        ("bad option", [other], {"method": "stc", "options": {"alpha": 2}}, 400),
        ("not an object", [clip], "stc", 400), ("floor too high", [clip], {"min_tokens_per_slice": HUGE}, 400),
    ]
    assert len(cases) == 16
    replies: list[Any] = [None] * len(cases)

    def send(i: int) -> None:
        replies[i] = raw.ask(cases[i][1], vtprune=cases[i][2], max_tokens=4)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check([(name, reply, status, None) for (name, _, _, status), reply in zip(cases, replies)])
    guard.still_serving()


def test_aborted_requests_leave_nothing_behind(raw, guard, clip, tmp_path_factory):
    """Streams closed after their first chunk, and clients that give up while a large video is decoded or run
    through the tower: vLLM aborts them, no request stays, the server serves on."""
    for vtprune in ({"method": "vcast"}, {"method": "stc", "stream_id": "abort"}, {"method": "mssavt"},
                    {"method": "none"}):
        first = raw.stream_and_hang_up(raw.body([clip], vtprune=vtprune, max_tokens=256, ignore_eos=True))
        assert first.startswith("data: ")
    big = mp4_data_url(long_clip(tmp_path_factory.mktemp("long")))
    gave_up = [raw.give_up_after(raw.body([big], vtprune={"method": "vcast", "retention": r, "slice_cache": False,
                                                           "stream_id": "abort"}, max_tokens=32), seconds)
               for r, seconds in ((0.5, 0.05), (0.4, 0.3), (0.3, 0.6), (0.2, 1.0))]
    # Decoding 240 frames of 960x720 alone takes longer than 50 ms on any machine, so at least that one gave up.
    assert any(gave_up)
    raw.wait_idle()
    guard.still_serving()


def test_lower_cost_policy_against_hostile_values(chunked_server, tiny_model, clip, slice_tokens):
    """The default policy (``chunked_server``: V-CAST at R = 0.6): what keeps more tokens or costs more is
    refused naming the policy, values that lower the cost are served, bad values are refused as anywhere."""
    raw = RawChat(chunked_server.url, tiny_model)
    guard = Guard(raw, clip)
    policy = "lower-cost"
    cases = [
        ({"method": "none"}, 400, policy), ({"retention": 0.8}, 400, policy),
        ({"retention": 1}, 400, policy), ({"min_tokens_per_slice": slice_tokens}, 400, policy),
        ({"method": "mssavt", "retention": 0.1, "options": {"mask": "greedy"}}, 400, "mask='greedy'"),
        ({"slice_cache": False}, 400, "slice_cache=false"), ({"request_overrides": "any"}, 400, "server setting"),
        ({"retention": HUGE}, 400, "vtprune.retention"), ({"stream_id": MEGABYTE}, 400, "vtprune.stream_id"),
        ({"cacher": {"enabled": True, "refresh_interval": HUGE}}, 200, None),  # computes less of the tower
        ({"retention": 0.25}, 200, None), ({"min_tokens_per_slice": 0}, 200, None),
        ({"method": "stc", "retention": 0.1, "options": {"chunk_slices": HUGE}, "stream_id": "lc"}, 200, None),
        ({"method": "mssavt", "retention": 0.1}, 200, None), ({"method": "evs", "retention": 0.2}, 200, None),
        (None, 200, None),
    ]
    try:
        _check([(_show(vtprune), raw.ask([clip], vtprune=vtprune), status, needle)
                for vtprune, status, needle in cases])
        guard.still_serving()
    finally:
        raw.close()
