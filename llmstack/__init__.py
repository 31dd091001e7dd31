"""llmstack: a local multi-tier LLM stack in one process.

Layers, each importing only those before it: ``settings`` and ``errors`` <- ``config``
<- ``models`` <- ``serving`` <- ``project`` <- ``cli`` (see the README's Architecture).
"""

__version__ = "0.1.0"
