"""Ray Serve deployments: N plugin-enabled vLLM replicas behind a stream-aware ingress.

::

    client --HTTP--> Ray Serve proxy --> StreamIngress ---handle(session_id=stream key)---> VllmReplica x N
                                                          Ray Serve's ConsistentHashRouter picks the replica

- ``VllmReplica`` runs vLLM's own engine and OpenAI server app in the replica process, built exactly as
  ``vllm serve`` builds them (``make_arg_parser`` -> ``build_async_engine_client`` -> ``build_app`` ->
  ``init_app_state``, with the app's lifespan), from the same command-line arguments, so ``--plugin vtprune``
  and every other ``vllm serve`` flag work unchanged. Each replica is a full vLLM server (engine core and
  workers in its own child processes), with its own plugin state: stream state and per-worker caches.
- ``StreamIngress`` is the only HTTP entry point. It forwards every request unchanged (method, path, query,
  headers, body) to one replica and streams the response back. It reads, but never alters, the request's
  stream key (:func:`vllm_vtprune.serve.routing.stream_key`) and passes it to Ray Serve as the call's
  ``session_id``. Its only additions to a response are the headers ``x-vtprune-replica`` (which replica
  served it) and ``x-vtprune-stream-key``.
- Routing is Ray Serve's own ``ConsistentHashRouter`` (``ray.serve.experimental``, in ``ray[serve]`` 2.60):
  a hash ring over the running replicas keyed by ``session_id``, with no fallback replica, so a stream waits
  for its replica under back-pressure instead of landing on another one and losing its state. Requests
  without a stream key hash their request id, i.e. are spread uniformly. When a replica dies, only its
  streams move.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from vllm_vtprune.serve.asgi import call_asgi
from vllm_vtprune.serve.routing import REPLICA_HEADER, STREAM_KEY_HEADER, stream_key

logger = logging.getLogger("vllm.vtprune.serve")  # printed through vLLM's logging set-up in replicas

ROUTER_CLASS = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
# Strict affinity: 0 fallback replicas (Ray's default is 2, which would move a busy replica's streams).
ROUTER_KWARGS = {"num_virtual_nodes": 100, "num_fallback_replicas": 0}
# Not forwarded in either direction: they describe one HTTP hop, not the request.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-connection", "proxy-authenticate", "proxy-authorization"}
# Per-server plugin state that each replica must create for itself (the API-server process of each replica
# sets them for its own engine core and workers); inherited values would make replicas share a metrics dir.
_REPLICA_OWNED_ENV = ("VLLM_VTPRUNE_CONFIG", "VLLM_VTPRUNE_METRICS_DIR")


def parse_vllm_args(model: str, vllm_args: Sequence[str], *, configure_logging: bool = False):
    """``vllm serve MODEL *vllm_args`` parsed by vLLM's own parser (plugin flags included) and validated, as
    vLLM's API-server ``main`` does (with ``configure_logging``: its logging set-up too, which child processes
    inherit through ``args.logging_config``)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    args = parser.parse_args([model, *vllm_args])
    args.model = args.model_tag  # as `vllm serve` does
    if configure_logging:
        configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    AsyncEngineArgs.from_cli_args(args)  # the plugin validates its --vtprune-* flags here, before any engine
    return args


class VllmReplica:
    """One vLLM OpenAI server, in-process in a Ray Serve replica."""

    async def __init__(self, model: str, vllm_args: Sequence[str]):
        for name in _REPLICA_OWNED_ENV:
            os.environ.pop(name, None)
        _normal_priority()
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # what `vllm serve` sets (cli_env_setup)

        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
        from vllm.entrypoints.launchers.app import build_app

        self.replica_id = serve.get_replica_context().replica_id.unique_id
        args = parse_vllm_args(model, vllm_args, configure_logging=True)
        self._engine_context = build_async_engine_client(args)
        self.engine = await self._engine_context.__aenter__()
        self._lifespan = None
        try:
            tasks = await self.engine.get_supported_tasks()
            self.app = build_app(args, tasks, self.engine.model_config)
            await init_app_state(self.engine, self.app.state, args, tasks)
            self._lifespan = self.app.router.lifespan_context(self.app)
            await self._lifespan.__aenter__()
        except BaseException:
            await self._shutdown()
            raise
        logger.info("vLLM replica %s (pid %d) serves %s", self.replica_id, os.getpid(), model)

    async def forward(self, request: Mapping[str, Any], stream_key: str | None = None) -> AsyncIterator[dict | bytes]:
        """Run one HTTP request through vLLM's app; ``stream_key`` is only echoed in a response header."""
        async for item in call_asgi(self.app, method=request["method"], path=request["path"],
                                    query_string=request["query_string"], headers=request["headers"],
                                    body=request["body"], client=tuple(request.get("client") or ("127.0.0.1", 0))):
            if isinstance(item, dict):
                extra = [(REPLICA_HEADER, self.replica_id)]
                if stream_key:
                    extra.append((STREAM_KEY_HEADER, stream_key))
                item = {**item, "headers": [*_without_hop_by_hop(item["headers"]), *extra]}
            yield item

    async def check_health(self) -> None:  # Ray Serve's health check: a dead engine restarts the replica
        await self.engine.check_health()

    async def __del__(self):
        await self._shutdown()

    async def _shutdown(self) -> None:
        lifespan, self._lifespan = getattr(self, "_lifespan", None), None
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)
        engine_context, self._engine_context = getattr(self, "_engine_context", None), None
        if engine_context is not None:
            await engine_context.__aexit__(None, None, None)  # stops the engine core and its workers


