"""What this llama.cpp build can run on: its compute devices (ggml's backend registry) and whether it
can offload layers to a GPU. llama-cpp-python binds llama.h only, so ggml's device functions are
called through the libggml it already loaded."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import llama_cpp

# enum ggml_backend_dev_type
_KINDS = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "accelerator", 4: "meta"}


@dataclass(frozen=True)
class Device:
    name: str  # e.g. "CUDA0", "Metal", "CPU"
    description: str  # e.g. "NVIDIA H100 80GB HBM3"
    kind: str  # CPU, GPU, iGPU, accelerator
    memory_total: int  # bytes; 0 where the backend does not say


@cache
def _ggml() -> ctypes.CDLL:
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(next(lib_dir.glob("libggml.*"), lib_dir / "libggml.so")))
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    size_p = ctypes.POINTER(ctypes.c_size_t)
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
    return lib


def devices() -> list[Device]:
    """Every device the build registered (after llama_backend_init), CPU included."""
    try:
        lib = _ggml()
    except OSError:  # a build whose ggml is linked statically: only what llama.h says
        return [Device("CPU", "CPU", "CPU", 0)]
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(
            Device(
                name=(lib.ggml_backend_dev_name(dev) or b"?").decode(errors="replace"),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                kind=_KINDS.get(lib.ggml_backend_dev_type(dev), "other"),
                memory_total=total.value,
            )
        )
    return found


def can_offload() -> bool:
    """Whether this build has a GPU backend with a device present (CUDA, Metal, Vulkan, …)."""
    return bool(llama_cpp.llama_supports_gpu_offload()) and any(d.kind in ("GPU", "iGPU") for d in devices())


def gpu_names() -> list[str]:
    return [f"{d.name} ({d.description})" for d in devices() if d.kind in ("GPU", "iGPU")]
