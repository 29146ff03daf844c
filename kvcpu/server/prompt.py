"""A checked request made into what a turn runs: the prompt's tokens, the sampler (with the
grammar that forces a tool call or JSON), and `finish`, the tokens the conversation will be
when the client sends it back with this reply, so that its stored state matches that request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..engine import Engine
from ..engine.grammar import Grammar, schema_gbnf
from ..errors import KVCPUError
from ..sampling import Sampler, SamplingConfig, TokenLogprob
from ..template import ChatFormat
from .protocol import APIError, GenerationRequest
from .tools import CLOSE, OPEN, assistant_message, read_reply, template_messages


@dataclass
class Prepared:
    """One request's prompt, sampler and finish; close() frees its grammar."""

    prompt: list[int]
    sampler: Sampler
    finish: Callable[[str], list[int]] | None
    grammar: Grammar | None = None

    def close(self) -> None:
        if self.grammar is not None:
            self.grammar.close()


class HeadTokens:
    """The token ids of the transcripts an engine's turns ended with, so that a transcript sent
    again is not tokenized again: only its new tail is (a 2,000-token prompt cost 8 ms to
    tokenize, every request). Exact: a cached head is used only where the tail begins with a
    special token the tokenizer splits at, as each chat turn does (<|im_start|>)."""

    def __init__(self, eng: Engine, size: int = 32):
        self.eng, self.size = eng, size
        self.entries: OrderedDict[str, list[int]] = OrderedDict()

    def tokenize(self, text: str) -> list[int]:
        """eng.tokenize(text), from the longest cached head it begins with where that is exact."""
        head = max((h for h in self.entries if text.startswith(h)), key=len, default=None)
        if head is not None and (len(head) == len(text) or self.eng.starts_with_special(text[len(head):])):
            self.entries.move_to_end(head)
            return self.entries[head] + self.eng.tokenize(text[len(head):], add_bos=False)
        return self.eng.tokenize(text)

    def remember(self, text: str, tokens: list[int]) -> None:
        self.entries[text] = list(tokens)
        self.entries.move_to_end(text)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def prepare(eng: Engine, fmt: ChatFormat, req: GenerationRequest, heads: HeadTokens | None = None) -> Prepared:
    """The prompt, sampler and finish of a request on this engine; `heads`: its recent transcripts."""
    if req.is_chat:
        prompt, finish = _chat(eng, fmt, req, heads or HeadTokens(eng))
    elif isinstance(req.prompt, str):
        text = req.prompt
        prompt, finish = eng.tokenize(text), lambda reply: eng.tokenize(text + reply)
    else:
        prompt, finish = list(req.prompt), None
        if max(prompt) >= eng.info.n_vocab:
            raise APIError(400, f"token id {max(prompt)} is out of the vocabulary (n_vocab={eng.info.n_vocab})",
                           param="prompt")
    grammar = _grammar(eng, req)
    config = SamplingConfig(req.temperature, top_p=req.top_p, seed=req.seed, repeat_penalty=req.repeat_penalty,
                            frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
                            top_k=req.top_k, min_p=req.min_p)
    return Prepared(prompt, Sampler(config, grammar, req.top_logprobs), finish, grammar)


def _chat(eng: Engine, fmt: ChatFormat, req: GenerationRequest, heads: HeadTokens):
    tools = req.tools
    messages = template_messages(list(req.messages), tools, fmt.speaks_tools)
    listed = list(tools.tools) if tools is not None and fmt.speaks_tools else None
    prompt = heads.tokenize(fmt.render(messages, True, listed))

    def finish(reply: str) -> list[int]:  # the conversation as the client will send it next time
        if tools is not None and tools.active:
            content, calls = read_reply(reply, tools)
            said = assistant_message(content, calls)
        else:
            said = {"role": "assistant", "content": reply}
        text = fmt.render(template_messages(list(req.messages) + [said], tools, fmt.speaks_tools), False, listed)
        tokens = heads.tokenize(text)
        heads.remember(text, tokens)  # the head of this conversation's next request
        return tokens

    return prompt, finish


def _grammar(eng: Engine, req: GenerationRequest) -> Grammar | None:
    """The grammar a forced tool call or a JSON reply needs; None when the output is free."""
    try:
        if req.tools is not None and req.tools.forced:
            parallel = req.tools.parallel and req.tools.choice == "required"
            gbnf = schema_gbnf(req.tools.call_schema(), f"{OPEN}\n", f"\n{CLOSE}", "\n" if parallel else None)
        elif req.json_schema is not None:
            gbnf = schema_gbnf(req.json_schema)
        else:
            return None
        return Grammar(eng, gbnf)
    except KVCPUError as exc:  # a schema the converter or llama.cpp cannot take is the client's to fix
        param = "tools" if req.tools is not None and req.tools.forced else "response_format"
        raise APIError(400, f"cannot constrain the reply to this schema: {exc}", param=param) from None


def logprob_entries(eng: Engine, picks: list[TokenLogprob]) -> list[dict]:
    """OpenAI's chat logprobs content for these tokens."""
    return [{**_entry(eng, p.token, p.logprob), "top_logprobs": [_entry(eng, t, lp) for t, lp in p.top]}
            for p in picks]


def _entry(eng: Engine, token: int, logprob: float) -> dict:
    raw = eng.token_bytes([token])
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}
