"""``python -m vllm_vtprune.serve MODEL --replicas N [--port P] -- <vllm serve args>``

Serves N replicas of ``vllm serve MODEL <vllm serve args>`` with Ray Serve behind one HTTP endpoint, routing
each stream to one replica (:mod:`vllm_vtprune.serve.routing`). Connects to the Ray cluster named by
``--ray-address`` / ``RAY_ADDRESS``, else starts a local one for the lifetime of this command. Stops on
SIGINT/SIGTERM: deletes the application (and shuts down the local cluster it started).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from vllm_vtprune.serve.deployment import _REPLICA_OWNED_ENV, build_application, parse_vllm_args

APP_NAME = "vtprune"
logger = logging.getLogger("vllm_vtprune.serve")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        split = argv.index("--")
        own, vllm_args = argv[:split], argv[split + 1:]
    else:
        own, vllm_args = argv, []
    parser = argparse.ArgumentParser(
        prog="python -m vllm_vtprune.serve",
        description="Serve N `vllm serve` replicas with Ray Serve; requests of one stream id go to one replica.",
        epilog="Everything after `--` is passed to each replica as `vllm serve MODEL <args>`, "
               "e.g. `-- --plugin vtprune --vtprune-preset stc --max-model-len 32768`.",
    )
    parser.add_argument("model")
    parser.add_argument("--replicas", type=int, default=2, help="number of vLLM replicas (default 2)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host of the Ray Serve proxy")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port of the Ray Serve proxy")
    parser.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"),
                        help="existing Ray cluster (default: $RAY_ADDRESS, else start a local one)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="logical CPUs of a local cluster (default: max(cores, replicas x replica CPUs))")
    parser.add_argument("--replica-num-cpus", type=float, default=1.0, help="Ray CPUs reserved per replica")
    parser.add_argument("--replica-num-gpus", type=float, default=0.0,
                        help="Ray GPUs reserved per replica: its --tensor-parallel-size on GPU machines")
    parser.add_argument("--ingress-replicas", type=int, default=1)
    parser.add_argument("--max-ongoing-requests", type=int, default=256, help="per replica")
    args = parser.parse_args(own)
    if args.replicas < 1:
        parser.error("--replicas must be >= 1")
    return args, vllm_args


def replica_env() -> dict[str, str]:
    """What vLLM's Ray executor copies to its workers (``VLLM_*``), minus the plugin's per-server state."""
    return {k: v for k, v in os.environ.items() if k.startswith("VLLM_") and k not in _REPLICA_OWNED_ENV}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args, vllm_args = parse_args(sys.argv[1:] if argv is None else argv)
    parse_vllm_args(args.model, vllm_args)  # a bad flag fails here, before any cluster or replica starts

    import ray
    from ray import serve

    local = not args.ray_address
    if local:
        os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default 15 starves the engines on a busy host
        num_cpus = args.num_cpus or max(os.cpu_count() or 1, int(args.replicas * args.replica_num_cpus + 0.999))
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    else:
        ray.init(address=args.ray_address)

    stop, ready = threading.Event(), threading.Event()

    def on_signal(*_) -> None:
        stop.set()
        if not ready.is_set():  # interrupt a start-up in progress; `finally` below cleans up
            raise KeyboardInterrupt

    # After ray.init: its core worker installs a crash handler for SIGTERM that ends the process once it has
    # run; ours replaces it, so that SIGTERM shuts the application and the local cluster down cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        app = build_application(
            args.model, vllm_args, replicas=args.replicas, replica_num_cpus=args.replica_num_cpus,
            replica_num_gpus=args.replica_num_gpus, ingress_replicas=args.ingress_replicas,
            max_ongoing_requests=args.max_ongoing_requests, env=None if local else replica_env(),
        )
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        ready.set()
        print(f"vtprune: {args.replicas} vLLM replica(s) of {args.model} ready on http://{args.host}:{args.port}",
              flush=True)
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        ready.set()  # a second signal no longer interrupts the clean-up
        logger.info("shutting down the %s application", APP_NAME)
        try:
            if local:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
