"""Registry of selection methods and the interface each one implements.

A method is a class with a registry ``name``, an ``Options`` dataclass (see ``options.py``), a pure
``total_budget(grid, cfg)`` and ``select(x, grid, budget, cfg, state) -> (keep_mask, new_state)``. The driver
(``selection.py``) checks the contract for every method, so methods only compute a keep mask.

Partial grids (the second stage of a two-stage config): a method with ``partial_grid = True`` also takes
``select(..., valid)``, a bool [T, H*W] mask of the merge groups the vision tower computed; ``x`` is zero
elsewhere, and the keep mask must lie inside ``valid``. The driver calls ``select`` without ``valid`` for full
grids, so methods written for full grids only need no change.

``stage`` says where a method runs: ``"post_tower"`` methods (the default) select from the merger output
(``selection.select_tokens``); ``"pre_tower"`` methods select from the video's pixels before the vision tower
(``pretower.select_pretower``), with ``x`` the 8-bit pixel levels of each merge group [T, H*W, 4 * 3*2*16*16]
instead of features. Both share the budget rule, the keep-mask contract and the checks.

``x`` keeps the caller's dtype (fp32, bf16 or fp16) rather than being an fp32 copy: methods score in fp32 through
the block-wise helpers of ``similarity.py``, which is 5-8x faster on CPU than materialising fp32 copies of a whole
video.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, ClassVar

from .budget import ratio_budget
from .options import MethodOptions, short_repr

if TYPE_CHECKING:
    import torch

    from .budget import Grid
    from .config import PruneConfig
    from .state import StreamState

# Modules of the built-in methods, imported on the first lookup so that importing the registry stays cheap and
# free of import cycles (the methods import the registry).
_BUILTIN_MODULES = ("none", "evs", "vcast", "stc", "mssavt", "novelty", "dedup")
_methods: dict[str, type[PruningMethod]] = {}
_builtins_loaded = False
STAGES = ("post_tower", "pre_tower")


class PruningMethod:
    """Interface of a selection method; subclass it, set ``name`` and ``Options``, decorate with
    ``@register_method``."""

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    stage: ClassVar[str] = "post_tower"
    partial_grid: ClassVar[bool] = False  # whether ``select`` takes ``valid`` (see the module docstring)

    @classmethod
    def options(cls, cfg: PruneConfig) -> MethodOptions:
        """The config's options as this method's typed ``Options`` (the config holds them validated)."""
        return cls.Options(**dict(cfg.options))

    @classmethod
    def uses_stream_state(cls, cfg: PruneConfig) -> bool:
        """Whether ``select`` reads and returns a ``StreamState`` under ``cfg`` (its selection then depends on
        the stream's earlier chunks)."""
        return False

    @classmethod
    def total_budget(cls, grid: Grid, cfg: PruneConfig) -> int:
        """Tokens kept for a video of this grid; a pure function of ``grid`` and ``cfg``."""
        raise NotImplementedError

    @classmethod
    def two_stage_budget(cls, kept: int, grid_t: int, cfg: PruneConfig) -> int:
        """Tokens this post-tower method keeps of the ``kept`` groups a pre-tower stage left of a ``grid_t``-slice
        video: ``min(kept, max(T * min_k, clip(round(kept * retention), 1, kept)))`` (V-CAST's rule with ``kept``
        in place of T*H*W). A pure function of the grid and both configs, since ``kept`` is."""
        return min(kept, max(grid_t * cfg.min_tokens_per_slice, ratio_budget(kept, cfg.retention)))

    @classmethod
    def select(
        cls,
        x: torch.Tensor,
        grid: Grid,
        budget: int,
        cfg: PruneConfig,
        state: StreamState | None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, StreamState | None]:
        """Keep mask [T, H*W] (bool, exactly ``budget`` True) for features ``x`` [T, H*W, C], and the new state.

        valid: only with ``partial_grid``: bool [T, H*W], the groups present (``x`` is zero elsewhere); the keep
            mask must lie inside it and keep ``min(min_tokens_per_slice, n_t)`` of the ``n_t`` groups of each
            slice when the budget allows. None: every group is present (a full grid).
        """
        raise NotImplementedError


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__qualname__} needs a non-empty string `name` to be registered")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, MethodOptions)):
        raise ValueError(f"{cls.__qualname__}.Options must be a MethodOptions dataclass")
    if cls.stage not in STAGES:
        raise ValueError(f"{cls.__qualname__}.stage must be one of {list(STAGES)}, got {cls.stage!r}")
    existing = _methods.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"method name {name!r} is already registered by {existing.__qualname__}")
    _methods[name] = cls
    return cls


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{module}")
        _builtins_loaded = True


def available_methods(stage: str | None = "post_tower") -> list[str]:
    """Registered method names of one ``stage`` ("post_tower", the default, or "pre_tower"; None: all), sorted."""
    _load_builtins()
    if stage is not None and stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)} or None, got {stage!r}")
    return sorted(name for name, cls in _methods.items() if stage is None or cls.stage == stage)


def get_method(name: str) -> type[PruningMethod]:
    """The method registered as ``name``; ValueError naming the choices otherwise."""
    _load_builtins()
    try:
        return _methods[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"vtprune.method {short_repr(name)} is unknown; choose one of {available_methods()} "
            f"(before the tower: {available_methods('pre_tower')})"
        ) from None
