"""Serving AnyGPT over HTTP: request parsing, batched rounds, the ASGI app (serve.py runs it)."""
