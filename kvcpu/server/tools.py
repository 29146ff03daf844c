"""Tool calls: the request's tools checked, the messages shaped for the model's chat template,
the grammar that forces a call, and the model's `<tool_call>` output read back as calls.

One output format is read: Hermes's, which Qwen2.5 (and every model of the registry) writes,
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. A template that renders tools itself
(Qwen2.5's) gets them as it expects; for a template that does not (SmolLM2's, Gemma's), the tools
and the calls are written into the messages as text, in the same format.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from ..errors import APIError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CHOICES = ("none", "auto", "required")
# Qwen2.5's own words for tools, for templates that have none
TOOLS_PREAMBLE = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                  "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_CODA = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
              "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
              "<args-json-object>}\n</tool_call>")


@dataclass(frozen=True)
class ToolUse:
    """The request's tools and what it asks of them: `choice` is 'none', 'auto', 'required' or
    the name of the one function to call; `parallel`: more than one call per reply allowed."""

    tools: tuple[dict, ...]
    choice: str
    parallel: bool

    @property
    def active(self) -> bool:
        """Whether the reply is read for tool calls."""
        return self.choice != "none"

    @property
    def forced(self) -> bool:
        return self.choice not in ("none", "auto")

    def names(self) -> set[str]:
        return {t["function"]["name"] for t in self.tools}

    def call_schema(self) -> dict:
        """The JSON schema of one call the choice allows: {"name": ..., "arguments": {...}}."""
        functions = [t["function"] for t in self.tools]
        options = [{"type": "object", "required": ["name", "arguments"],
                    "properties": {"name": {"const": f["name"]},
                                   "arguments": f.get("parameters") or {"type": "object"}}}
                   for f in functions if self.choice in CHOICES or f["name"] == self.choice]
        return options[0] if len(options) == 1 else {"anyOf": options}


@dataclass(frozen=True)
class ToolCall:
    """One call the model made; `arguments` is JSON text, as OpenAI sends it."""

    id: str
    name: str
    arguments: str

    def as_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def parse_tool_use(body: dict) -> ToolUse | None:
    """The request's tools, tool_choice and parallel_tool_calls, checked; None without tools."""
    tools, choice, parallel = body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise APIError(400, "'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    if not tools:
        if choice not in (None, "none"):
            raise APIError(400, "'tool_choice' needs 'tools'", param="tool_choice")
        return None
    if not isinstance(tools, list):
        raise APIError(400, "'tools' must be an array", param="tools")
    checked = tuple(_tool(t, i) for i, t in enumerate(tools))
    names = [t["function"]["name"] for t in checked]
    if len(set(names)) != len(names):
        raise APIError(400, "'tools' names a function twice", param="tools")
    if choice is None:
        choice = "auto"
    elif isinstance(choice, dict):
        function = choice.get("function")
        if choice.get("type") != "function" or not isinstance(function, dict) or function.get("name") not in names:
            raise APIError(400, f"'tool_choice' must name one of the tools: {names}", param="tool_choice")
        choice = function["name"]
    elif choice not in CHOICES:
        raise APIError(400, f"'tool_choice' must be one of {list(CHOICES)} or a function, not {choice!r}",
                       param="tool_choice")
    return ToolUse(checked, choice, True if parallel is None else parallel)


def _tool(tool, i: int) -> dict:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise APIError(400, f"{where} must be {{'type': 'function', 'function': {{...}}}}", param=where)
    function = tool["function"]
    if not isinstance(function.get("name"), str) or not NAME.match(function["name"]):
        raise APIError(400, f"{where}.function.name must be 1-64 letters, digits, '_', '.' or '-'", param=where)
    if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
        raise APIError(400, f"{where}.function.parameters must be a JSON schema object", param=where)
    unknown = set(function) - {"name", "description", "parameters", "strict"}
    if unknown:
        raise APIError(400, f"{where}.function has fields kvcpu does not support: {sorted(unknown)}", param=where)
    return {"type": "function", "function": function}


def check_message_tools(m: dict, i: int) -> dict:
    """A message's tool parts, checked: an assistant's tool_calls, a tool message's id."""
    out = {}
    if m.get("tool_calls") is not None:
        calls = m["tool_calls"]
        if m.get("role") != "assistant" or not isinstance(calls, list):
            raise APIError(400, f"messages[{i}].tool_calls: an array, on assistant messages only",
                           param=f"messages[{i}].tool_calls")
        out["tool_calls"] = [_message_call(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(calls)]
    if m.get("role") == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise APIError(400, f"messages[{i}].tool_call_id must be the id of the call it answers",
                           param=f"messages[{i}].tool_call_id")
        out["tool_call_id"] = m["tool_call_id"]
    return out


def _message_call(call, where: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
            or not isinstance(function.get("arguments"), str):
        raise APIError(400, f"{where} must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}",
                       param=where)
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        raise APIError(400, f"{where}.function.arguments is not JSON", param=where) from None
    return {"id": call.get("id") or "", "type": "function",
            "function": {"name": function["name"], "arguments": arguments}}


def template_messages(messages: list[dict], tools: ToolUse | None, speaks_tools: bool) -> list[dict]:
    """Messages as the chat template takes them: a template that speaks_tools gets tool calls
    with their arguments as objects (HF's convention); any other gets the tools, the calls and
    the results written as text in Hermes's format."""
    if speaks_tools:
        return messages
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            blocks = [f"{OPEN}\n{call_json(c['function']['name'], c['function']['arguments'])}\n{CLOSE}"
                      for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(([m["content"]] if m["content"] else []) + blocks)})
        elif m["role"] == "tool":
            answer = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("tool_result"):
                out[-1]["content"] += "\n" + answer
            else:
                out.append({"role": "user", "content": answer, "tool_result": True})
        else:
            out.append(dict(m))
    if tools is not None:
        described = TOOLS_PREAMBLE + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools.tools) + TOOLS_CODA
        if out and out[0]["role"] == "system":
            out[0]["content"] = out[0]["content"] + "\n\n" + described
        else:
            out.insert(0, {"role": "system", "content": described})
    return [{k: v for k, v in m.items() if k != "tool_result"} for m in out]


def call_json(name: str, arguments: dict) -> str:
    """A call as the templates write it (json.dumps' separators, keys in order)."""
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def assistant_message(content: str, calls: list[ToolCall]) -> dict:
    """The assistant message a client sends back for this reply, arguments as objects."""
    if not calls:
        return {"role": "assistant", "content": content}
    return {"role": "assistant", "content": content or None,
            "tool_calls": [{"id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": json.loads(c.arguments)}} for c in calls]}


