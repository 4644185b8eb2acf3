"""The OpenAI-compatible HTTP API over an :class:`~trainlab.serve.engine.Engine` (FastAPI).

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``
(OpenAI API reference). ``stream: true`` answers server-sent events, one ``chat.completion.chunk``
(or ``text_completion``) JSON object per ``data:`` line, the first delta of each choice carrying the
role, the last its ``finish_reason``, then ``data: [DONE]``; ``stream_options.include_usage`` adds a
usage chunk with no choices before it. ``usage`` counts the prompt's tokens once and every
generated token of every choice (the stop token included).

Every refusal is a 4xx with an OpenAI error body (``{"error": {"message", "type", "param", "code"}}``):
invalid JSON or fields 400, an unknown model 404, a missing or wrong bearer token 401 (when the server
has an API key; ``/health`` stays open), a prompt past the context 400 ``context_length_exceeded``.
Generation runs on the batcher's thread (:mod:`~trainlab.serve.batching`: concurrent requests decoded
together, at most ``max_queue`` admitted, 503 beyond), so the server keeps answering while requests
decode; a client that disconnects stops its rows at the next token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from trainlab.serve.batching import Batcher, QueueFull
from trainlab.serve.engine import Choice, Engine, Job, RequestError
from trainlab.serve.protocol import ChatCompletionRequest, CompletionRequest, error_body


def _error(status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param=param, code=code), status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid" or not loc:
        reason = first.get("ctx", {}).get("error", first.get("msg"))
        return f"invalid JSON body (expected a JSON object): {reason}", None
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    return (f"{param}: {msg}" if param else msg), param


def _usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    completion = sum(len(c.token_ids) for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _submit(batcher: Batcher, job: Job, done: Callable[[BaseException | None], None]) -> None:
    try:
        batcher.submit(job, done)
    except QueueFull as exc:
        raise RequestError(str(exc), status=503, code="overloaded", type_="server_error") from None


async def _generate(batcher: Batcher, job: Job) -> list[Choice]:
    """``job``'s choices, decoded by ``batcher`` (a 503 when its queue is full)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(None)

    _submit(batcher, job, lambda error: loop.call_soon_threadsafe(settle, error))
    try:
        await future
    except asyncio.CancelledError:  # the client went away
        job.cancelled.set()
        raise
    return job.choices


