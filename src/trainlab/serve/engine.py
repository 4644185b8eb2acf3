"""The model behind the server: prompts in, choices out, through trainlab's own generation.

Prompt ids are :func:`trainlab.model.text.prompt_ids` of the text (for chat: the tokenizer's chat
template rendered with ``add_generation_prompt=True``), so a request gives the tokens
``trainlab generate`` gives for the same text. Decoding runs the model's KV-cache hooks
(``init_cache``/``decode_step``, as :func:`trainlab.model.generate.generate` does) through a
:class:`~trainlab.serve.stepper.Stepper`: a job's ``n`` rows are prefilled, then decoded one step at a
time beside whatever else is running; :meth:`Engine.accept_token` takes each new token, streams text and
finishes a row. A row ends at (``finish_reason``):

* ``"stop"``: one of :func:`~trainlab.model.text.stop_token_ids` (the model's eos ids, the
  tokenizer's eos, the chat template's end-of-turn token), or a ``stop`` string (the text is cut
  before it, as the OpenAI API does);
* ``"length"``: ``max_tokens`` new tokens, or the end of the model's context.

Streamed text is the decoded row minus what was already sent, held back while it ends in an
incomplete UTF-8 character or in the beginning of a ``stop`` string. The model runs one step at a time
(``Engine.lock``): :meth:`Engine.run` decodes the jobs it is given to the end; the server's batcher
(:mod:`~trainlab.serve.batching`) lets requests join and leave between steps.

Before serving, :func:`check_stops` refuses a model that cannot stop (no eos id anywhere) and notes
what would make other tools run past the end of an answer (see its docstring).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from trainlab.errors import UserError
from trainlab.model.text import chat_end_of_turn_id, pad_id, prompt_ids, stop_token_ids

#: ``on_delta(row, text)``: new text of choice ``row`` (streaming).
DeltaHook = Callable[[int, str], None]


class RequestError(Exception):
    """A request the server refuses (an HTTP 4xx with an OpenAI error body)."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type_


@dataclass
class StopCheck:
    """What :func:`check_stops` found: the stop ids, the chat end-of-turn token, notes for the user."""

    stop_ids: list[int]
    end_of_turn: str | None
    chat_template: bool
    notes: list[str] = field(default_factory=list)


def check_stops(model: Any, tokenizer: Any) -> StopCheck:
    """Refuse a model whose generation cannot stop; note EOS / chat-template inconsistencies.

    * no eos id in ``generation_config.json``, ``config.json`` or the tokenizer, and no chat
      end-of-turn token: nothing would ever end an answer (UserError);
    * a chat template whose assistant turns end in no special token: chat answers stop only at eos;
    * the template's end-of-turn token missing from the model's own eos ids (``generation_config.json``):
      the usual "never stops after SFT" bug of tools that read only that file; this server stops there
      anyway, and ``trainlab export`` writes the file with it;
    * no chat template: ``/v1/chat/completions`` is refused (``/v1/completions`` works).
    """
    stops = stop_token_ids(model, tokenizer)
    if not stops:
        raise UserError("the model cannot stop: no eos_token_id in generation_config.json or config.json, no eos "
                        "token in the tokenizer and no chat template end-of-turn token; set one (e.g. "
                        "generation_config.json eos_token_id) or export the model with `trainlab export`")
    template = bool(getattr(tokenizer, "chat_template", None))
    notes: list[str] = []
    eot_id = chat_end_of_turn_id(tokenizer) if template else None
    eot = None if eot_id is None else str(tokenizer.convert_ids_to_tokens(eot_id))
    if not template:
        notes.append("the tokenizer has no chat template: /v1/chat/completions is refused, use /v1/completions")
    elif eot_id is None:
        notes.append("the chat template ends an assistant turn with no special token: chat answers stop only at "
                     f"the eos ids {stops}")
    else:
        own = list(getattr(getattr(model, "source", None), "eos_token_ids", ()) or [])
        if own and eot_id not in own:
            notes.append(f"generation_config.json's eos ids {own} lack the chat template's end-of-turn {eot!r} "
                         f"({eot_id}): transformers' generate would run past the end of an answer; this server "
                         "stops there, and `trainlab export` writes a folder whose generation config has it")
    return StopCheck(stop_ids=stops, end_of_turn=eot, chat_template=template, notes=notes)


