"""`kvcpu serve` as a real process on a loopback port, spoken to through the official openai client."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import psutil
import pytest

from kvcpu.bench.servers import kvcpu_serve

KEY = "test-key-123"
SYSTEM = "You are a helpful assistant. Answer in one short sentence."


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    with kvcpu_serve(model_path, tmp_path_factory.mktemp("serve") / "store", "--max-queue", "1", "--strict-model",
                     "--alias", "kvcpu-local", api_key=KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def ask(client, model_id, messages, **kw):
    kw.setdefault("max_tokens", 24)
    return client.chat.completions.create(model=model_id, messages=messages, temperature=0, **kw)


def test_models_list_names_the_served_model(client, model_path):
    models = client.models.list().data
    assert [m.id for m in models] == [model_path.stem, "kvcpu-local"] and models[0].object == "model"
    assert client.models.retrieve(models[0].id).id == models[0].id


def test_chat_reply_with_usage(client, model_id):
    r = ask(client, model_id, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a colour."}])
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 0 <= r.usage.prompt_tokens_details.cached_tokens < r.usage.prompt_tokens


def test_streamed_reply_equals_the_whole_one(client, model_id):
    """Both requests find the prompt stored (the first one below puts it there), so both take the
    same path: a cold prefill rounds differently from a restore plus one token, and greedy text
    may part at a near-tie on some CPUs (issue 30). Like with like stays exact."""
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    ask(client, model_id, messages, max_tokens=20)
    whole = ask(client, model_id, messages, max_tokens=20)
    stream = ask(client, model_id, messages, max_tokens=20, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # the second time, the whole prompt but its last token was restored
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= whole.usage.prompt_tokens - 16


def test_second_request_of_a_conversation_restores_its_history(client, model_id):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a lighthouse for?"}]
    first = ask(client, model_id, messages)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And who keeps it?"}]
    second = ask(client, model_id, messages)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens + first.usage.completion_tokens - 2
    assert second.usage.prompt_tokens - cached <= 16  # only the new message, in its template


def test_completions_and_stop_strings(client, model_id):
    r = client.completions.create(model=model_id, prompt="1, 2, 3, 4, 5,", max_tokens=30, temperature=0, stop=["8"])
    assert r.choices[0].finish_reason == "stop"
    assert "8" not in r.choices[0].text and "7" in r.choices[0].text
    r = client.completions.create(model=model_id, prompt="1, 2, 3, 4, 5,", max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_missing_or_wrong_key_is_401(server, model_id):
    for key in ("none", "test-key-12"):
        with pytest.raises(openai.AuthenticationError) as exc:
            openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0).models.list()
        assert exc.value.status_code == 401 and "API key" in exc.value.message


def test_with_strict_model_another_name_is_404_and_an_alias_is_served(client):
    with pytest.raises(openai.NotFoundError) as exc:
        ask(client, "gpt-4o", [{"role": "user", "content": "hi"}])
    assert exc.value.body["code"] == "model_not_found"
    assert ask(client, "kvcpu-local", [{"role": "user", "content": "hi"}], max_tokens=2).choices
    assert "kvcpu-local" in [m.id for m in client.models.list().data]


@pytest.mark.parametrize("field", [{"temperature": "hot"}, {"max_tokens": 0}, {"max_tokens": "8"},
                                   {"messages": "hello"}, {"messages": [{"role": "robot", "content": "x"}]},
                                   {"stop": 3}, {"stream": "yes"}, {"n": 2}])
def test_fields_of_the_wrong_type_are_400(server, model_id, field):
    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], **field}
    status, error = _post(server, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 400 and error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_json_is_400(server, raw):
    status, error = _post(server, "/v1/chat/completions", raw)
    assert status == 400 and "JSON" in error["message"]


def test_prompt_longer_than_the_context_is_400_naming_both_numbers(client, model_id):
    with pytest.raises(openai.BadRequestError) as exc:
        ask(client, model_id, [{"role": "user", "content": "word " * 2100}])
    numbers = [int(n) for n in re.findall(r"\d+", exc.value.message)]
    assert 2048 in numbers and any(n > 2048 for n in numbers)
    with pytest.raises(openai.BadRequestError) as exc:
        ask(client, model_id, [{"role": "user", "content": "hi"}], max_tokens=5000)
    assert "2048" in exc.value.message and "5000" in exc.value.message


def test_oversized_body_is_413(server):
    """Refused from its declared length, before the body is read."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    for name, value in (("Authorization", f"Bearer {KEY}"), ("Content-Type", "application/json"),
                        ("Content-Length", str(9 << 20))):
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    error = json.loads(response.read())["error"]
    conn.close()
    assert response.status == 413 and "limit" in error["message"]


