"""Issue 17's faults seen from a conversation: a full disk under the records, names the file
system refuses or confuses, context shifts that leave entries behind, Ctrl-C while a turn is
stored, and a store directory that cannot be used."""

from __future__ import annotations

import errno
import io
import logging
import os
import signal
import subprocess
import sys

import pytest

from kvcpu import Session, records
from kvcpu.background import BackgroundStore
from kvcpu.chat import ChatConfig, ChatLoop


@pytest.fixture
def session(model_path, tmp_path):
    with Session(model_path, codec="int8", n_ctx=1024, disk_dir=tmp_path / "store") as s:
        yield s


def reopen(model_path, tmp_path) -> Session:
    return Session(model_path, codec="int8", n_ctx=1024, disk_dir=tmp_path / "store")


def test_f6_a_full_disk_under_the_records_warns_once_and_keeps_the_conversation(session, monkeypatch, caplog):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records, "atomic_write", full)
    with caplog.at_level(logging.WARNING):
        session.chat("c", "Hello there.", max_tokens=4)
        session.chat("c", "And again.", max_tokens=4)
    assert len(session.get("c").messages) == 4
    warnings = [r for r in caplog.records if "record" in r.getMessage()]
    assert len(warnings) == 1 and "No space left" in warnings[0].getMessage()


def test_f7_a_very_long_name_is_a_conversation_like_any_other(model_path, tmp_path):
    name = "n" * 300 + "é" * 100
    with reopen(model_path, tmp_path) as s:
        s.chat(name, "Hi.", max_tokens=3)
    with reopen(model_path, tmp_path) as s:
        assert len(s.get(name).messages) == 2


def test_f8_names_that_differ_only_in_punctuation_stay_apart(model_path, tmp_path):
    with reopen(model_path, tmp_path) as s:
        s.chat("a/b", "First.", max_tokens=3)
        s.chat("a_b", "Second.", max_tokens=3)
        s.chat("../../etc/x", "Third.", max_tokens=3)
    assert len(list((tmp_path / "store" / "conversations").glob("*.json"))) == 3
    assert not (tmp_path / "etc").exists()  # path traversal stays inside
    with reopen(model_path, tmp_path) as s:
        assert s.get("a/b").messages[0]["content"] == "First."
        assert s.get("a_b").messages[0]["content"] == "Second."
        s.forget("a/b")
    with reopen(model_path, tmp_path) as s:
        assert "a/b" not in s.conversations and s.get("a_b").messages[0]["content"] == "Second."


def test_f9_a_context_shift_replaces_the_conversations_last_entry(model_path, tmp_path):
    with Session(model_path, codec="int8", n_ctx=256, disk_dir=tmp_path / "store", keep_first=8) as s:
        shifts = 0
        for i in range(8):
            s.chat("long", f"Message {i}: tell me something about the number {i}.", max_tokens=40)
            shifts += s.last_turn.context_shifted
        s.flush()
        leaves = [e for e in s.store.entries() if not s.store.is_shared(e["key"])]
    assert shifts >= 2
    assert len(leaves) == 1  # the conversation's one entry; none left behind by the shifts


def test_f10_ctrl_c_while_a_finished_turn_is_stored_keeps_the_turn(session, monkeypatch):
    real = BackgroundStore.submit

    def interrupted(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, just as the turn is being stored
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BackgroundStore, "submit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        session.chat("k", "Say hello.", max_tokens=4)
    monkeypatch.setattr(BackgroundStore, "submit", real)
    session.flush()
    conv = session.get("k")
    assert [m["role"] for m in conv.messages] == ["user", "assistant"]
    assert session.store.lookup_exact(conv.tokens, session.fingerprint) is not None


def test_f11_max_tokens_below_one_is_refused_by_the_command():
    done = subprocess.run([sys.executable, "-m", "kvcpu", "chat", "--max-tokens", "0", "--once", "hi"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--max-tokens" in done.stderr


class _Scripted:
    """A session that streams a reply and, midway, logs what a failing background store logs."""

    def new(self, name):
        pass

    def chat(self, name, message, **kw):
        def chunks():
            yield "Hello"
            logging.getLogger("kvcpu.turn").warning("could not store the state of %s: disk full", name)
            yield " world"

        return chunks()


def test_f11_a_warning_during_a_reply_starts_its_own_line():
    out, err = io.StringIO(), io.StringIO()
    loop = ChatLoop(_Scripted(), io.StringIO("hi\n"), out, ChatConfig(interactive=False))
    handler = loop.log_handler(err)
    logging.getLogger("kvcpu").addHandler(handler)
    try:
        loop.run()
    finally:
        logging.getLogger("kvcpu").removeHandler(handler)
    assert out.getvalue() == "Hello world\n"
    assert err.getvalue() == "\nwarning: could not store the state of default: disk full\n"


def test_f11_an_unusable_store_directory_goes_on_in_ram_with_a_warning(model_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = subprocess.run([sys.executable, "-m", "kvcpu", "chat", "--model", str(model_path), "--store-dir",
                           str(blocker / "store"), "--max-tokens", "3", "--once", "hi"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    said = " ".join(done.stderr.split())
    assert "RAM only" in said and "is not usable: Not a directory" in said


def test_f5_a_session_refuses_a_codec_that_merges_cells_before_loading_the_model(tmp_path):
    from kvcpu.errors import KVCPUError

    with pytest.raises(KVCPUError, match="merges cells"):
        Session(tmp_path / "no-such-model.gguf", codec="cluster")  # refused before the model is looked for


def test_f14_a_session_never_closed_still_stores_its_last_turn(model_path, tmp_path):
    """README's example, run as written, ends without close(): the interpreter's exit must
    still store the last turn's state (the helper threads are shut down by then)."""
    script = ("import sys, kvcpu\n"
              "s = kvcpu.Session(sys.argv[1], codec='int8', n_ctx=1024, disk_dir=sys.argv[2])\n"
              "s.chat('notes', 'Summarise our plan in one sentence.', max_tokens=8)\n")
    done = subprocess.run([sys.executable, "-c", script, str(model_path), str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "failed" not in done.stderr, done.stderr
    with reopen(model_path, tmp_path) as s:
        held = len(s.get("notes").tokens)
        s.chat("notes", "And then?", max_tokens=2)
        assert s.last_turn.tokens_restored == held  # the whole last turn came back


def test_f19_sigterm_to_chat_keeps_the_reply_in_flight(model_path, tmp_path):
    """SIGTERM while `kvcpu chat` is replying: as with Ctrl-C, what was generated is kept, recorded
    and stored, and the process ends cleanly."""
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "kvcpu", "chat", "--model", str(model_path), "--store-dir",
                             str(store), "--max-tokens", "400", "--n-ctx", "1024"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"Count from one to two hundred, in words.\n")
        proc.stdin.flush()
        assert proc.stdout.read(1)  # the reply has begun
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:  # pass or fail, no chat is left running
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    with reopen(model_path, tmp_path) as s:
        conv = s.get("default")
        assert conv.messages[-1]["role"] == "assistant" and conv.messages[-1]["content"].strip()
        held = len(conv.tokens)
        s.chat("default", "Go on.", max_tokens=2)
        assert s.last_turn.tokens_restored == held  # its state was stored whole
