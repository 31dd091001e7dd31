"""Generic on-demand model process swapper (a llama-swap replacement)."""
