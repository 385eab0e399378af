"""Several plugin-enabled vLLM replicas behind one endpoint, with Ray Serve.

``python -m vllm_vtprune.serve MODEL --replicas N -- <vllm serve args>`` (see ``__main__``). Each replica is
vLLM's own engine and OpenAI app (``deployment.VllmReplica``); requests of one stream id always reach the
same replica (the key: ``routing.stream_key``; the routing: Ray Serve's own consistent-hash router), so the
plugin's per-process state — stream state and per-worker caches — is used; requests without one are spread
over the replicas.

Needs the ``ray`` extra (``ray[default,serve]==2.60.0``). Importing this package does not import Ray; its
submodules ``deployment`` and ``__main__`` do.
"""

from vllm_vtprune.serve.routing import REPLICA_HEADER, STREAM_HEADER, stream_key

__all__ = ["REPLICA_HEADER", "STREAM_HEADER", "stream_key"]
