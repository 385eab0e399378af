"""``CacherConfig``: defaults as released, validation naming the key, JSON round trip."""

from __future__ import annotations

import pytest

from vllm_vtprune.vision.cacher_config import CacherConfig


def test_defaults_are_the_released_ones():
    c = CacherConfig()
    assert (c.enabled, c.recompute_ratio, c.refresh_interval) == (False, 0.25, 2)
    assert not c.active
    assert CacherConfig(enabled=True).active


def test_exact_settings_are_not_active():
    assert not CacherConfig(True, 1.0, 2).active
    assert not CacherConfig(True, 0.25, 1).active


def test_round_trip():
    c = CacherConfig.from_dict({"enabled": True, "recompute_ratio": 0.5, "refresh_interval": 4})
    assert CacherConfig.from_dict(c.to_dict()) == c
    assert c.to_dict() == {"enabled": True, "recompute_ratio": 0.5, "refresh_interval": 4}
    assert CacherConfig.from_dict({"recompute_ratio": 1}).recompute_ratio == 1.0
    assert CacherConfig.from_dict(None) == CacherConfig()


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"recompute_ratio": 0}, "vtprune.cacher.recompute_ratio must be in (0, 1], got 0"),
        ({"recompute_ratio": 1.5}, "vtprune.cacher.recompute_ratio must be in (0, 1], got 1.5"),
        ({"recompute_ratio": "0.5"}, "vtprune.cacher.recompute_ratio must be a number in (0, 1], got '0.5'"),
        ({"recompute_ratio": True}, "vtprune.cacher.recompute_ratio must be a number"),
        ({"recompute_ratio": float("nan")}, "vtprune.cacher.recompute_ratio must be a number"),
        ({"refresh_interval": 0}, "vtprune.cacher.refresh_interval must be >= 1, got 0"),
        ({"refresh_interval": 2.0}, "vtprune.cacher.refresh_interval must be an integer >= 1, got 2.0"),
        ({"enabled": "yes"}, "vtprune.cacher.enabled must be true or false, got 'yes'"),
        ({"ratio": 0.5}, "vtprune.cacher.ratio is not a known key"),
    ],
)
def test_errors_name_the_key(d, message):
    with pytest.raises(ValueError) as info:
        CacherConfig.from_dict(d)
    assert str(info.value).startswith(message)


def test_not_a_mapping():
    with pytest.raises(ValueError, match="vtprune.cacher must be a mapping"):
        CacherConfig.from_dict([("enabled", True)])


def test_tower_cost_is_the_share_of_work_computed():
    assert CacherConfig().tower_cost == CacherConfig(True, 1.0, 4).tower_cost == 1.0
    assert CacherConfig(True, 0.25, 2).tower_cost == pytest.approx((1 + 0.25) / 2)
    assert CacherConfig(True, 0.5, 4).tower_cost == pytest.approx((1 + 3 * 0.5) / 4)


def test_tower_cost_of_a_huge_interval_does_not_overflow():
    """A client may send any JSON integer; float((k - 1) * ratio) would raise OverflowError for 10**400."""
    assert CacherConfig(True, 0.25, 10**400).tower_cost == 0.25
