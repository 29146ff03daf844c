"""The chat loop behind `kvcpu chat`: input and output are injected, so tests drive it too.

Lines are messages, or slash commands. On a terminal it shows a prompt; with stdin piped it
prints only replies and command output, for scripting. Ctrl-C during a reply stops it and
keeps the conversation; Ctrl-D (end of input) quits, and nothing is lost: every turn is
already in the store (and on disk, with a store directory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import IO

from .errors import KVCPUError
from .session import Session

HELP = """commands:
  /new NAME      start a conversation (and switch to it)
  /switch NAME   switch to a conversation
  /list          conversations, with tokens and snapshot size, in RAM or on disk
  /stats         RSS, CPU, store bytes per tier, hit ratio, the last turn's restore and prefill
  /save [PATH]   save the conversation with its snapshot to one file
  /forget NAME   drop a conversation and its snapshot
  /help          this text
  /quit          leave (Ctrl-D does too)"""


@dataclass(frozen=True)
class ChatConfig:
    """How replies are generated, and where the loop starts."""

    conversation: str = "default"
    max_tokens: int = 256
    temperature: float = 0.0
    repeat_penalty: float = 1.1
    interactive: bool = True


class ChatLoop:
    """Reads lines, answers them through a Session, writes replies as they stream."""

    def __init__(self, session: Session, stdin: IO[str], stdout: IO[str], config: ChatConfig = ChatConfig()):
        self.session, self.stdin, self.out, self.config = session, stdin, stdout, config
        self.current = config.conversation
        self.mid_line = False  # a reply is being written and its line is not finished
        session.new(self.current)

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()
        self.mid_line = False

    def log_handler(self, stream: IO[str]) -> logging.Handler:
        """A handler for kvcpu's log that puts each message on a line of its own, also when it
        comes (from the background store) in the middle of a reply."""
        return _OwnLineHandler(self, stream)

    def run(self) -> None:
        if self.config.interactive:
            self.say(f"kvcpu chat: conversation {self.current!r}. /help for commands, Ctrl-D to leave.")
        while not self.terminated:
            if self.config.interactive:
                self.out.write(f"{self.current}> ")
                self.out.flush()
            try:
                line = self.stdin.readline()
            except KeyboardInterrupt:
                self.say()
                continue
            if not line:  # end of input
                if self.config.interactive:
                    self.say()
                return
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if self.command(line) == "quit":
                        return
                else:
                    self.reply(line)
            except KVCPUError as exc:
                self.say(f"error: {exc}")

    terminated = False  # SIGTERM came: the reply in flight is kept, then the loop ends

    def on_sigterm(self, signum, frame) -> None:
        """SIGTERM as Ctrl-C (the reply so far is kept and stored), then leave the loop."""
        self.terminated = True
        raise KeyboardInterrupt

    def reply(self, message: str) -> None:
        chunks = self.session.chat(self.current, message, max_tokens=self.config.max_tokens,
                                   temperature=self.config.temperature, repeat_penalty=self.config.repeat_penalty,
                                   stream=True)
        try:
            for chunk in chunks:
                self.out.write(chunk)
                self.out.flush()
                self.mid_line = True
        except KeyboardInterrupt:
            chunks.close()  # the turn keeps what was generated so far
            self.out.write(" [stopped]")
        self.say()

    def command(self, line: str) -> str | None:
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        handler = getattr(self, f"cmd_{name}", None)
        if handler is None:
            self.say(f"unknown command /{name}; /help lists them")
            return None
        return handler(arg)

    def cmd_new(self, arg: str) -> None:
        if not arg:
            self.say("usage: /new NAME")
            return
        self.session.new(arg)
        self.current = arg
        self.say(f"conversation {arg!r}")

    def cmd_switch(self, arg: str) -> None:
        self.session.get(arg)
        self.current = arg
        self.say(f"switched to {arg!r}")

    def cmd_list(self, arg: str) -> None:
        for row in self.session.list():
            where = "RAM+disk" if row["in_ram"] and row["on_disk"] else "RAM" if row["in_ram"] else \
                "disk" if row["on_disk"] else "-"
            mark = "*" if row["id"] == self.current else " "
            self.say(f"{mark} {row['id']}: {row['turns']} turns, {row['tokens']} tokens, "
                     f"snapshot {row['snapshot_bytes'] / 1e6:.2f} MB ({where})")

    def cmd_stats(self, arg: str) -> None:
        s = self.session.stats()
        self.say(f"RSS {s['rss_bytes'] / 2**20:.0f} MB, CPU {s['cpu_seconds']:.1f} s ({s['cpu_percent']:.0f}% now)")
        mib = 2**20
        self.say(f"store: {s['entries']} entries, RAM {s['ram_bytes'] / mib:.1f} of {s['budget_bytes'] / mib:.0f} MiB, "
                 f"disk {s['disk_bytes'] / mib:.1f} MiB, hit ratio {s['hit_ratio']:.0%} "
                 f"({s['hits']}/{s['lookups']}), evictions {s['evictions'] or 0}, demotions {s['demotions'] or 0}")
        t = self.session.last_turn
        if t is not None:
            self.say(f"last turn: restored {t.tokens_restored} tokens in {t.restore_ms:.1f} ms, "
                     f"prefilled {t.tokens_prefilled} in {t.prefill_ms:.0f} ms, time to first token "
                     f"{t.ttft_ms:.0f} ms, {t.decode_tps:.1f} tokens/s"
                     + (", context shifted" if t.context_shifted else ""))

    def cmd_save(self, arg: str) -> None:
        path = arg or f"{self.current}.kvs"
        nbytes = self.session.save_conversation(self.current, path)
        self.say(f"saved {self.current!r} to {path} ({nbytes / 1e6:.2f} MB)")

    def cmd_forget(self, arg: str) -> None:
        self.session.forget(arg)
        self.say(f"forgot {arg!r}")
        if arg == self.current:
            self.current = "default"
            self.session.new(self.current)

    def cmd_help(self, arg: str) -> None:
        self.say(HELP)

    def cmd_quit(self, arg: str) -> str:
        return "quit"


class _OwnLineHandler(logging.StreamHandler):
    def __init__(self, loop: ChatLoop, stream: IO[str]):
        super().__init__(stream)
        self.loop = loop

    def format(self, record: logging.LogRecord) -> str:
        return ("\n" if self.loop.mid_line else "") + f"{record.levelname.lower()}: {super().format(record)}"
