"""``trainlab serve``: a model folder behind an OpenAI-compatible HTTP API (FastAPI + uvicorn, the ``serve`` extra).

* :mod:`~trainlab.serve.protocol`: the request bodies (pydantic) and OpenAI error bodies;
* :mod:`~trainlab.serve.engine`: prompts to choices on the model's KV cache, stop ids and the pre-serving
  check (:func:`~trainlab.serve.engine.check_stops`);
* :mod:`~trainlab.serve.stepper`: continuous batching (requests join the running batch between decode steps
  and leave when done); :mod:`~trainlab.serve.batching`: the bounded queue and worker thread that drive it;
* :mod:`~trainlab.serve.app`: the routes (:func:`~trainlab.serve.app.create_app`);
  :mod:`~trainlab.serve.local`: a loopback server for a ``with`` block (lab 1.8).

This package imports FastAPI only in :mod:`~trainlab.serve.app`; ``import trainlab`` never needs it.
"""

from __future__ import annotations

from trainlab.serve.engine import Engine, RequestError, StopCheck, check_stops, context_length

__all__ = ["Engine", "RequestError", "StopCheck", "check_stops", "context_length"]
