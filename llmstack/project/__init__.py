"""A project's llmstack state on disk, and its stack as a process (foreground or background)."""
