"""`trainlab serve` against real clients: the official `openai` package and raw HTTP (httpx), on servers started
here (uvicorn in a thread on a free 127.0.0.1 port) for a tiny transformers Qwen2 (ChatML) and for our decoder
(Zephyr-style template, exported to the Llama layout).

References: greedy text through the server equals transformers' `generate(do_sample=False)` on the same folder
and prompt (the chat template rendered by the tokenizer, stops at the same ids) and trainlab's offline
`complete_prompts` (what `trainlab generate` runs); usage counts equal the tokenizer's counts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from _hf_tiny import hf_model_dir, make_tokenizer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from trainlab.config import ModelConfig  # noqa: E402
from trainlab.errors import UserError  # noqa: E402
from trainlab.model import Decoder, save_pretrained  # noqa: E402
from trainlab.model.text import complete_prompts, prompt_ids  # noqa: E402
from trainlab.recipes.export import load_with_tokenizer  # noqa: E402
from trainlab.serve import Engine, check_stops  # noqa: E402

CHAT = [{"role": "user", "content": "Sort the list: 3 1 2"}]
KEY = "sk-test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """uvicorn serving ``app`` in a daemon thread on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, api_key: str = "unused"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _randomize(folder: Path) -> None:
    """Weights of std 0.3: greedy output that depends on the prompt (the 0.02 init repeats one token)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    hf.save_pretrained(folder)


def _build(kind: str, folder: Path) -> Path:
    if kind == "qwen":
        hf_model_dir(folder, "qwen2")
        _randomize(folder)
    else:  # our decoder, with the Llama-style tokenizer (<s> added, turns end with </s>)
        tok = make_tokenizer("llama")
        torch.manual_seed(0)
        model = Decoder(ModelConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                                    max_seq_len=128, init_std=0.3, tie_embeddings=False))
        save_pretrained(model, folder, tokenizer=tok)
    return folder


@pytest.fixture(scope="module", params=["qwen", "decoder"])
def served(request, tmp_path_factory):
    from trainlab.serve.app import create_app

    folder = _build(request.param, tmp_path_factory.mktemp(request.param) / "model")
    model, tok = load_with_tokenizer(folder)
    engine = Engine(model, tok, name=request.param)
    server = _Server(create_app(engine))
    yield server, engine, folder
    server.stop()


def _transformers_greedy(folder: Path, text: str, max_new: int, stops: list[int]) -> tuple[list[int], list[int]]:
    """(prompt ids, new ids cut after the first stop) from transformers' greedy generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=stops,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stops[0])
    row = out[0, enc["input_ids"].shape[1]:].tolist()
    cut = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
    return enc["input_ids"][0].tolist(), row[:cut]


def _text(tok, ids: list[int], stops: list[int]) -> str:
    return tok.decode([t for t in ids if t not in stops], skip_special_tokens=True)


# ---- the openai client ------------------------------------------------------------------------


def test_models_and_health(served):
    server, engine, _ = served
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = server.client().models.list()
    assert [m.id for m in models.data] == [engine.name]


def test_chat_greedy_equals_transformers_and_offline_generate(served):
    server, engine, folder = served
    tok, stops = engine.tokenizer, engine.check.stop_ids
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ref_prompt, ref_new = _transformers_greedy(folder, text, 12, stops)
    r = server.client().chat.completions.create(model=engine.name, messages=CHAT, max_tokens=12, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == _text(tok, ref_new, stops)
    assert r.choices[0].message.content == complete_prompts(engine.model, tok, [text], max_new_tokens=12)[0]
    assert r.choices[0].finish_reason == ("stop" if ref_new[-1] in stops else "length")
    assert r.usage.prompt_tokens == len(ref_prompt) == len(prompt_ids(tok, text))
    assert r.usage.completion_tokens == len(ref_new)
    assert r.usage.total_tokens == len(ref_prompt) + len(ref_new)


def test_completion_greedy_equals_transformers(served):
    server, engine, folder = served
    prompt = "The quick brown fox"
    ref_prompt, ref_new = _transformers_greedy(folder, prompt, 10, engine.check.stop_ids)
    r = server.client().completions.create(model=engine.name, prompt=prompt, max_tokens=10, temperature=0)
    assert r.choices[0].text == _text(engine.tokenizer, ref_new, engine.check.stop_ids)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ref_prompt), len(ref_new))


