"""Chat templates: a model's messages rendered as the text its GGUF's Jinja template makes."""

from __future__ import annotations

import datetime
import functools
import json

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import KVCPUError

# For models whose GGUF carries no chat template: their family's turn format, else ChatML.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Gemma's turns: user and model only (a system message speaks as the user), BOS added by the tokenizer.
GEMMA = ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
         "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
FALLBACK_BY_ARCH = {"gemma": GEMMA, "gemma2": GEMMA, "gemma3": GEMMA}


@functools.lru_cache(maxsize=8)
def chat_template(source: str) -> jinja2.Template:
    """A GGUF chat template (Jinja source), compiled once per distinct source, in the environment
    Hugging Face's tokenizers render it in (as llama.cpp's --jinja and llama-cpp-python do): a
    sandbox, trimmed blocks, and a `tojson` that keeps key order and non-ASCII text, since the
    tokens a template makes of tool definitions and tool-call arguments must be the model's own."""
    env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str):
    raise jinja2.TemplateError(message)


class ChatFormat:
    """Renders messages with one model's template and special tokens."""

    def __init__(self, source: str | None, bos: str = "", eos: str = ""):
        self.template = chat_template(source or CHATML)
        self.bos, self.eos = bos, eos
        # a template that renders `tools` and assistant `tool_calls` itself; others get them as text
        self.speaks_tools = bool(source) and "tools" in source and "tool_calls" in source

    @classmethod
    def of(cls, engine) -> ChatFormat:
        """The format of an engine's model."""
        source = engine.chat_template or FALLBACK_BY_ARCH.get(engine.info.arch, CHATML)
        return cls(source, engine.special_text("bos"), engine.special_text("eos"))

    def render(self, messages: list[dict], generation_prompt: bool, tools: list[dict] | None = None) -> str:
        """The conversation as text; with generation_prompt, ending where the assistant speaks.
        `tools`: OpenAI tool definitions, for a template that speaks_tools."""
        extra = {"tools": tools} if tools else {}
        try:
            return self.template.render(messages=messages, add_generation_prompt=generation_prompt,
                                        bos_token=self.bos, eos_token=self.eos, **extra)
        except jinja2.TemplateError as exc:
            raise KVCPUError(f"the model's chat template refused these messages: {exc}") from exc