def _normal_priority() -> None:
    """Ray starts worker processes at niceness 15 (``RAY_worker_niceness``), and vLLM's engine core and
    workers inherit it from the replica: on a busy host they then get a small share of their cores (here, a
    replica's start-up took minutes instead of seconds). The engine is the workload, so run it at normal
    priority when allowed."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError as e:
        logger.warning("vLLM replica runs at niceness %d (%s); start Ray with RAY_worker_niceness=0 to avoid it",
                       os.getpriority(os.PRIO_PROCESS, 0), e)


def _without_hop_by_hop(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]


@serve.ingress()
class StreamIngress:
    """The HTTP entry point: forwards each request to the replica its stream key maps to."""

    def __init__(self, replicas: DeploymentHandle):
        self.replicas = replicas

    def __serve_build_asgi_app__(self):
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, StreamingResponse
        from starlette.routing import Route

        async def forward(request: Request):
            body = await request.body()
            key = stream_key(request.headers, body)
            payload = {
                "method": request.method,
                "path": request.url.path,
                "query_string": request.url.query.encode(),
                "headers": _without_hop_by_hop(request.headers.items()),
                "body": body,
                "client": tuple(request.client) if request.client else None,
            }
            handle = self.replicas.options(stream=True, session_id=key) if key else self.replicas.options(stream=True)
            responses = handle.forward.remote(payload, stream_key=key)
            try:
                start = await responses.__anext__()
            except StopAsyncIteration:
                return PlainTextResponse("vLLM replica returned no response", status_code=502)
            except Exception as e:
                logger.exception("forwarding %s %s failed", request.method, request.url.path)
                return PlainTextResponse(f"vLLM replica failed: {type(e).__name__}: {e}", status_code=502)

            async def rest() -> AsyncIterator[bytes]:
                try:
                    async for chunk in responses:
                        yield chunk
                finally:
                    responses.cancel()  # no-op when finished; stops the replica's work when the client left

            response = StreamingResponse(rest(), status_code=start["status"])
            response.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in start["headers"]]
            return response

        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


def build_application(
    model: str,
    vllm_args: Sequence[str],
    *,
    replicas: int = 2,
    replica_num_cpus: float = 1.0,
    replica_num_gpus: float = 0.0,
    ingress_replicas: int = 1,
    max_ongoing_requests: int = 256,
    env: Mapping[str, str] | None = None,
):
    """The Ray Serve application: ``serve.run(build_application(...), route_prefix="/")``.

    ``replica_num_gpus`` is what Ray reserves per replica: on GPUs, the replica's tensor-parallel size
    (vLLM's multiprocess executor then runs its workers on those GPUs, inside the replica's reservation).
    ``env`` goes to every replica's runtime environment (e.g. ``VLLM_*`` settings of the engine).
    """
    actor_options: dict[str, Any] = {"num_cpus": replica_num_cpus, "num_gpus": replica_num_gpus}
    if env:
        actor_options["runtime_env"] = {"env_vars": dict(env)}
    replica = serve.deployment(VllmReplica).options(
        name="VllmReplica",
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing_requests,  # vLLM batches and queues internally; a full replica holds
                                                     # its streams' requests back (no fallback replica)
        ray_actor_options=actor_options,
        request_router_config=RequestRouterConfig(request_router_class=ROUTER_CLASS,
                                                  request_router_kwargs=ROUTER_KWARGS),
        health_check_period_s=10,
        health_check_timeout_s=60,
        graceful_shutdown_timeout_s=60,
    )
    ingress = serve.deployment(StreamIngress).options(
        name="StreamIngress",
        num_replicas=ingress_replicas,
        max_ongoing_requests=max(1000, max_ongoing_requests * replicas),
        ray_actor_options={"num_cpus": 0},
    )
    return ingress.bind(replica.bind(model, list(vllm_args)))
