"""A real 1.5B instruct model (issue 25): Qwen2.5-Coder-1.5B, head_dim 128 and 6:1 grouped-query
attention, fetched as a user would (22 wheels). Few tests, each worth its minute: the state's bit-exact
round trip, every codec on its state, an exact restore into a fresh engine, one sensible chat turn."""

from __future__ import annotations

import numpy as np
import pytest

from kvcpu import Engine, KVState, Session, codec, models
from kvcpu.quality import compare, continuation_logits

QWEN = "qwen2.5-coder-1.5b"
PROMPT = ("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n"
          "    return fibonacci(n - 1) + fibonacci(n - 2)\n\n\ndef is_prime(n):\n")
# Above what a sound encoding gives on this scene, below what a broken one does; ratios at least.
KL_BOUND = {"int8": 0.02, "int4": 0.08, "int4-rot": 0.08, "ecq": 0.08, "adaptive": 0.08}
MIN_RATIO = {"f16": 0.99, "int8": 1.8, "int4": 2.5, "int4-rot": 3.3, "ecq": 3.3, "adaptive": 3.8}


@pytest.fixture(scope="module")
def qwen_path():
    """The GGUF, pulled on first use and verified (1.1 GB)."""
    return models.pull(QWEN)


@pytest.fixture(scope="module")
def scene(qwen_path, text):
    eng = Engine.load(qwen_path, n_ctx=512, logits_all=True)
    tokens = eng.tokenize(PROMPT + text)
    prefix, cont = tokens[:256], tokens[256:288]
    eng.eval(prefix)
    state = eng.get_state()
    reference = continuation_logits(eng, state, cont)
    yield eng, state, cont, reference
    eng.close()


def test_its_geometry_is_the_registrys(scene):
    eng, state, _, _ = scene
    info = eng.info
    assert (info.arch, info.n_layer, info.n_head_kv, info.head_dim) == ("qwen2", 28, 2, 128)
    assert info.kv_bytes_per_token_f16 == 28 * 1024  # 28 KiB a token in f16


def test_its_state_round_trips_bit_for_bit(scene):
    _, state, _, _ = scene
    raw = state.to_bytes()
    assert KVState.from_bytes(raw).to_bytes() == raw


@pytest.mark.parametrize("name", ["f16", *KL_BOUND])
def test_every_codec_round_trips_its_state(scene, name):
    eng, state, cont, reference = scene
    packed = codec(name).encode(state)
    restored = packed.decode()
    assert np.array_equal(restored.tokens, state.tokens)
    assert packed.ratio() >= MIN_RATIO[name]
    report = compare(reference, continuation_logits(eng, restored, cont), cont)
    if name == "f16":
        assert restored.to_bytes() == state.to_bytes() and report.kl_mean == 0.0
    else:
        assert report.kl_mean <= KL_BOUND[name], report


def test_a_restore_into_a_fresh_engine_gives_identical_logits(scene, qwen_path):
    _, state, cont, reference = scene
    with Engine.load(qwen_path, n_ctx=512, logits_all=True) as fresh:
        np.testing.assert_array_equal(continuation_logits(fresh, state, cont), reference)


def test_one_chat_turn_answers_sensibly(qwen_path, tmp_path):
    with Session(qwen_path, codec="int8", n_ctx=1024, disk_dir=tmp_path / "store") as s:
        reply = s.chat("q", "What is the capital of France? Answer in one word.", max_tokens=8)
        assert "paris" in reply.lower(), reply
        s.chat("q", "And of Italy?", max_tokens=8)
        assert s.last_turn.tokens_restored > 20 and s.last_turn.tokens_prefilled < 20


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city name"}},
                   "required": ["city"]}}}
AGENT_SYSTEM = ("You are a helpful assistant. Call a tool when you need data; once a tool has answered, answer "
                "the user in plain words using its result.")


def test_a_tool_loop_through_kvcpu_serve(qwen_path, tmp_path):
    """The model's own template renders the tool; its reply is a call with valid JSON arguments;
    the answer after the tool's result uses it; the second request restores the whole first
    exchange, prompt and call, from the store."""
    import json

    from kvcpu.bench.servers import kvcpu_serve

    messages = [{"role": "system", "content": AGENT_SYSTEM},
                {"role": "user", "content": "What is the weather in Paris?"}]
    with kvcpu_serve(qwen_path, tmp_path / "store") as srv:
        client = srv.client()
        first = client.chat.completions.create(model=QWEN, messages=messages, tools=[WEATHER_TOOL], temperature=0,
                                               max_tokens=64)
        assert first.choices[0].finish_reason == "tool_calls", first.choices[0].message
        [call] = first.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and "paris" in json.loads(call.function.arguments)["city"].lower()
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 14,
                                                                                     "sky": "light rain"})}]
        second = client.chat.completions.create(model=QWEN, messages=messages, tools=[WEATHER_TOOL], temperature=0,
                                                max_tokens=48)
    answer = second.choices[0].message.content or ""
    assert "14" in answer and second.choices[0].finish_reason == "stop", answer
    # Prefilled: the tool's result and the template's turn tokens, nothing of the first exchange
    assert second.usage.prompt_tokens - second.usage.prompt_tokens_details.cached_tokens < 40
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens + 10
