"""`kvcpu chat` as a person sees it, without a model: whole transcripts of the chat loop over a
fake engine, the exact screen text for each command, Ctrl-C mid-reply, and what was restored."""

from __future__ import annotations

import io
import re

import pytest
from fake_engine import FakeEngine

from kvcpu.chat import ChatConfig, ChatLoop
from kvcpu.session import Session

BANNER = "kvcpu chat: conversation 'default'. /help for commands, Ctrl-D to leave.\n"


def run(session: Session, lines: str, interactive: bool = True) -> str:
    out = io.StringIO()
    ChatLoop(session, io.StringIO(lines), out, ChatConfig(interactive=interactive, max_tokens=64)).run()
    return out.getvalue()


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def session(engine, tmp_path):
    with Session(engine, codec="f16", disk_dir=tmp_path / "store") as s:
        yield s


def test_new_switch_and_replies(session):
    text = run(session, "hello\n/new work\nplan the week\n/switch default\nand again\n")
    assert text == (BANNER + "default> You said: hello\n"
                    "default> conversation 'work'\n"
                    "work> You said: plan the week\n"
                    "work> switched to 'default'\n"
                    "default> You said: and again\n"
                    "default> \n")


def test_a_switch_back_restores_instead_of_prefilling(session, engine):
    run(session, "hello there\n/new b\nsomething else\n/switch default\n")
    before = engine.evaluated
    run(session, "/switch default\nonce more\n", interactive=False)
    turn = session.last_turn
    assert turn.tokens_restored > 20  # the first conversation came back from the store
    new_part = len(engine.tokenize("<|im_start|>user\nonce more<|im_end|>\n<|im_start|>assistant\n"))
    assert turn.tokens_prefilled == new_part
    assert engine.evaluated - before == new_part + len("You said: once more") + 2  # and the closing tokens


def test_list_shows_every_conversation_and_where_it_is(session):
    text = run(session, "hi\n/new b\nyo\n/list\n", interactive=False)
    lines = text.splitlines()
    assert lines[:3] == ["You said: hi", "conversation 'b'", "You said: yo"]
    assert re.fullmatch(r"  default: 1 turns, \d+ tokens, snapshot \d+\.\d\d MB \(RAM\+disk\)", lines[3])
    assert re.fullmatch(r"\* b: 1 turns, \d+ tokens, snapshot \d+\.\d\d MB \(RAM\+disk\)", lines[4])
    assert len(lines) == 5


def test_stats_names_the_store_and_the_last_turn(session):
    text = run(session, "hi\n/stats\n", interactive=False)
    lines = text.splitlines()
    assert lines[0] == "You said: hi"
    assert re.fullmatch(r"RSS \d+ MB, CPU [\d.]+ s \(\d+% now\)", lines[1])
    assert re.fullmatch(r"store: 1 entries, RAM [\d.]+ of 512 MiB, disk [\d.]+ MiB, hit ratio \d+% \(\d+/\d+\), "
                        r"evictions 0, demotions 0", lines[2])
    assert re.fullmatch(r"last turn: restored 0 tokens in [\d.]+ ms, prefilled \d+ in \d+ ms, time to first token "
                        r"\d+ ms, [\d.]+ tokens/s", lines[3])


def test_forget_drops_the_conversation_and_its_snapshot(session):
    lines = run(session, "hi\n/new b\nyo\n/forget b\n/list\n", interactive=False).splitlines()
    assert lines[:4] == ["You said: hi", "conversation 'b'", "You said: yo", "forgot 'b'"]
    assert re.fullmatch(r"\* default: 1 turns, \d+ tokens, snapshot \d+\.\d\d MB \(RAM\+disk\)", lines[4])
    assert len(lines) == 5  # b is gone from the list, and the chat is back in default
    assert "b" not in session.conversations and len(session.store) == 1


def test_unknown_commands_and_names_say_so(session):
    text = run(session, "/teleport\n/switch nowhere\n/new\n", interactive=False)
    assert text.splitlines() == ["unknown command /teleport; /help lists them",
                                 "error: no conversation 'nowhere'; known: ['default']", "usage: /new NAME"]


def test_ctrl_c_mid_reply_keeps_what_was_said(tmp_path):
    engine = FakeEngine(stop_after=4)
    with Session(engine, codec="f16", disk_dir=tmp_path / "store") as s:
        text = run(s, "tell me a long story\n/list\n", interactive=False)
        assert text.splitlines()[0] == "You  [stopped]"
        conv = s.get("default")
        assert conv.messages[-1] == {"role": "assistant", "content": "You "}
        s.flush()
        assert s.store.lookup_exact(conv.tokens, s.fingerprint) is not None  # the turn so far is stored
    with Session(FakeEngine(), codec="f16", disk_dir=tmp_path / "store") as again:
        assert again.get("default").messages[-1]["content"] == "You "


def test_a_second_process_carries_on_from_the_record(tmp_path):
    with Session(FakeEngine(), codec="f16", disk_dir=tmp_path / "store") as s:
        run(s, "first\n", interactive=False)
    engine = FakeEngine()
    with Session(engine, codec="f16", disk_dir=tmp_path / "store") as s:
        text = run(s, "second\n", interactive=False)
        assert text == "You said: second\n"
        assert s.last_turn.tokens_restored > 20 and [m["content"] for m in s.get("default").messages] == [
            "first", "You said: first", "second", "You said: second"]