def test_streaming_equals_the_whole_answer_and_n_choices(served):
    server, engine, _ = served
    client = server.client()
    kw = dict(model=engine.name, messages=CHAT, max_tokens=10, temperature=1.0, top_p=0.9, n=3, seed=7)
    whole = client.chat.completions.create(**kw)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    assert whole.usage.prompt_tokens == len(engine.chat_prompt(CHAT))  # counted once for n choices
    assert 3 <= whole.usage.completion_tokens <= 30
    again = client.chat.completions.create(**kw)
    assert [c.message.content for c in again.choices] == [c.message.content for c in whole.choices]
    parts: dict[int, str] = {0: "", 1: "", 2: ""}
    finish: dict[int, str] = {}
    usage = None
    for chunk in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts[c.index] += c.delta.content or ""
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    assert parts == {c.index: c.message.content for c in whole.choices}
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_stream_is_server_sent_events_ending_with_done(served):
    server, engine, _ = served
    body = {"model": engine.name, "messages": CHAT, "max_tokens": 6, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(line.startswith("data: ") for line in lines)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert len({c["id"] for c in chunks}) == 1


def test_stop_strings_cut_the_text(served):
    server, engine, _ = served
    client = server.client()
    kw = dict(model=engine.name, prompt="Hello, how are you", max_tokens=16, temperature=0)
    free = client.completions.create(**kw).choices[0].text
    assert len(free) >= 6, free
    stop = free[len(free) // 2: len(free) // 2 + 2]
    cut = free[: free.find(stop)]
    r = client.completions.create(**kw, stop=[stop, "never-in-the-text"])
    assert (r.choices[0].text, r.choices[0].finish_reason) == (cut, "stop")
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stop=stop, stream=True)
                       if c.choices)
    assert streamed == cut


# ---- errors (raw HTTP) ------------------------------------------------------------------------


