"""llama.cpp's log, routed into Python's logging at its true levels; its recent errors kept, for
the reason a failed load gives."""

from __future__ import annotations

import ctypes
import logging

_llama_log = logging.getLogger("kvcpu.llama_cpp")
# ggml's log levels in the llama.cpp that llama-cpp-python 0.3.36 bundles: 1 debug, 2 info, 3 warn,
# 4 error, 5 continues the last. llama-cpp-python's own table is an older ggml's: it printed
# warnings (an SWA cache's size, for every Gemma load) and hid errors (why a model failed to load).
# Warnings and information go to the log at debug and info; errors at error, and into EngineError.
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR}
recent_errors: list[str] = []
_log_callback = None  # kept referenced: llama.cpp holds a pointer to it


def route_llama_logs() -> None:
    """llama.cpp's log into Python's logging, at its true levels, once per process."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    last = [logging.DEBUG]

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):
        try:  # nothing may escape into C
            message = text.decode("utf-8", errors="replace").strip()
            level = last[0] if level == 5 else _LOG_LEVELS.get(level, logging.DEBUG)
            last[0] = level
            if level >= logging.ERROR and message:
                del recent_errors[:-3]
                recent_errors.append(message)
            if message:
                _llama_log.log(level, "%s", message)
        except Exception:
            pass

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _log_callback = callback
