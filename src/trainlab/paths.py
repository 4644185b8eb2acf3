"""Where trainlab keeps things it builds once and reuses (the embedded tokenizer and base model)."""

from __future__ import annotations

import os
from pathlib import Path


def trainlab_home() -> Path:
    """``$TRAINLAB_HOME``, else ``$XDG_CACHE_HOME/trainlab``, else ``~/.cache/trainlab``."""
    env = os.environ.get("TRAINLAB_HOME")
    if env:
        root = Path(env)
    else:
        cache = os.environ.get("XDG_CACHE_HOME")
        root = Path(cache) / "trainlab" if cache else Path.home() / ".cache" / "trainlab"
    root.mkdir(parents=True, exist_ok=True)
    return root
