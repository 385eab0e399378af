"""The ``vllm.general_plugins`` entry point.

vLLM calls :func:`register` once in every process it starts (API server, engine core, workers, Ray workers),
whether or not the user asked for the plugin. So it is idempotent and cheap, and it stays dormant unless
``--plugin vtprune`` (or ``additional_config={"vtprune": ...}``) enabled it: then the settings arrive in this
process through ``VLLM_VTPRUNE_CONFIG`` and the plugin activates here too.
"""

from __future__ import annotations

from vllm_vtprune.log import get_logger

logger = get_logger(__name__)


def register() -> None:
    from vllm_vtprune import activation
    from vllm_vtprune.patches import engine_args_cli
    from vllm_vtprune.settings import settings_from_env

    try:
        engine_args_cli.apply()
    except Exception:  # a broken CLI extension must not take vanilla vLLM down with it
        logger.exception("vtprune: could not add its CLI options; --plugin vtprune is unavailable")
    # Enabled but misconfigured must fail loudly rather than serve unpruned: no try/except here.
    settings = settings_from_env()
    if settings is not None:
        activation.activate_in_process(settings)
