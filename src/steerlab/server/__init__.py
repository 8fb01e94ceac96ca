"""Serve steered generation over HTTP: OpenAI-style endpoints with per-request steering, and a playground page.

`steerlab.server.app.create_app(lm, registry)` builds the app; `steerlab serve` runs it. The package
itself imports nothing heavy, so the main CLI loads without the server's optional dependencies.
"""
