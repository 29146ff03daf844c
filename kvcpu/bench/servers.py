"""OpenAI-compatible servers as child processes on free loopback ports: `kvcpu serve`, and
llama-cpp-python's own server as the baseline. The server tests use them too."""

from __future__ import annotations

import os
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
    cmd = [sys.executable, "-m", "kvcpu", "serve", "--model", str(model_path), "--port", str(port),
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
