"""A request made into prompt tokens: a resent transcript's head is not tokenized again, and the
tokens are exactly what tokenizing the whole prompt gives."""

from __future__ import annotations

from kvcpu.server.prompt import HeadTokens
from kvcpu.template import ChatFormat

TURNS = ["Hello there.", "Tell me about lighthouses, please.", "  Leading spaces and émojis 🙂.", "Why?\n\nTwo lines."]


def test_a_cached_head_gives_the_tokens_of_the_whole_prompt(make_engine):
    eng = make_engine(n_ctx=512)
    fmt, heads = ChatFormat.of(eng), HeadTokens(eng)
    messages, used = [{"role": "system", "content": "Be brief."}], 0
    for i, turn in enumerate(TURNS):
        messages.append({"role": "user", "content": turn})
        text = fmt.render(messages, True)
        before = dict(heads.entries)
        assert heads.tokenize(text) == eng.tokenize(text)
        used += any(text.startswith(h) for h in before)
        messages.append({"role": "assistant", "content": f"Reply {i}."})
        history = fmt.render(messages, False)
        heads.remember(history, heads.tokenize(history))
        assert heads.entries[history] == eng.tokenize(history)
    assert used == len(TURNS) - 1  # every request after the first began with a remembered transcript


def test_a_head_whose_tail_does_not_start_a_turn_is_not_used(make_engine):
    """Text glued to the end of a head would tokenize differently across the seam: the whole is tokenized."""
    eng = make_engine(n_ctx=512)
    heads = HeadTokens(eng)
    heads.remember("The keeper climb", [999])  # a wrong value: used, it would show
    assert heads.tokenize("The keeper climbed the steps.") == eng.tokenize("The keeper climbed the steps.")
    assert not eng.starts_with_special("ed the steps.") and eng.starts_with_special("<|im_start|>user\n")


def test_the_cache_keeps_the_most_recent_heads(make_engine):
    heads = HeadTokens(make_engine(n_ctx=128), size=2)
    for name in ("a", "b", "c"):
        heads.remember(name, [1])
    assert list(heads.entries) == ["b", "c"]
