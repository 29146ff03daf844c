"""Chat templates: a model's messages rendered as the text its GGUF's Jinja template makes."""

from __future__ import annotations

import functools

import jinja2

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
    """A GGUF chat template (Jinja source), compiled once per distinct source."""
    return jinja2.Environment(loader=jinja2.BaseLoader()).from_string(source)


class ChatFormat:
    """Renders messages with one model's template and special tokens."""

    def __init__(self, source: str | None, bos: str = "", eos: str = ""):
        self.template = chat_template(source or CHATML)
        self.bos, self.eos = bos, eos

    @classmethod
    def of(cls, engine) -> ChatFormat:
        """The format of an engine's model."""
        source = engine.chat_template or FALLBACK_BY_ARCH.get(engine.info.arch, CHATML)
        return cls(source, engine.special_text("bos"), engine.special_text("eos"))

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        """The conversation as text; with generation_prompt, ending where the assistant speaks."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=generation_prompt,
                                        bos_token=self.bos, eos_token=self.eos)
        except jinja2.TemplateError as exc:
            raise KVCPUError(f"the model's chat template refused these messages: {exc}") from exc
