"""A request's ``mm_processor_kwargs.vtprune`` against the server's settings: every client value gives a settings
object or a ValueError naming the key, never another exception, and error messages stay short."""

from __future__ import annotations

import pytest

from vllm_vtprune.core import PruneConfig, total_budget
from vllm_vtprune.settings import VtpruneSettings, load_preset

HUGE = 10**400  # any JSON integer reaches the server as a Python int


@pytest.fixture(params=["any", "lower-cost"])
def server(request) -> VtpruneSettings:
    return VtpruneSettings.from_dict({**load_preset("vcast"), "request_overrides": request.param})


@pytest.mark.parametrize("override", [
    {"cacher": {"enabled": True, "refresh_interval": HUGE}},
    {"cacher": {"enabled": True, "recompute_ratio": 1e-300, "refresh_interval": HUGE}},
    {"method": "stc", "retention": 0.1, "options": {"chunk_slices": HUGE}},
])
def test_huge_integers_that_are_valid_are_accepted(server, override):
    settings = server.merged(override)
    assert settings.cacher.tower_cost <= server.cacher.tower_cost


@pytest.mark.parametrize(("override", "key"), [
    ({"retention": HUGE}, "vtprune.retention"),
    ({"min_tokens_per_slice": -HUGE}, "vtprune.min_tokens_per_slice"),
    ({"cacher": {"recompute_ratio": HUGE}}, "vtprune.cacher.recompute_ratio"),
    ({"method": "vcast", "options": {"temperature": HUGE}}, "vtprune.options.temperature"),
    ({"stream_id": "x" * 2**20}, "vtprune.stream_id"),
    ({"method": "x" * 2**20}, "vtprune.method"),
    ({"x" * 2**20: 1}, "vtprune.xxx"),
])
def test_bad_values_name_the_key_in_a_short_message(server, override, key):
    with pytest.raises(ValueError, match=key) as info:
        server.merged(override)
    assert len(str(info.value)) < 300


def test_a_huge_per_slice_floor_is_refused_in_a_short_message():
    cfg = PruneConfig.from_dict({"method": "vcast", "retention": 0.25, "min_tokens_per_slice": HUGE})
    with pytest.raises(ValueError, match="vtprune.min_tokens_per_slice=1000") as info:
        total_budget((4, 8, 8), cfg)
    assert len(str(info.value)) < 200