def test_bad_requests_are_4xx_and_the_server_keeps_serving(served):
    server, engine, _ = served
    url = server.url + "/v1/chat/completions"
    good = {"model": engine.name, "messages": CHAT, "max_tokens": 2}

    r = httpx.post(url, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "invalid JSON" in r.json()["error"]["message"]
    assert httpx.post(url, json=good, timeout=60).status_code == 200

    r = httpx.post(url, json={**good, "model": "gpt-4"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(url, json={**good, "max_tokens": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(url, json={**good, "messages": [{"role": "user", "content": "fox " * 400}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(url, json={**good, "logprobs": True})
    assert r.status_code == 400 and "logprobs" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 10_000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    for r in (httpx.post(url, json={**good, "model": "gpt-4"}), httpx.get(server.url + "/v1/nothing")):
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.post(url, json=good, timeout=60).status_code == 200


def test_api_key(served):
    from trainlab.serve.app import create_app

    _, engine, _ = served
    server = _Server(create_app(engine, api_key=KEY))
    try:
        assert httpx.get(server.url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.get(server.url + "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").models.list()
        assert server.client(KEY).models.list().data[0].id == engine.name
    finally:
        server.stop()


# ---- concurrent requests ----------------------------------------------------------------------


def _wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_concurrent_requests_are_decoded_together_as_they_would_be_alone(served):
    """Requests that wait while the model is busy share one left-padded batch; each gets its solo answer."""
    from concurrent.futures import ThreadPoolExecutor

    server, engine, _ = served
    client = server.client()
    batcher = server.app.state.batcher
    asks = [dict(prompt=p, max_tokens=m, temperature=0, stop=s) for p, m, s in (
        ("The quick brown fox", 12, None), ("What is 2+3? The answer is", 5, None), ("Hi", 9, None),
        ("Once upon a time there was a small model", 12, None), ("Sort the list: 3 1 2 ->", 7, None),
        ("Hello, how are you", 16, ["e"]))]
    solo = [client.completions.create(model=engine.name, **a).choices[0] for a in asks]
    batches = batcher.stats.batches
    with ThreadPoolExecutor(len(asks)) as pool:
        with engine.lock:  # the model is busy: every request waits
            futures = [pool.submit(client.completions.create, model=engine.name, **a) for a in asks]
            _wait_for(lambda: batcher.admitted == len(asks), "requests were not admitted")
            assert httpx.get(server.url + "/health").status_code == 200  # still serving
        together = [f.result().choices[0] for f in futures]
    assert [(c.text, c.finish_reason) for c in together] == [(c.text, c.finish_reason) for c in solo]
    # the worker took what had arrived when it woke (then waited for the model), the rest came in one more batch
    assert batcher.stats.batches - batches <= 2


def test_a_full_queue_answers_503_and_the_admitted_requests_finish(served):
    from concurrent.futures import ThreadPoolExecutor

    from trainlab.serve.app import create_app

    _, engine, _ = served
    server = _Server(create_app(engine, max_batch=4, max_queue=2))
    body = {"model": engine.name, "messages": CHAT, "max_tokens": 3}
    url = server.url + "/v1/chat/completions"
    try:
        with ThreadPoolExecutor(2) as pool:
            with engine.lock:
                admitted = [pool.submit(httpx.post, url, json=body, timeout=60) for _ in range(2)]
                _wait_for(lambda: server.app.state.batcher.admitted == 2, "requests were not admitted")
                r = httpx.post(url, json=body)
                assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
                r = httpx.post(url, json={**body, "stream": True})
                assert r.status_code == 503
            assert [f.result().status_code for f in admitted] == [200, 200]
        assert httpx.post(url, json=body, timeout=60).status_code == 200
    finally:
        server.stop()


def test_many_streaming_clients_all_answered(served):
    """16 concurrent streaming clients, bounded in time: every stream ends with [DONE], none fails."""
    from concurrent.futures import ThreadPoolExecutor

    server, engine, _ = served

    def one(i: int) -> tuple[int, str]:
        body = {"model": engine.name, "prompt": f"{i} + {i} =", "max_tokens": 8, "temperature": 0.7,
                "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
            lines = [line for line in r.iter_lines() if line]
            return r.status_code, lines[-1]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert results == [(200, "data: [DONE]")] * 16


def test_a_cancelled_job_stops_at_the_next_token(served):
    """What a disconnecting client triggers: its rows finish at the next token, the others go on."""
    from trainlab.serve.engine import Job

    _, engine, _ = served
    ids = engine.text_prompt("The quick brown fox")
    keep = Job(ids, max_tokens=20, temperature=0, stop=())
    leave = Job(ids, max_tokens=20, temperature=0, n=2)
    leave.on_delta = lambda index, text: leave.cancelled.set()
    engine.run([keep, leave])
    free = engine.generate(ids, max_tokens=20, temperature=0)[0]
    assert [(c.text, c.finish_reason) for c in keep.choices] == [(free.text, free.finish_reason)]
    # the first text is sent at step k (row 0 cancels there); row 1 finishes at step k, row 0 at k + 1
    k = len(leave.choices[1].token_ids)
    assert len(free.token_ids) == 20 and k < 19
    assert [len(c.token_ids) for c in leave.choices] == [k + 1, k]
    assert [c.finish_reason for c in leave.choices] == ["length", "length"]


def _solo(engine, ids, **kw):
    return [(c.token_ids, c.text, c.finish_reason) for c in engine.generate(ids, **kw)]


def test_a_job_joining_mid_batch_gets_the_tokens_it_gets_alone(served):
    """Continuous batching on the engine: jobs join a running batch between decode steps (with a longer and a
    shorter prompt than the batch's width), leave when done, and each gets its solo tokens; a seeded sampled
    job draws what it draws alone."""
    from trainlab.serve.engine import Job
    from trainlab.serve.stepper import Stepper

    _, engine, _ = served
    prompts = {"a": ("The quick brown fox", dict(max_tokens=14, temperature=0)),
               "b": ("Hi", dict(max_tokens=6, temperature=0)),
               "c": ("Once upon a time there was a small model that", dict(max_tokens=9, temperature=0)),
               "d": ("Sort the list: 3 1 2 ->", dict(max_tokens=8, temperature=0.9, top_p=0.95, seed=3, n=2))}
    ids = {k: engine.text_prompt(p) for k, (p, _) in prompts.items()}
    solo = {k: _solo(engine, ids[k], **kw) for k, (_, kw) in prompts.items()}
    jobs = {k: Job(ids[k], **kw) for k, (_, kw) in prompts.items()}
    stepper = Stepper(engine)
    done: list = []
    with engine.lock, torch.no_grad():
        done += stepper.admit([jobs["a"]])
        for _ in range(3):
            done += stepper.step()
        assert stepper.rows == 1
        done += stepper.admit([jobs["b"], jobs["d"]])  # b: shorter than the running width, d: n=2, sampled
        assert stepper.rows == 4 and stepper.joinable
        for _ in range(2):
            done += stepper.step()
        done += stepper.admit([jobs["c"]])  # longer than every running row: they get padded on the left
        width = stepper.mask.shape[1]
        while stepper.live:
            done += stepper.step()
            assert stepper.rows == sum(j.n for j in jobs.values() if j not in done)  # finished jobs have left
    assert sorted(id(j) for j in done) == sorted(id(j) for j in jobs.values())
    got = {k: [(c.token_ids, c.text, c.finish_reason) for c in j.choices] for k, j in jobs.items()}
    assert got == solo
    assert width >= len(ids["c"])  # the running rows were padded on the left to the new, longer prompt


def test_a_cache_that_cannot_be_realigned_decodes_its_batch_to_the_end(served, monkeypatch):
    """Sliding-window or quantized cache layers cannot take new rows: the stepper says so (joinable False),
    refuses a join, keeps finished rows decoding padding until the batch ends, and every job still gets its
    solo answer; the batcher then admits new requests only between batches."""
    from trainlab.serve import stepper as stepper_mod
    from trainlab.serve.engine import Job

    _, engine, _ = served

    def refuse(cache):
        raise stepper_mod.CacheNotJoinable("test")

    monkeypatch.setattr(stepper_mod, "cache_layers", refuse)
    asks = {"a": ("The quick brown fox", 12), "b": ("Hi", 3)}
    ids = {k: engine.text_prompt(p) for k, (p, _) in asks.items()}
    solo = {k: _solo(engine, ids[k], max_tokens=m, temperature=0) for k, (_, m) in asks.items()}
    jobs = {k: Job(ids[k], max_tokens=m, temperature=0) for k, (_, m) in asks.items()}
    st = stepper_mod.Stepper(engine)
    done: list = []
    with engine.lock, torch.no_grad():
        done += st.admit([jobs["a"], jobs["b"]])
        assert not st.joinable
        with pytest.raises(stepper_mod.CacheNotJoinable):
            st.admit([Job(ids["b"], max_tokens=2, temperature=0)])
        while st.live:
            done += st.step()
            assert st.rows == (2 if st.live else 0)  # no row leaves early
    assert {id(j) for j in done} == {id(j) for j in jobs.values()}
    assert {k: [(c.token_ids, c.text, c.finish_reason) for c in j.choices] for k, j in jobs.items()} == solo


def test_a_request_joins_the_running_batch_and_a_disconnect_frees_its_slot(served):
    """Over HTTP: a request sent while another streams joins the running batch (max batch 4) and gets its solo
    answer; with one slot (max batch 1), a client that disconnects frees it at the next step for the next
    request. The engine's lock holds decoding while the requests are placed, so the order is fixed."""
    from concurrent.futures import ThreadPoolExecutor

    from trainlab.serve.app import create_app

    _, engine, _ = served
    assert _solo(engine, engine.chat_prompt(CHAT), max_tokens=20, temperature=0)[0][2] == "length"
    short = _solo(engine, engine.text_prompt("Hi"), max_tokens=4, temperature=0)[0]
    body = {"model": engine.name, "messages": CHAT, "max_tokens": 20, "temperature": 0, "stream": True}
    for max_batch in (4, 1):
        server = _Server(create_app(engine, max_batch=max_batch))
        batcher = server.app.state.batcher
        held: list[bool] = []
        try:
            engine.lock.acquire()  # nothing decodes until it is released
            held.append(True)
            with ThreadPoolExecutor(1) as pool, \
                    httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
                lines = r.iter_lines()
                try:
                    assert '"role": "assistant"' in next(line for line in lines if line)  # sent before decoding
                    _wait_for(lambda b=batcher: len(b.jobs()) == 1, "the streaming request did not start")
                    (running,) = batcher.jobs()
                    if max_batch == 1:
                        r.close()  # the client goes away
                        _wait_for(running.cancelled.is_set, "the disconnect was not noticed")
                    future = pool.submit(server.client().completions.create, model=engine.name, prompt="Hi",
                                         max_tokens=4, temperature=0)
                    _wait_for(lambda b=batcher: b.admitted == 2, "the second request was not admitted")
                finally:
                    held.pop()
                    engine.lock.release()
                answer = future.result().choices[0]
                if max_batch == 4:
                    assert [line for line in lines if line][-1] == "data: [DONE]"
            assert (answer.text, answer.finish_reason) == (short[1], short[2])
            if max_batch == 4:  # it joined while the first decoded, which then ran to its end
                assert batcher.stats.joined == 1 and batcher.stats.largest == 2
                assert (len(running.choices[0].token_ids), running.choices[0].finish_reason) == (20, "length")
            else:  # the first stopped at its first token, then the second had the slot
                assert (len(running.choices[0].token_ids), running.choices[0].finish_reason) == (1, "length")
                assert batcher.stats.largest == 1 and batcher.stats.steps <= 3
            _wait_for(lambda b=batcher: b.admitted == 0, "requests still admitted")
        finally:
            if held:  # the request failed before the lock was handed back
                engine.lock.release()
            server.stop()


# ---- the pre-serving check --------------------------------------------------------------------


def test_check_stops_names_what_is_wrong(tmp_path):
    from transformers import AutoModelForCausalLM

    from trainlab.model import HFCausalLM

    qwen = hf_model_dir(tmp_path / "qwen", "qwen2")
    for name in ("config.json", "generation_config.json"):  # eos <|endoftext|>, turns end with <|im_end|>
        data = json.loads((qwen / name).read_text())
        data["eos_token_id"] = 0
        (qwen / name).write_text(json.dumps(data))
    model, tok = load_with_tokenizer(qwen)
    check = check_stops(model, tok)
    assert check.stop_ids == [0, 2] and check.end_of_turn == "<|im_end|>"
    assert any("lack the chat template's end-of-turn '<|im_end|>'" in n for n in check.notes)

    gpt2 = hf_model_dir(tmp_path / "gpt2", "gpt2")
    model, tok = load_with_tokenizer(gpt2)
    assert any("no chat template" in n for n in check_stops(model, tok).notes)
    with pytest.raises(Exception, match="no chat template"):
        Engine(model, tok, name="g").chat_prompt(CHAT)

    hf = AutoModelForCausalLM.from_pretrained(gpt2)
    hf.generation_config.eos_token_id = None
    bare = make_tokenizer("gpt2")
    bare.eos_token = None
    with pytest.raises(UserError, match="cannot stop"):
        check_stops(HFCausalLM(hf), bare)


# ---- the command --------------------------------------------------------------------------------


def test_serve_without_the_extra_says_how_to_install(monkeypatch, capsys, tmp_path):
    from trainlab.cli import run_cli

    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` raises ImportError
    assert run_cli(["serve", "--model", str(tmp_path)]) == 2
    assert "pip install 'trainlab[serve]'" in capsys.readouterr().err


def test_trainlab_serve_command(tmp_path):
    """The command as a user runs it: /health, /v1/models, a chat, a stream ending in [DONE], a 400 survived;
    and `import trainlab` (and its CLI) never imports FastAPI."""
    folder = _build("decoder", tmp_path / "model")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainlab.cli", "serve", "--model", str(folder), "--port",
                             str(port), "--name", "tiny"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        probe = subprocess.run([sys.executable, "-c", "import sys, trainlab, trainlab.cli, trainlab.serve; "
                                "print('fastapi' in sys.modules)"], env=env, capture_output=True, text=True,
                               check=True)
        assert probe.stdout.strip() == "False"
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "trainlab serve did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        assert client.models.list().data[0].id == "tiny"
        answer = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, temperature=0)
        assert answer.usage.completion_tokens >= 1
        assert httpx.post(url + "/v1/chat/completions", content=b"not json").status_code == 400
        body = {"model": "tiny", "messages": CHAT, "max_tokens": 4, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        streamed = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                           for line in lines[:-1])
        assert streamed == answer.choices[0].message.content
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "serving tiny" in err
