"""`kvcpu serve`: an OpenAI-compatible HTTP server that keeps every conversation's KV."""

from __future__ import annotations

import contextlib
import signal

from .app import ServeConfig, Server

__all__ = ["ServeConfig", "Server", "run"]


def run(server: Server) -> None:
    """Answer requests until SIGINT or SIGTERM; streams in flight then get the config's grace
    period, every turn's state is stored, and the process exits with status 0."""
    import uvicorn

    class Uvicorn(uvicorn.Server):
        def handle_exit(self, sig, frame):
            server.begin_shutdown()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises the signal once it has shut down, so that a clean stop would end
            # with status -15; kvcpu has stored everything by then, and says so with 0.
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    c = server.config
    config = uvicorn.Config(server.app(), host=c.host, port=c.port, log_level="warning",
                            timeout_graceful_shutdown=c.graceful_shutdown_s)
    Uvicorn(config).run()
