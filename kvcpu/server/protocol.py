"""OpenAI's HTTP shapes: requests parsed and checked into GenerationRequest, replies built.

Everything a client may get wrong is refused here with an OpenAI-style error (APIError), so
that nothing past this module sees a field of the wrong type.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass

from ..errors import APIError
from ..sampling import MAX_TOP_LOGPROBS
from .tools import ToolUse, check_message_tools, parse_tool_use

ROLES = {"system", "developer", "user", "assistant", "tool"}
# The fields kvcpu serve implements; any other field is refused with a 400 naming it, unless it
# carries the value that asks for nothing (a client library's explicit default), never ignored.
SUPPORTED = {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
             "stop", "stream", "stream_options", "user", "n", "frequency_penalty", "presence_penalty", "repeat_penalty",
             "top_k", "min_p", "tools", "tool_choice", "parallel_tool_calls", "response_format", "logprobs",
             "top_logprobs"}
NEUTRAL = {"echo": (False,), "best_of": (1,), "logit_bias": ({},), "suffix": ("",), "store": (False,),
           "metadata": ({},)}
# Chat's alone: /v1/completions refuses them unless they ask for nothing (its `logprobs` is another shape)
CHAT_ONLY = {"tools": ([],), "tool_choice": ("none",), "parallel_tool_calls": (True, False),
             "response_format": ({"type": "text"},), "logprobs": (False, 0), "top_logprobs": (0,)}
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id"}
MAX_STOPS = 4  # as OpenAI allows
MAX_STOP_CHARS = 256  # each; scanning is linear, but nobody's stop string is a page long


@dataclass(frozen=True)
class GenerationRequest:
    """One chat or completion request, checked: `messages` for chat, `prompt` for completions
    (a string, or token ids)."""

    model: str
    messages: tuple[dict, ...] | None
    prompt: str | tuple[int, ...] | None
    max_tokens: int | None  # None: what the context leaves
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    user: str | None
    top_k: int = 0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_penalty: float = 1.0
    top_logprobs: int | None = None  # None: no logprobs; else how many alternatives per token
    tools: ToolUse | None = None
    json_schema: dict | None = None  # response_format's: the reply is JSON valid under it

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise APIError(400, "the request body nests JSON too deeply") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def parse_chat(body: dict) -> GenerationRequest:
    """A /v1/chat/completions body."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    checked = tuple(checked_messages(messages))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    tools, schema = parse_tool_use(body), _response_schema(body.get("response_format"))
    if schema is not None and tools is not None and tools.active:
        raise APIError(400, "'response_format' with tools: send one or the other (or tool_choice 'none')",
                       param="response_format")
    logprobs, top = _typed(body, "logprobs", bool, False), body.get("top_logprobs")
    if top is not None and not (_is_int(top) and 0 <= top <= MAX_TOP_LOGPROBS and logprobs):
        raise APIError(400, f"'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}, with logprobs true",
                       param="top_logprobs")
    return _common(body, messages=checked, prompt=None, max_tokens=max_tokens, tools=tools, json_schema=schema,
                   top_logprobs=(top or 0) if logprobs else None)


