"""Two-stage configs: a pre-tower stage (``pre_tower``) then a post-tower method; validation and budgets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core import PruneConfig, total_budget
from vllm_vtprune.core.selection import stage_budgets


def test_round_trip_canonical_form_and_inherited_floor() -> None:
    d = {"method": "vcast", "retention": 0.5, "min_tokens_per_slice": 2, "pre_tower": {"method": "novelty"}}
    cfg = PruneConfig.from_dict(d)
    assert cfg.pre_tower == PruneConfig(method="novelty", min_tokens_per_slice=2)
    assert PruneConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["pre_tower"] == {
        "method": "novelty",
        "retention": 1.0,
        "min_tokens_per_slice": 2,
        "options": {"reference": "last_kept"},
    }
    assert cfg.to_dict() != PruneConfig.from_dict({k: v for k, v in d.items() if k != "pre_tower"}).to_dict()
    # single-stage configs keep their canonical form (and so their hash): no pre_tower key
    assert "pre_tower" not in PruneConfig(method="vcast").to_dict()
    assert hash(cfg) == hash(PruneConfig.from_dict(d))


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"method": "novelty", "pre_tower": {"method": "dedup"}}, "must be a post-tower method"),
        ({"method": "vcast", "pre_tower": {"method": "evs"}}, "must be a pre-tower method"),
        ({"method": "vcast", "pre_tower": {"method": "novelty", "pre_tower": {}}}, "cannot have its own"),
        ({"method": "vcast", "pre_tower": "novelty"}, "must be a mapping"),
        (
            {
                "method": "vcast",
                "min_tokens_per_slice": 3,
                "pre_tower": {"method": "novelty", "min_tokens_per_slice": 2},
            },
            "pre_tower.min_tokens_per_slice=2 is below vtprune.min_tokens_per_slice=3",
        ),
        ({"method": "vcast", "pre_tower": {"method": "novelty", "options": {"scope": "video"}}}, "not an option"),
    ],
)
def test_invalid_two_stage_configs(d: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PruneConfig.from_dict(d)


@settings(deadline=None, max_examples=200)
@given(
    grid=st.tuples(st.integers(1, 8), st.integers(1, 6), st.integers(1, 6)),
    post=st.sampled_from(["vcast", "stc", "mssavt", "evs", "none"]),
    pre=st.sampled_from(["novelty", "dedup"]),
    r1=st.floats(1e-3, 1.0),
    r2=st.floats(1e-3, 1.0),
    min_k=st.integers(0, 2),
)
def test_stage_budgets(grid, post: str, pre: str, r1: float, r2: float, min_k: int) -> None:
    t, h, w = grid
    if min_k > h * w:
        return
    cfg = PruneConfig.from_dict(
        {"method": post, "retention": r2, "min_tokens_per_slice": min_k, "pre_tower": {"method": pre, "retention": r1}}
    )
    kept, final = stage_budgets(grid, cfg)
    assert kept == total_budget(grid, cfg.pre_tower)
    assert final == total_budget(grid, cfg)
    assert 1 <= final <= kept <= t * h * w
    if post == "none":
        assert final == kept
    else:
        assert final == min(kept, max(t * min_k, max(1, min(kept, round(kept * r2)))))
    assert stage_budgets(grid, PruneConfig(method=post, retention=r2, min_tokens_per_slice=min_k)) == (
        total_budget(grid, PruneConfig(method=post, retention=r2, min_tokens_per_slice=min_k)),
    )
