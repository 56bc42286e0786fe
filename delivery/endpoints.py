"""The notify endpoints on the event loop (bouncer/asgi.py routes these paths here)."""

from bouncer.asgi_io import Endpoint

ROUTES: dict[str, Endpoint] = {}
