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


def check_out_outside_inputs(out_dir: str | Path, inputs: dict[str, str | Path | None], *, action: str) -> None:
    """The one rule for every command that writes ``--out`` from input folders: ``--out`` may not be, contain
    or lie inside an input (``inputs``: option name -> folder), so no command writes over or into what it
    reads. ``action`` says what would happen (``"training"``, ``"the export"``). Raises `UserError`."""
    from trainlab.errors import UserError

    out = Path(out_dir).expanduser().resolve()
    for option, path in inputs.items():
        if path is None:
            continue
        src = Path(path).expanduser().resolve()
        if src == out or src.is_relative_to(out):
            raise UserError(f"--out {out_dir} {'is' if src == out else 'contains'} the {option} folder {path}: "
                            f"{action} would write over its input; choose another --out")
        if out.is_relative_to(src):
            raise UserError(f"--out {out_dir} is inside the {option} folder {path}: {action} would write into its "
                            "input; choose a folder outside it")
