"""``trainlab export`` (a model folder as a clean Hugging Face folder) and ``trainlab serve`` (an OpenAI-compatible
server, the ``serve`` extra: FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainlab.cli.app import JsonOpt, _emit, _say, app
from trainlab.errors import UserError


@app.command()
def export(
    model: Annotated[Path, typer.Option("--model", "-m", help="model folder (or a run folder holding model/)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to write (replaced if it exists)")],
    dtype: Annotated[str | None, typer.Option("--dtype", help="bf16 | fp16 | fp32 (default: the folder's)")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="--model is a PEFT run (or adapter) folder: merge its "
                                        "adapter into its base model and export that")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a model as a clean Hugging Face folder: weights, config, tokenizer with its chat template, and a
    generation_config.json whose eos ids include the chat template's end-of-turn token."""
    from trainlab.recipes.export import export_model

    summary = export_model(model, out, dtype=dtype, merge=merge)
    if as_json:
        _emit(summary, True)
        return
    eot = f", chat end-of-turn {summary['end_of_turn']}" if summary["end_of_turn"] else ""
    _say(f"exported {summary['architecture']} ({summary['dtype']}) to {summary['out']}: eos ids "
         f"{summary['eos_token_id']}{eot}")


def _serve_modules() -> tuple[object, object]:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("trainlab serve needs FastAPI and uvicorn: pip install 'trainlab[serve]'") from None
    from trainlab.serve import app as serve_app

    return serve_app, uvicorn


@app.command()
def serve(
    model: Annotated[Path, typer.Option("--model", "-m", help="model folder (or a run folder holding model/)")],
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="TRAINLAB_API_KEY",
                                                help="require 'Authorization: Bearer KEY' on /v1 routes")] = None,
    name: Annotated[str | None, typer.Option("--name", help="model id clients send (default: the folder name)")]
    = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")] = "auto",
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="rows (choices) of concurrent requests "
                                           "decoded together; 1: one request at a time")] = 8,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="requests admitted (waiting or decoding); "
                                           "more get 503")] = 64,
) -> None:
    """Serve a model behind an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models,
    /health)."""
    serve_app, uvicorn = _serve_modules()
    from trainlab.recipes.export import load_with_tokenizer, resolve_model_folder
    from trainlab.serve.engine import Engine
    from trainlab.train.device import resolve_device

    folder = resolve_model_folder(model)
    loaded, tokenizer = load_with_tokenizer(folder, device=str(resolve_device(device)))
    engine = Engine(loaded, tokenizer, name=name or folder.resolve().name)
    for note in engine.check.notes:
        _say(f"note: {note}")
    _say(f"serving {engine.name} (stops at ids {engine.check.stop_ids}) on http://{host}:{port}/v1 "
         f"(Ctrl-C to stop)")
    application = serve_app.create_app(engine, api_key=api_key, max_batch=max_batch,  # type: ignore[attr-defined]
                                       max_queue=max_queue)
    uvicorn.run(application, host=host, port=port, log_level="warning")  # type: ignore[attr-defined]