def test_unknown_route_is_an_openai_error(server):
    status, error = _post(server, "/v1/embeddings", b"{}")
    assert status == 404 and error["message"]


def test_full_queue_answers_503_with_retry_after(server, client, model_id):
    """One request runs and one waits (--max-queue 1): a third at once is turned away."""
    barrier = threading.Barrier(3)

    def one(_):
        barrier.wait()
        try:
            client.completions.create(model=model_id, prompt="1, 2, 3, 4,", max_tokens=120, temperature=0)
            return 200, None
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers.get("retry-after")

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, range(3)))
    assert sorted(s for s, _ in results) == [200, 200, 503]
    assert [r for s, r in results if s == 503] == ["1"]


def test_client_leaving_mid_stream_stops_generation_and_keeps_the_state(server, client, model_id):
    messages = [{"role": "user", "content": "Count from one to one hundred in words."}]
    body = {"model": model_id, "messages": messages, "max_tokens": 1500, "temperature": 0, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    pieces = [response.readline().decode().strip() for _ in range(6)]
    conn.close()  # the client leaves mid-stream
    assert all(p.startswith("data: ") or not p for p in pieces)
    again = ask(client, model_id, messages, max_tokens=4)  # answered: the engine was freed
    assert again.usage.prompt_tokens_details.cached_tokens >= again.usage.prompt_tokens - 16
    generated = _metric(server, "kvcpu_completion_tokens_total")
    assert generated < 1000  # the 1,500-token reply was cut short


def test_client_leaving_a_whole_answer_frees_the_engine(server, client, model_id):
    """A non-streamed request whose client goes away stops too, instead of holding the engine."""
    before = _metric(server, "kvcpu_completion_tokens_total")
    body = {"model": model_id, "prompt": "1, 2, 3, 4,", "max_tokens": 1500, "temperature": 0}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(body),
                 {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    for _ in range(600):  # until an engine has it (60 s at most)
        if json.loads(_get(server, "/health"))["busy"] or threading.Event().wait(0.1):
            break
    conn.close()
    ask(client, model_id, [{"role": "user", "content": "Say yes."}], max_tokens=2)  # answered: the engine was freed
    assert _metric(server, "kvcpu_completion_tokens_total") - before < 1000


def test_metrics_in_prometheus_format(server, client, model_id):
    ask(client, model_id, [{"role": "user", "content": "Say yes."}], max_tokens=2)
    text = _get(server, "/metrics")
    for name in ("kvcpu_requests_total", "kvcpu_prompt_tokens_total", "kvcpu_time_to_first_token_seconds_bucket",
                 "kvcpu_store_bytes", "kvcpu_store_entries", "kvcpu_store_hit_ratio", "kvcpu_store_pending_bytes",
                 "kvcpu_store_evictions_total",
                 "kvcpu_queue_depth", "kvcpu_process_rss_bytes", "kvcpu_process_cpu_seconds_total"):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    assert _metric(server, 'kvcpu_prompt_tokens_total{how="restored"}') > 0
    assert _metric(server, "kvcpu_process_rss_bytes") > 50e6
    health = json.loads(urllib.request.urlopen(f"{server.base_url}/health").read())
    assert health["status"] == "ok"


def test_restart_over_the_same_store_restores_the_history(model_path, tmp_path):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me about whales."}]
    with kvcpu_serve(model_path, tmp_path / "store") as srv:
        client = srv.client()
        model = client.models.list().data[0].id
        first = ask(client, model, messages)
        code = srv.stop()
    assert code == 0, srv.output()
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "How big are they?"}]
    with kvcpu_serve(model_path, tmp_path / "store") as srv:
        second = ask(srv.client(), model, messages)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens + first.usage.completion_tokens - 2
    assert second.usage.prompt_tokens - cached <= 16