def context_length(model: Any) -> int | None:
    """The longest sequence the model takes (positions), None when its config names no limit."""
    cfg = getattr(model, "config", None)
    for name in ("max_seq_len", "max_position_embeddings", "n_positions"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class Choice:
    """One generated answer: its new token ids (the stop token included), text and why it ended."""

    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    sent: int = 0  # characters of text already streamed


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters may not be sent yet: an incomplete character, or a stop string's start."""
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class Engine:
    """A loaded model and tokenizer answering prompts (thread-safe: one generation at a time)."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.check = check_stops(model, tokenizer)
        self.context = context_length(model)
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()

    # ---- prompts -------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template's rendering of ``messages`` plus the assistant's header, as ids."""
        if not self.check.chat_template:
            raise RequestError("this model's tokenizer has no chat template: use /v1/completions",
                               param="messages", code="no_chat_template")
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja's TemplateError, raise_exception() in templates, ...
            raise RequestError(f"the chat template refused these messages: {exc}", param="messages") from None
        ids = prompt_ids(self.tokenizer, str(text))
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None and ids[:2] == [bos, bos]:  # the template wrote a BOS and the tokenizer added one
            ids = ids[1:]
        return ids

    def text_prompt(self, prompt: str) -> list[int]:
        ids = prompt_ids(self.tokenizer, prompt)
        if not ids:
            raise RequestError("the prompt is empty (this tokenizer adds no BOS)", param="prompt")
        return ids

    def token_budget(self, prompt_len: int, requested: int | None, *, param: str = "messages") -> int:
        """``max_tokens`` for a prompt: the requested count, else what the context leaves (400 past it)."""
        if self.context is None:
            return requested if requested is not None else 512
        room = self.context - prompt_len
        if room <= 0 or (requested is not None and requested > room):
            asked = f", and {requested} in the completion" if requested is not None else ""
            raise RequestError(f"This model's maximum context length is {self.context} tokens. However, you "
                               f"requested {prompt_len + (requested or 0)} tokens ({prompt_len} in the "
                               f"prompt{asked}). Please reduce the length of the prompt or the completion.",
                               param=param, code="context_length_exceeded")
        return requested if requested is not None else room

    # ---- generation ----------------------------------------------------------------------------

    def generate(self, ids: list[int], *, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0, n: int = 1,
                 seed: int | None = None, stop: Sequence[str] = (), on_delta: DeltaHook | None = None,
                 cancelled: threading.Event | None = None) -> list[Choice]:
        """``n`` answers to the prompt ``ids`` (see the module docstring)."""
        job = Job(ids, max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=n, seed=seed, stop=stop,
                  on_delta=on_delta, cancelled=cancelled or threading.Event())
        self.run([job])
        return job.choices

    @property
    def pad_id(self) -> int:
        return pad_id(self.tokenizer)

    def run(self, jobs: Sequence[Job]) -> None:
        """Decode ``jobs`` together to the end (one left-padded prefill of every job's ``n`` rows, then decode
        steps on the KV cache, each job leaving when its rows are done); fills each job's ``choices``.
        The server's batcher drives the same :class:`~trainlab.serve.stepper.Stepper` step by step, letting
        jobs join between steps."""
        from trainlab.serve.stepper import Stepper

        with self.lock, torch.no_grad():
            stepper = Stepper(self)
            stepper.admit(jobs)
            while stepper.live:
                stepper.step()

    def accept_token(self, job: Job, c: Choice, tok: int) -> None:
        """Append ``tok`` to the unfinished choice ``c``; finish it at a stop id (``"stop"``), a ``stop`` string
        (the text cut before it), ``max_tokens`` or a cancelled client (``"length"``); stream the new text."""
        c.token_ids.append(tok)
        stop_ids = self.check.stop_ids
        body = c.token_ids[:-1] if tok in stop_ids else c.token_ids
        c.text = str(self.tokenizer.decode(body, skip_special_tokens=True))
        if tok in stop_ids:
            c.finish_reason = "stop"
        hits = [i for i in (c.text.find(s) for s in job.stop) if i >= 0]
        if hits:
            c.text, c.finish_reason = c.text[:min(hits)], "stop"
        if c.finish_reason is None and (len(c.token_ids) >= job.max_tokens or job.cancelled.is_set()):
            c.finish_reason = "length"
        final = c.finish_reason is not None
        end = len(c.text) if final else len(c.text) - _held_back(c.text, job.stop)
        if job.on_delta is not None and end > c.sent:
            job.on_delta(c.index, c.text[c.sent:end])
        c.sent = max(c.sent, end)


@dataclass
class Job:
    """One request's generation: the prompt ``ids`` answered ``n`` times (what :meth:`Engine.run` and the
    batcher's :class:`~trainlab.serve.stepper.Stepper` decode)."""

    ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: Sequence[str] = ()
    on_delta: DeltaHook | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    choices: list[Choice] = field(default_factory=list)