class ToolCallReader:
    """Reads a reply as it streams: `feed` text, get content text and ToolCalls in order.
    Whitespace between calls, and around them, is not content. A call that is not well-formed
    JSON naming one of the tools stays content, as the model wrote it."""

    def __init__(self, tools: ToolUse):
        self.names, self.parallel = tools.names(), tools.parallel
        self.buffer, self.in_call, self.held, self.after_call = "", False, "", False
        self.bare: str | None = None  # a reply held back that may be a bare JSON call (see finish)
        self.emitted = False
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> list[str | ToolCall]:
        self.buffer += text
        out: list[str | ToolCall] = []
        while True:
            if self.in_call:
                end = self.buffer.find(CLOSE)
                if end < 0:
                    return out
                self._close(self.buffer[:end], out)
                self.buffer = self.buffer[end + len(CLOSE):]
                continue
            start = self.buffer.find(OPEN)
            if start >= 0:
                self._content(self.buffer[:start], out)
                self.buffer, self.in_call = self.buffer[start + len(OPEN):], True
                continue
            keep = _partial_suffix(self.buffer, OPEN)
            self._content(self.buffer[: len(self.buffer) - keep], out)
            self.buffer = self.buffer[len(self.buffer) - keep:]
            return out

    def finish(self) -> list[str | ToolCall]:
        """What is left at the end of the reply: an unclosed call is read if it is whole."""
        out: list[str | ToolCall] = []
        if self.in_call:
            self._close(self.buffer, out)
        else:
            self._content(self.buffer, out)
        self.buffer, self.in_call = "", False
        if self.bare is not None:
            # Small models often answer with the call alone: bare JSON, a fenced block, <tools>
            # tags; llama.cpp's reader takes these too, when the object names one of the tools.
            call = self._parse(_unfenced(self.bare))
            if call is not None:
                self.calls.append(call)
                out.append(call)
            else:
                self._release_bare(out)
        if self.held and not self.calls:
            out.append(self.held)
        self.held = ""
        return out

    def _content(self, text: str, out: list) -> None:
        """Content, less the whitespace that only separates it from a call: a piece's trailing
        whitespace is held until more content follows (a call drops it)."""
        if self.bare is not None:
            self.bare += text
            return
        if self.after_call:
            text = text.lstrip()
            if not text:
                return
            self.after_call = False
        if not self.calls and not self.emitted and (self.held + text).lstrip()[:1] in ("{", "`", "<"):
            self.bare, self.held = self.held + text, ""
            return
        self.emitted = True
        body = text.rstrip()
        if not body:
            self.held += text
            return
        out.append(self.held + body)
        self.held = text[len(body):]

    def _close(self, body: str, out: list) -> None:
        self.in_call = False
        call = self._parse(body)
        if call is None:
            self._content(OPEN + body + CLOSE, out)
            return
        self._release_bare(out)
        self.held, self.after_call = "", True
        self.calls.append(call)
        out.append(call)

    def _release_bare(self, out: list) -> None:
        """Content held back as a possible bare call, that was not one."""
        if self.bare is not None:
            text, self.bare = self.bare, None
            self.emitted = True
            self._content(text, out)

    def _parse(self, body: str) -> ToolCall | None:
        if self.calls and not self.parallel:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("name") not in self.names:
            return None
        arguments = data.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ToolCall(f"call_{uuid.uuid4().hex[:24]}", data["name"], json.dumps(arguments, ensure_ascii=False))


def read_reply(text: str, tools: ToolUse) -> tuple[str, list[ToolCall]]:
    """A whole reply's content and tool calls."""
    reader = ToolCallReader(tools)
    parts = reader.feed(text) + reader.finish()
    return "".join(p for p in parts if isinstance(p, str)), reader.calls


WRAPPERS = (("```json", "```"), ("```", "```"), ("<tools>", "</tools>"), ("<json>", "</json>"))


def _unfenced(text: str) -> str:
    """A bare reply's JSON without what small models wrap a call in: a Markdown fence, <tools> or
    <json> tags, or the doubled braces of Qwen2.5's own instructions ({{"name": ...}})."""
    text = text.strip()
    for start, end in WRAPPERS:
        if text.startswith(start) and text.endswith(end) and len(text) >= len(start) + len(end):
            text = text[len(start): len(text) - len(end)].strip()
            break
    if text.startswith("{{") and text.endswith("}}"):
        text = text[1:-1]
    return text


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
