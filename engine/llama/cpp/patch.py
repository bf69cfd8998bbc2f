"""Bindings for loramux's llama.cpp patches (scripts/llama_cpp_patches: loramux.patch, steps.patch).

scripts/setup.sh builds llama-cpp-python with it. A stock llama-cpp-python lacks these functions;
`available()` says which one this process has, and the engine falls back to stock behaviour without them
(adapter sets take turns; flash attention off on the CPU, to keep outputs batch-invariant; one decode
step per call).
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp

_lib = llama_cpp.llama_cpp._lib


def _bind(name: str, argtypes: list[Any], restype: Any) -> Any:
    fn = getattr(_lib, name, None)
    if fn is not None:
        fn.argtypes, fn.restype = argtypes, restype
    return fn


# (ctx, llama_adapter_lora ** as plain addresses, n_adapters, scales [n_seq][n_adapters], n_seq) -> 0 on success
set_adapters_lora_seq = _bind(
    "llama_set_adapters_lora_seq",
    [llama_cpp.llama_context_p_ctypes, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
     ctypes.POINTER(ctypes.c_float), ctypes.c_int32],
    ctypes.c_int32,
)  # fmt: skip
# (ctx, on): flash attention takes the same CPU kernel path for every query row
set_attn_batch_invariant = _bind(
    "llama_set_attn_batch_invariant", [llama_cpp.llama_context_p_ctypes, ctypes.c_bool], None
)


# (ctx, batch, max_steps, budget_us, eog, n_eog, ban_eog [n_rows], interrupt, out [max_steps][n_rows],
#  n_decoded, n_sampled) -> llama_decode's error or 0 (steps.patch: greedy decode steps in one call)
decode_argmax_steps = _bind(
    "llama_decode_argmax_steps",
    [llama_cpp.llama_context_p_ctypes, llama_cpp.llama_batch, ctypes.c_int32, ctypes.c_int64,
     ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.POINTER(ctypes.c_int8), ctypes.POINTER(ctypes.c_int32),
     ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32)],
    ctypes.c_int32,
)  # fmt: skip


def available() -> bool:
    """Whether this llama.cpp build has the patch."""
    return set_adapters_lora_seq is not None and set_attn_batch_invariant is not None
