"""Layer 4b: the ASGI app behind tumor-serve and its request batching (independent of cli/)."""