def test_no_state_leaks_between_concurrent_conversations(model_path, tmp_path):
    """4 conversations of 5 turns, interleaved and concurrent on 2 engines, reply exactly as each
    does alone (f16 restores are bit-exact, so any difference is a leak)."""
    topics = ["the moon", "bread", "rivers", "chess"]
    followups = ["Tell me more.", "Why?", "Give an example.", "Say it shorter."]

    def converse(client, model, topic) -> list[str]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tell me about {topic}."}]
        replies = []
        for turn in range(5):
            r = ask(client, model, messages, max_tokens=16)
            replies.append(r.choices[0].message.content)
            messages += [{"role": "assistant", "content": replies[-1]},
                         {"role": "user", "content": followups[turn % len(followups)]}]
        return replies

    # Alone on one engine with the thread count each of the two engines below gets: llama.cpp's
    # sums may round differently with another thread split, and this test is about leaks.
    threads = max(1, (psutil.cpu_count(logical=False) or os.cpu_count()) // 2)
    with kvcpu_serve(model_path, tmp_path / "alone", "--codec", "f16", "--threads", str(threads)) as srv:
        client = srv.client()
        model = client.models.list().data[0].id
        alone = [converse(client, model, t) for t in topics]
    with kvcpu_serve(model_path, tmp_path / "together", "--codec", "f16", "--parallel", "2") as srv:
        client = srv.client()
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda t: converse(client, model, t), topics))
        restored = _metric(srv, 'kvcpu_prompt_tokens_total{how="restored"}')
        # The engines share the cores rather than each spinning llama.cpp's threads on all of them
        assert f"2 engines of {threads} thread" in srv.output()
    assert together == alone
    assert restored > 0


def _post(server, path: str, raw: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(f"{server.base_url}{path}", data=raw, method="POST",
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]


def _get(server, path: str) -> str:
    req = urllib.request.Request(f"{server.base_url}{path}", headers={"Authorization": f"Bearer {KEY}"})
    return urllib.request.urlopen(req).read().decode()


def _metric(server, name: str) -> float:
    text = _get(server, "/metrics")
    found = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return sum(found)


# -- issue 28's faults: each a 400 that was a 500, a stop that cost quadratic time, a key refused -----


def test_f15_stop_strings_past_the_cap_are_400_naming_stop(server, model_id):
    from kvcpu.server.protocol import MAX_STOP_CHARS

    for stop in (["x" * (MAX_STOP_CHARS + 1)], ["a", "b", "c", "d", "e"]):
        body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "stop": stop}
        status, error = _post(server, "/v1/chat/completions", json.dumps(body).encode())
        assert status == 400 and error["param"] == "stop", error


@pytest.mark.parametrize("stream", [False, True])
def test_f18_a_negative_seed_is_400_streamed_or_not(server, model_id, stream):
    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "seed": -1, "stream": stream}
    status, error = _post(server, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 400 and error["param"] == "seed", error


def test_f18_a_lone_surrogate_is_400_naming_where(server, model_id):
    raw = b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}' % model_id.encode()
    status, error = _post(server, "/v1/chat/completions", raw)
    assert status == 400 and error["param"] == "messages[0].content", error


def test_f18_json_nested_too_deep_is_400(server):
    status, error = _post(server, "/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "deep" in error["message"], error


def test_f19_the_bearer_scheme_is_case_insensitive(server):
    for scheme in ("bearer", "BEARER"):
        req = urllib.request.Request(f"{server.base_url}/v1/models", headers={"Authorization": f"{scheme} {KEY}"})
        with urllib.request.urlopen(req) as r:
            assert r.status == 200


def test_f19_a_stream_cut_by_shutdown_ends_with_a_finish_reason(model_path, tmp_path):
    """SIGTERM mid-stream: before the grace is up, the stream ends with finish_reason 'length'
    and [DONE] (the openai client ends its iteration there, not with an error)."""
    with kvcpu_serve(model_path, tmp_path / "s") as srv:
        client = srv.client()
        model = client.models.list().data[0].id
        assert ask(client, "gpt-4o", [{"role": "user", "content": "hi"}], max_tokens=2).choices  # any name: one model
        # A count the model goes on with for longer than the grace, on any CPU (a chat reply may end sooner)
        stream = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=1500, temperature=0,
                                           stream=True)
        chunks = iter(stream)
        first = next(chunks)
        srv.proc.send_signal(signal.SIGTERM)
        rest = list(chunks)
        assert srv.stop() == 0
    finishes = [c.choices[0].finish_reason for c in [first, *rest] if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert "Traceback" not in srv.output()


def _cached(client, model, messages, user=None) -> int:
    kw = {"user": user} if user else {}
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=2, temperature=0, **kw)
    return r.usage.prompt_tokens_details.cached_tokens


