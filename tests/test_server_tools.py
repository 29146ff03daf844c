"""Agents' requests to `kvcpu serve` (a real process, the official openai client) on SmolLM2: tool
calls a grammar forces, JSON output, logprobs and sampling fields, and a tool loop whose whole
transcript is reused from the store."""

from __future__ import annotations

import json

import jsonschema
import pytest

from kvcpu.bench.servers import kvcpu_serve
from kvcpu.server.protocol import checked_messages
from kvcpu.server.tools import ToolUse, assistant_message, read_reply, template_messages
from kvcpu.template import ChatFormat

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a timezone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 40}}, "required": ["tz"]}}}
TOOLS = [WEATHER, TIME]
ASK = [{"role": "system", "content": "You are a helpful assistant."},
       {"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(model_path, tmp_path_factory):
    with kvcpu_serve(model_path, tmp_path_factory.mktemp("serve-tools") / "store") as srv:
        yield srv.client()


def ask(client, messages, **kw):
    kw.setdefault("max_tokens", 96)
    return client.chat.completions.create(model="any-name", messages=messages, temperature=0, **kw)


def _schema_of(name):
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


def test_a_named_tool_choice_forces_one_well_formed_call(client):
    r = ask(client, ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_time" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), _schema_of("get_time"))


def test_required_forces_a_call_to_one_of_the_tools(client):
    r = ask(client, ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    [call] = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), _schema_of(call.function.name))


def test_a_forced_call_is_written_as_the_template_renders_it(client, make_engine):
    """The KV path stays exact: the text the model generated for a call is, character for
    character, the text the template makes of the assistant message the client sends back.
    (Its tokens may differ: a grammar can steer a model through 'g', 'et' where the tokenizer
    writes 'get'; the turn's save re-evaluates the template's tokens, the loop test's concern.)"""
    r = ask(client, ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, logprobs=True)
    generated = b"".join(bytes(e.bytes) for e in r.choices[0].logprobs.content).decode()
    fmt = ChatFormat.of(make_engine(n_ctx=256))
    tools = ToolUse(tuple(TOOLS), "auto", True)
    sent_back = list(ASK) + [r.choices[0].message.model_dump(exclude_none=True)]
    head = fmt.render(template_messages(list(ASK), tools, fmt.speaks_tools), True)
    whole = fmt.render(template_messages(_checked(sent_back), tools, fmt.speaks_tools), False)
    assert whole.startswith(head) and whole[len(head):].startswith(generated)
    assert whole[len(head) + len(generated):] == "<|im_end|>\n"  # only the turn's closing tokens follow


def _checked(messages):
    """Messages as the server checks them: tool-call arguments parsed."""
    return checked_messages(messages)


def test_a_tool_loop_reuses_the_whole_transcript(client, make_engine):
    first = ask(client, ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    loop = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 14, "sky": "rain"})}]
    second = ask(client, loop, tools=TOOLS, max_tokens=8)
    eng = make_engine(n_ctx=1024)
    fmt = ChatFormat.of(eng)
    tools = ToolUse(tuple(TOOLS), "auto", True)
    before_result = eng.tokenize(fmt.render(template_messages(_checked(loop[:3]), tools, fmt.speaks_tools), False))
    # every token of the first request's prompt and reply came from the store; only the tool's
    # result and the generation prompt were prefilled
    assert second.usage.prompt_tokens_details.cached_tokens == len(before_result)
    assert len(before_result) >= first.usage.prompt_tokens + first.usage.completion_tokens


def test_two_conversations_with_the_same_tools_share_their_prefix(client):
    tools = [TIME, WEATHER, {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}]
    system = {"role": "system", "content": "You are an agent with tools. " * 20}
    ask(client, [system, {"role": "user", "content": "First task."}], tools=tools, max_tokens=4)
    other = ask(client, [system, {"role": "user", "content": "A different task."}], tools=tools, max_tokens=4)
    assert other.usage.prompt_tokens_details.cached_tokens > 300  # the system prompt and the tools


def test_streamed_tool_calls_reassemble_into_the_whole_call(client):
    kw = dict(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    ask(client, ASK, **kw)  # both compared requests restore the prompt: like with like
    whole = ask(client, ASK, **kw).choices[0].message.tool_calls
    calls, finishes = {}, []
    for chunk in ask(client, ASK, stream=True, **kw):
        for piece in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = piece.id or entry["id"]
            entry["name"] += piece.function.name or ""
            entry["arguments"] += piece.function.arguments or ""
        finishes += [chunk.choices[0].finish_reason] if chunk.choices[0].finish_reason else []
    assert finishes == ["tool_calls"]
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [(c.function.name, c.function.arguments)
                                                                      for c in whole]
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_json_object_output_parses(client):
    r = ask(client, [{"role": "user", "content": "Give me a JSON object with a name and a city."}],
            response_format={"type": "json_object"}, max_tokens=160)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema_output_validates(client):
    r = ask(client, [{"role": "user", "content": "Describe a person."}], max_tokens=64,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_logprobs_describe_each_generated_token(client):
    r = ask(client, [{"role": "user", "content": "Say hello."}], max_tokens=6, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    assert "".join(e.token for e in entries) == r.choices[0].message.content
    for e in entries:  # greedy, no penalty: each token is the likeliest one
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        assert e.logprob <= 0 and sum(2.718281828 ** t.logprob for t in e.top_logprobs) <= 1 + 1e-6


def test_sampling_fields_are_taken(client):
    messages = [{"role": "user", "content": "Write a list of fruits."}]
    ask(client, messages, max_tokens=12)
    greedy = ask(client, messages, max_tokens=12)
    top1 = client.chat.completions.create(model="m", messages=messages, max_tokens=12, temperature=1.5, seed=1,
                                          extra_body={"top_k": 1, "min_p": 0.5})
    assert top1.choices[0].message.content == greedy.choices[0].message.content
    penalised = ask(client, messages, max_tokens=12, frequency_penalty=2.0, presence_penalty=2.0,
                    extra_body={"repeat_penalty": 1.3})
    assert penalised.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("fields, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0]"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}},
     "response_format"),
    ({"response_format": {"type": "json_object"}, "tool_choice": "auto"}, "response_format"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"top_k": -1}, "top_k"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_a_malformed_agent_field_is_400_naming_it(client, fields, param):
    import openai

    body = {"tools": TOOLS, **fields} if "tool_choice" in fields else fields
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, ASK, max_tokens=2, extra_body=body)
    assert err.value.body["param"] == param, err.value.body


def test_reply_reading_finds_calls_in_text_fences_and_bare_json():
    tools = ToolUse(tuple(TOOLS), "auto", True)
    text = 'Checking.\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>'
    content, [call] = read_reply(text, tools)
    assert content == "Checking." and call.name == "get_time" and json.loads(call.arguments) == {"tz": "UTC"}
    content, [call] = read_reply('```json\n{"name": "get_time", "arguments": {"tz": "CET"}}\n```', tools)
    assert content == "" and json.loads(call.arguments) == {"tz": "CET"}
    for not_a_call in ('{"name": "unknown", "arguments": {}}', "plain words", '<tool_call>{"name": 1}</tool_call>'):
        assert read_reply(not_a_call, tools) == (not_a_call, [])
    message = assistant_message("", [call])
    assert message["content"] is None and message["tool_calls"][0]["function"]["arguments"] == {"tz": "CET"}
