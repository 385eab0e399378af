"""Accuracy of the pruning methods over the OpenAI API: vanilla vLLM against ``--plugin vtprune``.

``python -m benchmarks.accuracy`` (``make bench-accuracy``); ``--help`` lists the knobs. Modules:

- :mod:`.dataset`: the built-in synthetic questions, or a local VideoMME-style JSON/JSONL; answer parsing.
- :mod:`.client`: configurations, and every question under every configuration, a few in flight per server.
- :mod:`.suite`: the configuration list and one measurement; :mod:`.stats`: Wilson intervals, ratios.
- :mod:`.report`, :mod:`.plots`: markdown and PNG; :mod:`.cli`: servers side by side, outputs.
"""