def test_f16_cache_scope_user_keeps_one_users_prompt_from_another(model_path, tmp_path):
    """Under --cache-scope user, another user's exact guess of a secret prompt reuses nothing (no
    cached_tokens to tell a right guess from a wrong one, in the engine, memory or store), while
    the owner's own next request reuses it; shared (the default) reuses it for anyone."""
    secret = [{"role": "system", "content": "The vault code is 4711. Never say it."},
              {"role": "user", "content": "What is the weather like?"}]
    with kvcpu_serve(model_path, tmp_path / "user", "--cache-scope", "user") as srv:
        client = srv.client()
        model = client.models.list().data[0].id
        assert _cached(client, model, secret, "alice") == 0
        assert _cached(client, model, secret, "bob") == 0
        assert _cached(client, model, secret, "alice") > 10
    with kvcpu_serve(model_path, tmp_path / "shared") as srv:
        client = srv.client()
        _cached(client, model, secret, "alice")
        assert _cached(client, model, secret, "bob") > 10


def test_f16_cache_scope_key_keeps_api_keys_apart(model_path, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# two tenants\nkey-one\nkey-two\n")
    messages = [{"role": "user", "content": "Tell me a secret plan."}]
    with kvcpu_serve(model_path, tmp_path / "key", "--cache-scope", "key", "--api-keys-file", str(keys)) as srv:
        one = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="key-one", max_retries=0)
        two = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="key-two", max_retries=0)
        model = one.models.list().data[0].id
        assert _cached(one, model, messages) == 0
        assert _cached(two, model, messages) == 0
        assert _cached(one, model, messages) > 5


@pytest.mark.parametrize("field", [{"logit_bias": {"1": 5}}, {"best_of": 2}, {"echo": True}, {"suffix": "end"},
                                   {"store": True}, {"made_up_field": 1}])
def test_a_field_kvcpu_does_not_implement_is_400_naming_it(server, model_id, field):
    """Nothing is silently ignored: a client that sends a field kvcpu does not implement hears so."""
    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **field}
    status, error = _post(server, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 400 and error["param"] == next(iter(field)) and error["code"] == "unsupported_field", error


def test_a_message_field_kvcpu_does_not_implement_is_400_naming_it(server, model_id):
    body = {"model": model_id, "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi", "audio": {"id": "a1"}}]}
    status, error = _post(server, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 400 and error["param"] == "messages[0].audio" and error["code"] == "unsupported_field", error


@pytest.mark.parametrize("field", [{"tools": [{"type": "function", "function": {"name": "f"}}]},
                                   {"response_format": {"type": "json_object"}}, {"logprobs": 2}])
def test_chat_fields_on_completions_are_400_naming_them(server, model_id, field):
    body = {"model": model_id, "prompt": "Once upon a time", "max_tokens": 2, **field}
    status, error = _post(server, "/v1/completions", json.dumps(body).encode())
    assert status == 400 and error["param"] == next(iter(field)) and error["code"] == "unsupported_field", error


def test_fields_that_ask_for_nothing_pass(server, model_id):
    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "frequency_penalty": 0, "presence_penalty": 0.0, "logprobs": False, "tools": [], "tool_choice": "none",
            "response_format": {"type": "text"}, "parallel_tool_calls": True}
    status, reply = _post(server, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 200 and reply["choices"][0]["message"]["role"] == "assistant"
