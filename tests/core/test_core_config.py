"""PruneConfig validation, canonical form; the method registry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core import (
    PruneConfig,
    PruningMethod,
    available_methods,
    get_method,
    register_method,
    registry,
    select_tokens,
    total_budget,
)

from .conftest import VARIANTS, make_config

BUILTIN = ["evs", "mssavt", "none", "stc", "vcast"]


def _canonical(cfg: PruneConfig) -> str:
    """The JSON the adapter's settings put into vLLM's multimodal hash for this config."""
    return json.dumps(cfg.to_dict(), sort_keys=True)


def test_builtin_methods_are_registered() -> None:
    assert available_methods() == BUILTIN
    for name in BUILTIN:
        assert get_method(name).name == name


def test_defaults() -> None:
    cfg = PruneConfig()
    assert (cfg.method, cfg.retention, cfg.min_tokens_per_slice, cfg.options) == ("none", 1.0, 1, ())
    assert PruneConfig.from_dict({}) == cfg
    stc = PruneConfig.from_dict({"method": "stc"})
    assert stc == PruneConfig(method="stc")
    assert dict(stc.options) == {
        "alpha": 0.5,
        "channel_keep_ratio": 0.5,
        "chunk_slices": 0,
        "strategy": "gaussian",
    }
    assert [k for k, _ in stc.options] == sorted(k for k, _ in stc.options)
    mssavt = dict(PruneConfig(method="mssavt", options={"temporal": "evs"}).options)
    assert mssavt["temporal"] == "evs" and mssavt["mask"] == "checkerboard"
    assert dict(PruneConfig(method="vcast").options)["temperature"] == 0.7


@settings(deadline=None, max_examples=100)
@given(
    variant=st.sampled_from(VARIANTS),
    retention=st.floats(min_value=1e-6, max_value=1.0),
    min_k=st.integers(0, 64),
)
def test_round_trip_and_canonical_form(variant, retention, min_k) -> None:
    cfg = make_config(variant, retention, min_k)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert PruneConfig.from_dict(d) == cfg
    assert PruneConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert hash(PruneConfig.from_dict(d)) == hash(cfg)
    assert _canonical(PruneConfig.from_dict(d)) == _canonical(cfg)
    changed = PruneConfig.from_dict({**d, "min_tokens_per_slice": min_k + 1})
    assert _canonical(changed) != _canonical(cfg)


def test_canonical_form_depends_on_every_field_and_is_stable_across_processes() -> None:
    base = PruneConfig(method="mssavt", retention=0.25)
    variants = [
        base,
        PruneConfig(method="mssavt", retention=0.26),
        PruneConfig(method="mssavt", retention=0.25, min_tokens_per_slice=2),
        PruneConfig(method="mssavt", retention=0.25, options={"temporal": "evs"}),
        PruneConfig(method="vcast", retention=0.25),
    ]
    assert len({_canonical(c) for c in variants}) == len(variants)
    # Explicit defaults and omitted ones are the same config.
    explicit = PruneConfig(method="mssavt", retention=0.25, options={"temporal_share": 0.5})
    assert _canonical(explicit) == _canonical(base)
    code = ("import json; from vllm_vtprune.core import PruneConfig; "
            "print(json.dumps(PruneConfig(method='mssavt', retention=0.25).to_dict(), sort_keys=True))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == _canonical(base)


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"retention": 1.5}, r"^vtprune.retention must be in \(0, 1\], got 1.5$"),
        ({"retention": 0}, r"vtprune.retention must be in \(0, 1\], got 0"),
        ({"retention": float("nan")}, r"vtprune.retention must be a number in \(0, 1\]"),
        ({"retention": 10**400}, r"^vtprune.retention must be a number in \(0, 1\], got 1000000000000000000000000"),
        ({"retention": "0.5"}, r"vtprune.retention must be a number in \(0, 1\], got '0.5'"),
        ({"retention": True}, r"vtprune.retention must be a number"),
        ({"min_tokens_per_slice": -1}, r"vtprune.min_tokens_per_slice must be an integer >= 0, got -1"),
        ({"min_tokens_per_slice": 1.0}, r"vtprune.min_tokens_per_slice must be an integer >= 0"),
        (
            {"method": "foo"},
            r"^vtprune.method 'foo' is unknown; choose one of \['evs', 'mssavt', 'none', 'stc', 'vcast'\] "
            r"\(before the tower: \['dedup', 'novelty'\]\)$",
        ),
        ({"method": 3}, r"vtprune.method must be a string, got 3"),
        ({"methd": "stc"}, r"vtprune.methd is not a known key; choose from"),
        ({"options": [1, 2]}, r"vtprune.options must be a mapping"),
        (
            {"method": "mssavt", "options": {"temporal": "foo"}},
            r"^vtprune.options.temporal must be one of \['dtd', 'dycoke', 'evs', 'none'\], got 'foo'$",
        ),
        (
            {"method": "mssavt", "options": {"temporal_share": 1.5}},
            r"vtprune.options.temporal_share must be in",
        ),
        ({"method": "mssavt", "options": {"parity": 2}}, r"vtprune.options.parity must be one of \[0, 1\]"),
        ({"method": "mssavt", "options": {"parity": True}}, r"vtprune.options.parity must be one of"),
        (
            {"method": "mssavt", "options": {"alternate_parity": 1}},
            r"vtprune.options.alternate_parity must be",
        ),
        ({"method": "stc", "options": {"chunk_slices": -1}}, r"vtprune.options.chunk_slices must be >= 0"),
        (
            {"method": "stc", "options": {"chunk_slices": 1.5}},
            r"vtprune.options.chunk_slices must be an integer",
        ),
        ({"method": "stc", "options": {"channel_keep_ratio": 0}}, r"vtprune.options.channel_keep_ratio"),
        ({"method": "stc", "options": {"alpha": "x"}}, r"vtprune.options.alpha must be a finite number"),
        ({"method": "vcast", "options": {"temperature": 0}}, r"vtprune.options.temperature must be > 0"),
        (
            {"method": "vcast", "options": {"mask": "greedy"}},
            r"vtprune.options.mask is not an option of method 'vcast'; choose from \['temperature'\]",
        ),
        (
            {"method": "none", "options": {"x": 1}},
            r"vtprune.options.x is not an option of method 'none'; it takes",
        ),
    ],
)
def test_invalid_settings_name_the_key(settings_, message) -> None:
    with pytest.raises(ValueError, match=message):
        PruneConfig.from_dict(settings_)


def test_options_are_coerced() -> None:
    cfg = PruneConfig.from_dict({"method": "mssavt", "retention": 1, "options": {"temporal_share": 1}})
    assert cfg.retention == 1.0 and isinstance(cfg.retention, float)
    share = dict(cfg.options)["temporal_share"]
    assert share == 1.0 and isinstance(share, float)
    assert PruneConfig.from_dict({"method": "stc", "options": None}) == PruneConfig(method="stc")


def test_registry_rejects_bad_or_duplicate_methods(monkeypatch) -> None:
    class NoName(PruningMethod):
        pass

    with pytest.raises(ValueError, match="needs a non-empty string `name`"):
        register_method(NoName)

    class Duplicate(PruningMethod):
        name = "vcast"

    with pytest.raises(ValueError, match="already registered"):
        register_method(Duplicate)
    assert get_method("vcast").__name__ == "VCast"


def test_a_registered_custom_method_is_usable(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_methods", dict(registry._methods))

    @register_method
    class FirstTokens(PruningMethod):
        """Keeps the first k tokens of every slice."""

        name = "first-tokens"

        @classmethod
        def total_budget(cls, grid, cfg):
            t, h, w = grid
            return t * max(1, round(h * w * cfg.retention))

        @classmethod
        def select(cls, x, grid, budget, cfg, state):
            t, hw, _ = x.shape
            k = budget // t
            return (torch.arange(hw) < k).expand(t, hw).clone(), None

    assert "first-tokens" in available_methods()
    cfg = PruneConfig.from_dict({"method": "first-tokens", "retention": 0.5})
    assert total_budget((2, 2, 2), cfg) == 4
    assert select_tokens(torch.randn(8, 3), [(2, 2, 2)], [cfg])[0].kept.tolist() == [0, 1, 4, 5]
