"""Side-by-side serving benchmarks: vanilla vLLM against ``--plugin vtprune``, on real ``vllm serve`` processes.

``python -m benchmarks.serving`` (``make bench``) runs the default suite; ``--help`` lists the knobs. Modules:

- :mod:`.plan`: configurations (vanilla, plugin method x retention), points (configuration x concurrency).
- :mod:`.media`: the request videos (generated, redundant, unique per request so no cache is hit by accident).
- :mod:`.client`: streaming OpenAI chat requests, closed-loop at a fixed concurrency.
- :mod:`.prom`: ``/metrics`` parsing and deltas; :mod:`.memory`: peak RSS of a server's process tree.
- :mod:`.servers`: server command lines, several servers started side by side.
- :mod:`.suite`: the serving sweep; :mod:`.streaming`: the streaming-session benchmark (`grow` and `chunks`).
- :mod:`.stats`: per-point figures, where a request's time goes (API server, queue, tower, selection, prefill,
  decode), medians over repeats, ratios to vanilla.
- :mod:`.report`, :mod:`.plots`: JSON, markdown and PNG outputs; :mod:`.vllm_bench`: ``vllm bench serve`` files.
"""