def create_app(engine: Engine, *, api_key: str | None = None, max_batch: int = 8, max_queue: int = 64) -> FastAPI:
    """The FastAPI app serving ``engine`` (``api_key``: every ``/v1`` request needs ``Bearer api_key``;
    ``max_batch`` rows decoded together, ``max_queue`` requests admitted: :class:`~trainlab.serve.batching.Batcher`).
    """
    batcher = Batcher(engine, max_batch=max_batch, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(title="trainlab serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher = batcher
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), code=None)

    @app.exception_handler(RequestError)
    async def _refused(_: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc), type_=exc.type, param=exc.param, code=exc.code)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if api_key is not None and request.url.path.startswith("/v1"):
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return _error(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                              code="invalid_api_key")
        return await call_next(request)

    def check_model(name: str | None) -> None:
        if name is not None and name != engine.name:
            raise RequestError(f"The model `{name}` does not exist (this server serves `{engine.name}`)",
                               status=404, param="model", code="model_not_found")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": engine.name, "object": "model", "created": created, "owned_by": "trainlab",
                "max_model_len": engine.context}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest) -> Any:
        check_model(body.model)
        try:
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        except ValueError as exc:
            raise RequestError(str(exc), param="messages") from None
        ids = engine.chat_prompt(messages)
        budget = engine.token_budget(len(ids), body.token_limit, param="messages")
        rid, model = f"chatcmpl-{uuid.uuid4().hex}", engine.name
        kw = dict(max_tokens=budget, temperature=body.temperature, top_p=body.top_p, n=body.n, seed=body.seed,
                  stop=body.stop_list)
        if not body.stream:
            choices = await _generate(batcher, Job(ids, **kw))
            return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                    "system_fingerprint": None,
                    "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                                 "logprobs": None, "finish_reason": c.finish_reason} for c in choices],
                    "usage": _usage(len(ids), choices)}

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                    "system_fingerprint": None, "choices": choices, **extra}

        def delta(index: int, text: str) -> dict[str, Any]:
            return chunk([{"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])

        def first() -> list[dict[str, Any]]:
            return [chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None}]) for i in range(body.n)]

        def last(choices: list[Choice]) -> list[dict[str, Any]]:
            out = [chunk([{"index": c.index, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}])
                   for c in choices]
            if body.include_usage:
                out.append(chunk([], usage=_usage(len(ids), choices)))
            return out

        return _stream(batcher, Job(ids, **kw), first, delta, last)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        check_model(body.model)
        prompts = body.prompts
        if not prompts:
            raise RequestError("prompt is empty", param="prompt")
        encoded = [engine.text_prompt(p) for p in prompts]
        budgets = [engine.token_budget(len(ids), body.token_limit, param="prompt") for ids in encoded]
        rid, model = f"cmpl-{uuid.uuid4().hex}", engine.name

        def kw(budget: int) -> dict[str, Any]:
            return dict(max_tokens=budget, temperature=body.temperature, top_p=body.top_p, n=body.n, seed=body.seed,
                        stop=body.stop_list)

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                    "system_fingerprint": None, "choices": choices, **extra}

        def item(index: int, text: str, finish: str | None) -> dict[str, Any]:
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

        if not body.stream:
            all_choices: list[dict[str, Any]] = []
            prompt_tokens, completion_tokens = 0, 0
            jobs = [Job(ids, **kw(budget)) for ids, budget in zip(encoded, budgets, strict=True)]
            answers = await asyncio.gather(*(_generate(batcher, job) for job in jobs))  # batched together
            for p, (ids, choices) in enumerate(zip(encoded, answers, strict=True)):
                all_choices += [item(p * body.n + c.index, c.text, c.finish_reason) for c in choices]
                prompt_tokens += len(ids)
                completion_tokens += sum(len(c.token_ids) for c in choices)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}
            return chunk(all_choices, usage=usage)
        if len(prompts) != 1:
            raise RequestError("stream: true takes one prompt", param="prompt")
        ids = encoded[0]
        return _stream(batcher, Job(ids, **kw(budgets[0])), lambda: [],
                       lambda i, text: chunk([item(i, text, None)]),
                       lambda choices: [chunk([item(c.index, "", c.finish_reason)]) for c in choices]
                       + ([chunk([], usage=_usage(len(ids), choices))] if body.include_usage else []))

    return app


def _stream(batcher: Batcher, job: Job, first: Any, delta: Any, last: Any) -> StreamingResponse:
    """Server-sent events: ``first()`` chunks, a ``delta(index, text)`` chunk per new text, ``last(choices)``
    chunks, ``[DONE]``. The job is queued now (a full queue is a 503 before any event); a client that
    disconnects cancels it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_delta(index: int, text: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ("delta", (index, text)))

    def done(error: BaseException | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ("error", error) if error is not None else ("done", job.choices))

    job.on_delta = on_delta
    _submit(batcher, job, done)

    async def events() -> AsyncIterator[str]:
        try:
            for obj in first():
                yield _sse(obj)
            while True:
                kind, value = await queue.get()
                if kind == "delta":
                    yield _sse(delta(*value))
                    continue
                if kind == "error":  # the status line has been sent already: the error goes in the stream
                    yield _sse(error_body(f"generation failed: {value}", "server_error"))
                else:
                    for obj in last(value):
                        yield _sse(obj)
                yield "data: [DONE]\n\n"
                break
        finally:
            job.cancelled.set()  # a no-op when done; else its rows finish at the next token

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
