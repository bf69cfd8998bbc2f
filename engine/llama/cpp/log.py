"""Route llama.cpp's log lines to Python logging (stderr), never to stdout.

On stdio, stdout is the MCP channel. llama.cpp logs through a C callback; installing ours replaces the
default one. Info/debug lines are dropped in C-callback time (they cost almost nothing); warnings and
errors reach the `llama_cpp` logger.
"""

from __future__ import annotations

import ctypes
import logging

import llama_cpp

logger = logging.getLogger("llama_cpp")

_GGML_LOG_LEVEL_WARN = 3
_GGML_LOG_LEVEL_ERROR = 4


def _on_log(level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
    if level == _GGML_LOG_LEVEL_ERROR and text:
        logger.error(text.decode("utf-8", "replace").rstrip())
    elif level == _GGML_LOG_LEVEL_WARN and text:
        logger.warning(text.decode("utf-8", "replace").rstrip())


# Module-level reference: if the ctypes callback object were garbage-collected, llama.cpp would call
# freed memory on its next log line and crash the process.
_CALLBACK = llama_cpp.llama_log_callback(_on_log)


def quiet_llama_logs() -> None:
    llama_cpp.llama_log_set(_CALLBACK, ctypes.c_void_p(0))
