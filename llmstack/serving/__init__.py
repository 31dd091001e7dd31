"""The running stack: one ASGI app over the swapper, auto routing, hosted and remote tiers."""
