"""Adds ``--plugin vtprune`` and ``--vtprune-*`` to vLLM's engine arguments, and turns them on.

Why: vLLM 0.32 has no ``--plugin`` flag and no hook for a plugin's own options. ``AsyncEngineArgs.add_cli_args``
loads general plugins right before it calls ``EngineArgs.add_cli_args``, so wrapping that function is how
plugin flags reach ``vllm serve`` and ``vllm serve --help=all``. ``EngineArgs.from_cli_args`` copies only
dataclass fields, so a second wrap moves our flags into ``additional_config["vtprune"]``, vLLM's free-form
slot. A third wrap, of ``create_engine_config``, activates the plugin from ``additional_config`` for both
``vllm serve`` and ``LLM(..., additional_config={"vtprune": {...}})``.

Remove when: vLLM lets plugins declare CLI options (not planned upstream as of 0.32).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from vllm.engine.arg_utils import EngineArgs

from vllm_vtprune import activation
from vllm_vtprune.settings import OVERRIDE_POLICIES, REQUEST_KEY, VtpruneSettings, preset_names

PLUGIN_NAME = "vtprune"
# --flag -> key of VtpruneSettings.from_dict
_FLAGS = {
    "vtprune_preset": "preset",
    "vtprune_method": "method",
    "vtprune_retention": "retention",
    "vtprune_min_tokens_per_slice": "min_tokens_per_slice",
    "vtprune_options": "options",
    "vtprune_pre_tower": "pre_tower",
    "vtprune_cacher": "cacher",
    "vtprune_slice_cache_mb": "slice_cache_mb",
    "vtprune_stream_state_mb": "stream_state_mb",
    "vtprune_request_overrides": "request_overrides",
}


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _retention(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from vllm_vtprune.core import available_methods

    group = parser.add_argument_group(
        "vtprune", "Video-token pruning for Qwen3-VL (vllm_vtprune plugin). Active only with --plugin vtprune."
    )
    group.add_argument("--plugin", action="append", metavar="NAME", help="Enable a plugin: `--plugin vtprune`.")
    group.add_argument("--vtprune-preset", choices=preset_names(), help="Named preset from configs/.")
    group.add_argument("--vtprune-method", choices=available_methods(), help="Token selection method.")
    group.add_argument("--vtprune-retention", type=_retention, help="Fraction of video tokens kept, in (0, 1].")
    group.add_argument("--vtprune-min-tokens-per-slice", type=_non_negative_int,
                       help="Floor of kept tokens per temporal slice.")
    group.add_argument("--vtprune-options", type=_json_object, help="Method options as a JSON object.")
    group.add_argument("--vtprune-pre-tower", type=_json_object,
                       help='Pruning decided from the pixels before the vision tower, e.g. \'{"method": "novelty", '
                            '"retention": 0.5}\' (then --vtprune-method picks among the kept tokens; "none" keeps '
                            'them all).')
    group.add_argument("--vtprune-cacher", type=_json_object,
                       help='STC-Cacher in the vision tower, e.g. \'{"enabled": true, "recompute_ratio": 0.25}\'.')
    group.add_argument("--vtprune-slice-cache-mb", type=_non_negative_int,
                       help="Per-worker budget of the exact per-slice vision-tower cache (MiB); 0 = off.")
    group.add_argument("--vtprune-stream-state-mb", type=_non_negative_int,
                       help="Per-worker budget of the selection state of streams (MiB, on the CPU; default 64).")
    group.add_argument("--vtprune-request-overrides", choices=OVERRIDE_POLICIES,
                       help="What a request's mm_processor_kwargs.vtprune may change: 'lower-cost' (default: "
                            "never more tokens or tower work than the server's settings), 'any', or 'none'.")


def settings_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """Validated settings dict for ``additional_config``, or None when the plugin is not asked for."""
    plugins = getattr(args, "plugin", None) or []
    unknown = sorted(set(plugins) - {PLUGIN_NAME})
    if unknown:
        raise ValueError(f"--plugin {unknown[0]!r} is unknown; installed: {PLUGIN_NAME!r}")
    given = {key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag, None) is not None}
    if PLUGIN_NAME not in plugins:
        if given:
            flag = "--" + next(f for f, k in _FLAGS.items() if k in given).replace("_", "-")
            raise ValueError(f"{flag} needs --plugin {PLUGIN_NAME}")
        return None
    try:
        return VtpruneSettings.from_dict(given).to_dict()
    except ValueError as e:
        raise ValueError(f"invalid --vtprune-* option: {e}") from e


def apply() -> None:
    if getattr(EngineArgs, "_vtprune_patched", False):
        return
    original_add = EngineArgs.add_cli_args
    original_from = EngineArgs.from_cli_args.__func__
    original_create = EngineArgs.create_engine_config

    def add_cli_args(parser, *args, **kwargs):
        parser = original_add(parser, *args, **kwargs)
        _add_arguments(parser)
        return parser

    def from_cli_args(cls, args: argparse.Namespace):
        engine_args = original_from(cls, args)
        settings = settings_from_args(args)
        if settings is not None:
            engine_args.additional_config = {**(engine_args.additional_config or {}), REQUEST_KEY: settings}
        return engine_args

    def create_engine_config(self, *args, **kwargs):
        settings = (self.additional_config or {}).get(REQUEST_KEY)
        if settings is not None:
            activation.activate(VtpruneSettings.from_dict(settings))
            activation.route_through_pruning_hooks(self)
        config = original_create(self, *args, **kwargs)
        if settings is not None:
            activation.check_model_supported(config)
        return config

    EngineArgs.add_cli_args = staticmethod(add_cli_args)
    EngineArgs.from_cli_args = classmethod(from_cli_args)
    EngineArgs.create_engine_config = create_engine_config
    EngineArgs._vtprune_patched = True