def parse_completion(body: dict) -> GenerationRequest:
    """A /v1/completions body: `prompt` is a string, one string in an array, or token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(_is_int(t) and t >= 0 for t in prompt):
        prompt = tuple(prompt)
    elif not isinstance(prompt, str) or not prompt:
        raise APIError(400, "'prompt' must be a non-empty string, or an array of token ids", param="prompt")
    else:
        _check_text(prompt, "prompt")
    for name, neutral in CHAT_ONLY.items():
        if body.get(name) is not None and body[name] not in neutral:
            raise APIError(400, f"'{name}' is for /v1/chat/completions; /v1/completions does not support it",
                           param=name, code="unsupported_field")
    return _common(body, messages=None, prompt=prompt, max_tokens=body.get("max_tokens"))


def checked_messages(messages: list) -> list[dict]:
    """Chat messages as the server takes them (checked; tool-call arguments parsed), for the template."""
    return [_message(m, i) for i, m in enumerate(messages)]


def _message(m, i: int) -> dict:
    if not isinstance(m, dict):
        raise APIError(400, f"messages[{i}] must be an object", param=f"messages[{i}]")
    role, content = m.get("role"), m.get("content")
    if role not in ROLES:
        raise APIError(400, f"messages[{i}].role must be one of {sorted(ROLES)}, not {role!r}",
                       param=f"messages[{i}].role")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content")
            texts.append(part["text"])
        content = "".join(texts)
    elif content is None and role == "assistant":
        content = ""
    if not isinstance(content, str):
        raise APIError(400, f"messages[{i}].content must be a string or an array of text parts",
                       param=f"messages[{i}].content")
    _check_text(content, f"messages[{i}].content")
    unknown = sorted(k for k, v in m.items() if k not in MESSAGE_KEYS and v is not None)
    if unknown:
        raise APIError(400, f"messages[{i}] has fields kvcpu serve does not support: {unknown}",
                       param=f"messages[{i}].{unknown[0]}", code="unsupported_field")
    out = {"role": "system" if role == "developer" else role, "content": content, **check_message_tools(m, i)}
    if isinstance(m.get("name"), str):
        out["name"] = m["name"]  # for templates that render it
    return out


def _response_schema(fmt) -> dict | None:
    """response_format as the JSON schema the reply must follow; None for plain text."""
    if fmt is None or fmt == {"type": "text"}:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        return {"type": "object"}
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise APIError(400, "'response_format' must be {'type': 'text'}, {'type': 'json_object'} or "
                            "{'type': 'json_schema', 'json_schema': {'name', 'schema'}}", param="response_format")
    return spec.get("schema") or {"type": "object"}


def _refuse_unsupported(body: dict) -> None:
    """A 400 naming the first field kvcpu serve does not implement (issue 26 adds tools, JSON output,
    logprobs and the penalties); a field set to the value that asks for nothing passes."""
    for name, value in body.items():
        if name in SUPPORTED or value is None or (name in NEUTRAL and value in NEUTRAL[name]):
            continue
        raise APIError(400, f"kvcpu serve does not support '{name}' (yet); send the request without it",
                       param=name, code="unsupported_field")


def _common(body: dict, *, messages, prompt, max_tokens, **chat) -> GenerationRequest:
    _refuse_unsupported(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' must be a non-empty string", param="model")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise APIError(400, f"'max_tokens' must be an integer of at least 1, not {max_tokens!r}", param="max_tokens")
    n = body.get("n", 1)
    if n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    stop = body.get("stop")
    stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or len(stop) > MAX_STOPS or not all(isinstance(s, str) for s in stop):
        raise APIError(400, f"'stop' must be a string or an array of at most {MAX_STOPS} strings", param="stop")
    for s in stop:
        if len(s) > MAX_STOP_CHARS:
            raise APIError(400, f"'stop' strings may be {MAX_STOP_CHARS} characters long at most, not {len(s):,}",
                           param="stop")
        _check_text(s, "stop")
    stream = _typed(body, "stream", bool, False)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", param="stream_options")
    seed = body.get("seed")
    if seed is not None and not (_is_int(seed) and 0 <= seed < 2**64):
        raise APIError(400, f"'seed' must be an integer from 0 to 2**64 - 1, not {seed!r}", param="seed")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise APIError(400, "'user' must be a string", param="user")
    if user is not None:
        _check_text(user, "user")
    return GenerationRequest(
        model=model, messages=messages, prompt=prompt, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        seed=seed, stop=tuple(stop), stream=stream, include_usage=bool(options.get("include_usage")), user=user,
        top_k=_count(body, "top_k"), min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        repeat_penalty=_number(body, "repeat_penalty", 1.0, 0.01, 10.0), **chat)


def _check_text(text: str, param: str) -> None:
    """Text the tokenizer can take: UTF-8, so no lone surrogates (JSON's "\\ud800" escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(400, f"'{param}' is not valid Unicode text: {exc.reason} at character {exc.start}",
                       param=param) from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _count(body: dict, name: str) -> int:
    value = body.get(name)
    if value is None:
        return 0
    if not _is_int(value) or value < 0:
        raise APIError(400, f"'{name}' must be an integer of at least 0, not {value!r}", param=name)
    return value


def _typed(body: dict, name: str, kind: type, default):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise APIError(400, f"'{name}' must be a {kind.__name__}", param=name)
    return value


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise APIError(400, f"'{name}' must be a number from {lo} to {hi}, not {value!r}", param=name)
    return float(value)


# -- replies ------------------------------------------------------------------------------------


def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """OpenAI's usage, with the prompt tokens restored instead of prefilled as cached_tokens."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def reply(req: GenerationRequest, rid: str, created: int, model: str, text: str | None, finish_reason: str,
          use: dict, tool_calls: list[dict] | None = None, logprobs: list[dict] | None = None) -> dict:
    """The whole (non-streamed) answer; a chat's with its tool calls and token logprobs."""
    if req.is_chat:
        message = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        choice = {"index": 0, "message": message, "finish_reason": finish_reason,
                  "logprobs": None if logprobs is None else {"content": logprobs}}
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [choice], "usage": use}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice],
            "usage": use}


def chunk(req: GenerationRequest, rid: str, created: int, model: str, text: str | None = None,
          finish_reason: str | None = None, first: bool = False, use: dict | None = None,
          tool_calls: list[dict] | None = None, logprobs: list[dict] | None = None) -> dict:
    """One streamed piece: text, tool-call deltas, or the finish reason, or (with include_usage)
    the usage."""
    if req.is_chat:
        delta = {} if text is None else {"content": text}
        if tool_calls:
            delta["tool_calls"] = tool_calls
        if first:
            delta = {"role": "assistant", **delta}
        choices = [] if use is not None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                               "logprobs": None if logprobs is None else {"content": logprobs}}]
        out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    else:
        choices = [] if use is not None else [{"index": 0, "text": text or "", "logprobs": None,
                                               "finish_reason": finish_reason}]
        out = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if use is not None:
        out["usage"] = use
    return out


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def now() -> int:
    return int(time.time())
