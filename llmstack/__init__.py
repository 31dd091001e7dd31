"""llmstack: a local multi-tier LLM stack in one process."""

__version__ = "0.1.0"
