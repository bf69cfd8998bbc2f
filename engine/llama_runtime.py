"""The llama.cpp model and context, through the low-level API. Only the worker thread may touch it.

The high-level `llama_cpp.Llama` serialises everything and applies LoRA only at construction, so the
engine uses the C functions directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Any

import llama_cpp

from engine.adapter_files import OpenedAdapterFile
from engine.adapter_validation import AdapterFileError
from engine.backend import ModelInfo
from engine.config import EngineConfig
from engine.errors import EngineFailure
from engine.gguf_header import read_gguf_header
from engine.llama_log import quiet_llama_logs
from engine.request import SamplingParams
from engine.sampler import LlamaSampler
from engine.scheduler import StepPlan
from engine.sequence import Sequence
from engine.step_batch import StepBatch

logger = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.fdopen.restype = ctypes.c_void_p
_libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
_libc.fclose.argtypes = [ctypes.c_void_p]


class LlamaRuntime:
    def __init__(self, config: EngineConfig) -> None:
        quiet_llama_logs()
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model = llama_cpp.llama_model_load_from_file(str(config.model_path).encode(), model_params)
        if not model:
            raise EngineFailure(f"llama.cpp could not load the model {config.model_path}")
        self.model = model

        # Every step fits one llama_batch: the budget of prompt tokens plus one token per sequence.
        self.batch_capacity = config.batch_tokens + config.max_sequences
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = config.context_size
        ctx_params.n_batch = self.batch_capacity
        ctx_params.n_ubatch = self.batch_capacity
        ctx_params.n_seq_max = config.max_sequences
        ctx_params.n_threads = config.threads
        ctx_params.n_threads_batch = config.threads
        # Separate KV streams per sequence: a sequence attends only over its own cells, and its output
        # does not depend on what else is in the batch.
        ctx_params.kv_unified = False
        ctx_params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, ctx_params)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise EngineFailure(f"llama.cpp could not create a context of {config.context_size} cells")
        self.ctx = ctx
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.context_per_sequence = llama_cpp.llama_n_ctx_seq(ctx)
        self._pieces: dict[int, bytes] = {}
        self._batch = StepBatch(self.batch_capacity)
        self.info = ModelInfo(
            path=str(config.model_path),
            description=self._model_desc(),
            architecture=self.meta_str("general.architecture") or "unknown",
            parameters=llama_cpp.llama_model_n_params(model),
            size_bytes=llama_cpp.llama_model_size(model),
            trained_context=llama_cpp.llama_model_n_ctx_train(model),
            context_per_sequence=self.context_per_sequence,
            max_sequences=config.max_sequences,
            has_chat_template=self.chat_template() is not None,
        )

    # -- vocabulary -------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            capacity = -n

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._piece(token, special=False)
            self._pieces[token] = piece
        return piece

    def token_text(self, token: int) -> str:
        """A special token's own text (e.g. '<|im_start|>'), for chat templates."""
        return self._piece(token, special=True).decode("utf-8", "replace")

    def _piece(self, token: int, *, special: bool) -> bytes:
        size = 32
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    @property
    def bos_token(self) -> int:
        return llama_cpp.llama_vocab_bos(self.vocab)

    @property
    def eos_token(self) -> int:
        return llama_cpp.llama_vocab_eos(self.vocab)

    @property
    def adds_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    # -- metadata ---------------------------------------------------------------------------------

    def meta_str(self, key: str) -> str | None:
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8", "replace") if raw else None

    def _model_desc(self) -> str:
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.model, buf, 256)
        return buf.value.decode("utf-8", "replace")

    # -- decoding ---------------------------------------------------------------------------------

    def new_sampler(self, params: SamplingParams) -> LlamaSampler:
        return LlamaSampler(self.ctx, self.n_vocab, params)

    def run_step(self, plan: StepPlan) -> list[tuple[Sequence, int]]:
        """Decode one step; return (sequence, batch row) for each sequence whose logits are to be sampled."""
        for src, dst in plan.moves:
            # Cross-stream copy: llama.cpp queues it and performs it before this step's compute.
            llama_cpp.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
            llama_cpp.llama_memory_seq_rm(self.memory, src, -1, -1)
        to_sample = self._batch.fill(plan)
        rc = llama_cpp.llama_decode(self.ctx, self._batch.batch)
        if rc != 0:
            raise EngineFailure(f"llama_decode failed with code {rc}")
        return to_sample

    # -- LoRA adapters ------------------------------------------------------------------------------

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Base tensor names and ggml shapes, to validate adapters against."""
        with open(self.info.path, "rb") as f:
            header = read_gguf_header(f, os.fstat(f.fileno()).st_size)
        return {t.name: t.shape for t in header.tensors}

    def load_adapter(self, opened: OpenedAdapterFile) -> Any:
        """Load from the already opened and validated file, not from its path (no swap in between)."""
        fd = os.dup(opened.fd)
        os.lseek(fd, 0, os.SEEK_SET)
        fp = _libc.fdopen(fd, b"rb")
        if not fp:
            os.close(fd)
            raise OSError("fdopen failed")
        try:
            adapter = llama_cpp.llama_adapter_lora_init_from_file_ptr(self.model, fp)
        finally:
            _libc.fclose(fp)
        if not adapter:  # a failed load is a NULL pointer, which is falsy but not None
            raise AdapterFileError(f"llama.cpp refused the adapter {opened.path.name} (see the server log)")
        return adapter

    def free_adapter(self, handle: Any) -> None:
        llama_cpp.llama_adapter_lora_free(handle)

    def set_adapters(self, adapters: list[tuple[Any, float]]) -> None:
        """Replace the context's whole adapter set (it applies to every sequence of a decode)."""
        if not adapters:
            rc = llama_cpp.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            n = len(adapters)
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*(h for h, _ in adapters))
            scales = (ctypes.c_float * n)(*(scale for _, scale in adapters))
            rc = llama_cpp.llama_set_adapters_lora(self.ctx, handles, n, scales)
        if rc != 0:
            raise EngineFailure(f"llama_set_adapters_lora failed with code {rc}")

    def free_sequence(self, seq_id: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def sequence_max_position(self, seq_id: int) -> int:
        """Largest KV position held by a sequence; -1 when it holds no cells."""
        return llama_cpp.llama_memory_seq_pos_max(self.memory, seq_id)

    def close(self) -> None:
        self._batch.close()
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)
