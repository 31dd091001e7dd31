"""Agent sessions survive swaps: a llama-server child's slot KV caches saved when it stops and
restored on a returning session's first request (issue 21; design in the module docstrings).

- :mod:`.keys`: what a saved cache depends on (binary, model file, KV-shaping flags) and
  which session a request belongs to.
- :mod:`.store`: the files on disk, their sidecars, and least-recently-used eviction under a cap.
- :mod:`.slots`: the calls to a child's ``/slots`` and ``/props``, each bounded in time.
- :mod:`.table`: which session holds which slot of a running child.
- :mod:`.verify`: whether a restore was used, from the first answer's ``timings``.
- :mod:`.cache`: the pieces put together, for the manager and the proxy to call.
"""
