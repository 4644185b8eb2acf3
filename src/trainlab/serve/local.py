"""A server on the loopback interface for the length of a ``with`` block, and a plain-HTTP client for it.

What lab 1.8 uses to ask its aligned model questions *through the endpoint* (the path a user's ``openai``
client or curl takes: HTTP, JSON, the server's tokenization and batching), and what the tests and the
serving benchmark do by hand: uvicorn serving :func:`~trainlab.serve.app.create_app` in a daemon thread on
a free ``127.0.0.1`` port. The client is the standard library's ``urllib`` (no extra dependency beyond the
``serve`` extra the server needs).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from trainlab.serve.engine import Engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_server(engine: Engine, *, max_batch: int = 8, max_queue: int = 64, start_timeout_s: float = 30.0
                 ) -> Iterator[str]:
    """Serve ``engine`` on ``127.0.0.1`` while the block runs; yields the base URL (``http://127.0.0.1:PORT``).

    Needs the ``serve`` extra (FastAPI, uvicorn): ImportError otherwise.
    """
    import uvicorn

    from trainlab.serve.app import create_app

    app = create_app(engine, max_batch=max_batch, max_queue=max_queue)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="trainlab-local-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the local server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def post_json(url: str, body: dict[str, Any], *, timeout: float = 120.0) -> dict[str, Any]:
    """POST ``body`` as JSON, return the JSON answer (an HTTP error raises ``urllib.error.HTTPError``)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return dict(json.loads(resp.read().decode()))
