"""Conversation records on disk: one JSON file per conversation, holding its messages and the
exact tokens the model saw, named by a hash of the conversation's name (the name itself is
kept inside), so that any name maps to one short file name and no two names share one."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .errors import RecordError
from .fileio import atomic_write
from .store.keys import name_digest

log = logging.getLogger(__name__)


def file_name(name: str) -> str:
    """The record file of a conversation: bounded in length, one per name, no path in it."""
    return name_digest(name) + ".json"


def parse(raw: bytes) -> dict:
    """A record's JSON, checked: {id, messages, tokens, text}; ValueError names what is wrong."""
    try:
        return check(json.loads(raw))
    except ValueError as exc:
        raise ValueError(f"not a conversation record: {exc}") from None


def check(data) -> dict:
    """A record as a dict, its fields checked and typed; ValueError names what is wrong."""
    try:
        return {"id": str(data["id"]), "messages": list(data["messages"]),
                "tokens": [int(t) for t in data["tokens"]], "text": str(data["text"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


class Records:
    """The records under one directory."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(exist_ok=True)
        self._legacy: dict[str, Path] = {}  # records of older kvcpu, named after the conversation

    def load_all(self) -> list[dict]:
        """Every readable record, as {id, messages, tokens, text}; unreadable ones are skipped
        with a warning."""
        out = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                record = parse(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable conversation record %s: %s", path, exc)
                continue
            if path.name != file_name(record["id"]):
                self._legacy[record["id"]] = path
            out.append(record)
        return out

    def save(self, record: dict) -> None:
        """Write a record atomically; RecordError when the disk refuses."""
        try:
            atomic_write(self.dir / file_name(record["id"]), json.dumps(record).encode())
        except OSError as exc:
            raise RecordError(f"could not save the record of conversation {record['id']!r}: "
                              f"{exc.strerror or exc}") from exc
        legacy = self._legacy.pop(record["id"], None)
        if legacy is not None:
            legacy.unlink(missing_ok=True)

    def delete(self, name: str) -> None:
        (self.dir / file_name(name)).unlink(missing_ok=True)
        legacy = self._legacy.pop(name, None)
        if legacy is not None:
            legacy.unlink(missing_ok=True)


class RecordStore:
    """Conversation records where a store keeps them: its directory (when it has one) and its
    remote tier (when it has one), so that a conversation resumes on any host."""

    def __init__(self, directory: str | os.PathLike | None, remote=None, fingerprint: str = ""):
        self.local = Records(Path(directory) / "conversations") if directory is not None else None
        self.remote, self.fingerprint = remote, fingerprint

    @classmethod
    def of(cls, store, fingerprint: str) -> RecordStore:
        """The records beside a KVStore's entries, for one model."""
        return cls(store.directory, store.remote, fingerprint)

    def load_all(self) -> list[dict]:
        """Every readable local record."""
        return self.local.load_all() if self.local is not None else []

    def get_remote(self, name: str) -> dict | None:
        """The record another host put on the remote tier, or None."""
        raw = self.remote.get_record(self.fingerprint, name) if self.remote is not None else None
        if raw is None:
            return None
        try:
            return {**parse(raw), "id": name}
        except ValueError as exc:
            log.warning("the remote record of %r is unreadable: %s", name, exc)
            return None

    def save(self, record: dict) -> None:
        """Write a record to the remote tier and the directory; RecordError when the disk refuses."""
        if self.remote is not None:
            self.remote.put_record(self.fingerprint, record["id"], json.dumps(record).encode())
        if self.local is not None:
            self.local.save(record)

    def delete(self, name: str) -> None:
        if self.local is not None:
            self.local.delete(name)
        if self.remote is not None:
            self.remote.delete_record(self.fingerprint, name)
