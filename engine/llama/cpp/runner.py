"""The llama.cpp model and context through the low-level API: executes step plans.

Only the core's thread calls it. The high-level `llama_cpp.Llama` serialises everything and applies LoRA
only at construction, so the runner uses the C functions directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp

from engine.config import EngineConfig
from engine.errors import EngineError, EngineFailure, NonFiniteOutput
from engine.info import Capabilities, ModelInfo
from engine.llama.adapters.base_model import AdapterBase
from engine.llama.adapters.files import AdapterFileBytes
from engine.llama.adapters.validation import AdapterFileError
from engine.llama.cpp import greedy_steps
from engine.llama.cpp import patch as llama_patch
from engine.llama.cpp.constraints import TokenMask
from engine.llama.cpp.context_adapters import ContextAdapters, OneSetPerStep, PerSequence
from engine.llama.cpp.cpu_share import ThreadGovernor
from engine.llama.cpp.devices import can_offload, gpu_names
from engine.llama.cpp.greedy_steps import GreedySteps
from engine.llama.cpp.log import quiet_llama_logs
from engine.llama.cpp.logprobs import RowScores, logits_row
from engine.llama.cpp.sampler import LlamaSampler, NonFiniteLogits
from engine.llama.cpp.step_batch import StepBatch
from engine.llama.cpp.vocab import LlamaVocab
from engine.llama.scheduling.sequence import Sequence, TokenScores
from engine.llama.scheduling.step import StepOutput, StepPlan
from engine.request import MAX_ADAPTERS_PER_REQUEST, AdapterKey, SamplingParams

logger = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.fmemopen.restype = ctypes.c_void_p
_libc.fmemopen.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.fclose.argtypes = [ctypes.c_void_p]


class LlamaRunner:
    def __init__(self, config: EngineConfig) -> None:
        quiet_llama_logs()
        llama_cpp.llama_backend_init()
        self.model_path = config.model_path
        model_params = llama_cpp.llama_model_default_params()
        offload = can_offload()  # enumerates ggml's devices: once
        model_params.n_gpu_layers = _gpu_layers(config.gpu_layers, offload)
        # ggml's CPU "extra" buffer types re-lay weights for other kernels: AMX tiles where the build CPU
        # has AMX (-march=native then compiles them in; used for Q4_1 and Q8_0, they crashed in the first
        # decode on a Sapphire Rapids VM) and repacked Q4_0 / K-quant blocks, whose kernels take a step's
        # rows four at a time (gemm) and the rest one by one (gemv): a row's arithmetic would depend on
        # how many rows share the step. Off on the CPU: every matmul takes ggml's plain vec_dot path,
        # batch-invariant, on any CPU the wheel is built on.
        if model_params.n_gpu_layers == 0:
            model_params.use_extra_bufts = False
        # The file's hash (for receipts) is read while llama.cpp loads it: the two share the page cache.
        with ThreadPoolExecutor(1, thread_name_prefix="loramux-hash") as pool:
            digest = pool.submit(_sha256, config.model_path)
            model = llama_cpp.llama_model_load_from_file(str(config.model_path).encode(), model_params)
            model_sha256 = digest.result()
        if not model:
            raise EngineFailure(f"llama.cpp could not load the model {config.model_path.name}")
        self.model = model

        # Every step fits one llama_batch: the budget of prompt tokens plus one token per sequence.
        capacity = config.batch_tokens + config.max_sequences
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = config.context_size
        ctx_params.n_batch = capacity
        ctx_params.n_ubatch = capacity
        ctx_params.n_seq_max = config.max_sequences
        ctx_params.n_threads = config.threads
        ctx_params.n_threads_batch = config.threads
        # Separate KV streams per sequence: a sequence attends only over its own cells, and its output
        # does not depend on what else is in the batch.
        ctx_params.kv_unified = False
        # Flash attention on the CPU only with the patch's batch-invariant mode (every row on the tiled
        # path): stock llama.cpp takes a tiled path for 64+ query rows of a sequence, a split-KV path for
        # one row over 512+ cells and a one-row path otherwise, each summing in its own order, and which
        # one runs depends on what shares the step (a 360-token prompt's greedy text changed when another
        # request was decoding; a prefix-cache hit could change it too). Without the patch it stays off
        # here. GPU builds keep llama.cpp's choice.
        patched = llama_patch.available()
        self._invariant_attention = model_params.n_gpu_layers == 0 and config.flash_attention and patched
        if model_params.n_gpu_layers == 0 and not self._invariant_attention:
            ctx_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx_params.no_perf = True
        self._ctx_params = ctx_params
        # One decode for every adapter set where llama.cpp has loramux's patch; else one set per step.
        self._mixed_adapters = config.mix_adapters and patched
        if not patched:
            logger.warning(
                "this llama.cpp build lacks loramux's patch (scripts/setup.sh builds it): requests with different "
                "adapter sets take turns instead of sharing decode steps, and flash attention is off on the CPU"
            )
        try:
            self._new_context()
        except EngineFailure:
            llama_cpp.llama_model_free(model)
            raise
        ctx = self.ctx
        self.vocab = LlamaVocab(model)
        self.max_sequences = config.max_sequences
        self._batch = StepBatch(capacity)
        self._governor = ThreadGovernor(config.threads) if config.adaptive_threads else None
        self._threads = config.threads
        self._samplers: dict[int, LlamaSampler] = {}  # request id → sampler chain
        budget = config.greedy_steps_ms / 1000
        steps = budget > 0 and greedy_steps.available()
        self._steps = GreedySteps(capacity, self.vocab.eog_tokens, budget) if steps else None
        self.info = ModelInfo(
            name=config.model_path.name,
            sha256=model_sha256,
            description=self._model_desc(),
            architecture=self._meta_str("general.architecture") or "unknown",
            parameters=llama_cpp.llama_model_n_params(model),
            size_bytes=llama_cpp.llama_model_size(model),
            context_per_request=llama_cpp.llama_n_ctx_seq(ctx),
            max_running_requests=config.max_sequences,
            capabilities=Capabilities(
                max_adapters_per_request=MAX_ADAPTERS_PER_REQUEST,
                mixed_adapter_sets=self._mixed_adapters,
                # on the CPU: batch-invariant kernels (no llamafile sgemm, the patch's attention paths or none)
                batch_invariant=model_params.n_gpu_layers == 0,
                constrained_output=True,
                prefix_cache=config.prefix_cache_budget > 0,
            ),
            **_placement(model, model_params.n_gpu_layers, offload),
        )

    def _new_context(self) -> None:
        ctx = llama_cpp.llama_init_from_model(self.model, self._ctx_params)
        if not ctx:
            raise EngineFailure(f"llama.cpp could not create a context of {self._ctx_params.n_ctx} cells")
        self.ctx = ctx
        self.memory = llama_cpp.llama_get_memory(ctx)
        if self._invariant_attention:
            llama_patch.set_attn_batch_invariant(ctx, True)
        self._adapters: ContextAdapters = (
            PerSequence(ctx, self._ctx_params.n_seq_max) if self._mixed_adapters else OneSetPerStep(ctx)
        )

    def rebuild_context(self) -> None:
        assert not self._samplers, "every sequence (and its sampler, which points at the context) is gone"
        llama_cpp.llama_free(self.ctx)
        self._new_context()
        self._threads = self._ctx_params.n_threads

    # -- requests ---------------------------------------------------------------------------------------

    def add_sequence(
        self, request_id: int, sampling: SamplingParams, constraint: Any = None, logprobs: int | None = None
    ) -> None:
        mask = TokenMask(constraint, self.vocab.n_tokens) if constraint is not None else None
        banned = self.vocab.eog_tokens if sampling.ignore_eos else ()
        self._samplers[request_id] = LlamaSampler(self.ctx, self.vocab.n_tokens, sampling, mask, banned, logprobs)

    def interrupt(self) -> None:
        if self._steps is not None:
            self._steps.interrupt()

    def remove_sequence(self, request_id: int | None, seq_id: int | None) -> None:
        sampler = self._samplers.pop(request_id, None)
        if sampler is not None:
            sampler.close()
        if seq_id is not None:
            llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    # -- one step ---------------------------------------------------------------------------------------

    def execute(self, plan: StepPlan) -> StepOutput:
        # Slots taken by admission first, then moves, always: the scheduler has already decided them.
        for reuse in plan.reuses:
            if reuse.source is not None:  # a cached prefix in another slot: copy it over
                llama_cpp.llama_memory_seq_cp(self.memory, reuse.source, reuse.slot, -1, -1)
            llama_cpp.llama_memory_seq_rm(self.memory, reuse.slot, reuse.keep, -1)
        for src, dst in plan.moves:
            # Cross-stream copy: llama.cpp queues it and performs it, in order, before the next compute.
            llama_cpp.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
            llama_cpp.llama_memory_seq_rm(self.memory, src, -1, -1)
        output = StepOutput()
        if not plan.chunks:
            return output
        try:
            self._follow_cpu_share()
            output.adapter_switched = self._adapters.apply(plan.adapter_handles)
            to_sample, prompt_rows = self._batch.fill(plan)
            bans = self._greedy_bans(plan, to_sample, prompt_rows)
            steps: list[list[int]] = []
            if bans is None:
                rc = llama_cpp.llama_decode(self.ctx, self._batch.batch)
            else:
                assert self._steps is not None
                rc, output.steps, steps = self._steps.run(self.ctx, self._batch.batch, bans, plan.max_steps)
            if rc != 0:
                raise EngineFailure(f"llama_decode returned {rc}")
        except Exception as exc:
            logger.error("decode step of %d sequences failed: %s", len(plan.chunks), exc)
            output.failed = [
                (c.seq, EngineFailure("the model failed on this step; retry the request")) for c in plan.chunks
            ]
            return output
        if bans is not None:  # several steps in llama.cpp: the last one's rows are sampled below unless it did
            output.sampled = [(seq, tokens[i]) for tokens in steps for i, (seq, _) in enumerate(to_sample)]
            if len(steps) == output.steps:
                return output
        for seq, first_row, start_pos, count in prompt_rows:  # before sampling, which changes its row in place
            output.prompt_scores.append((seq, self._prompt_scores(seq, first_row, start_pos, count)))
        self._sample(to_sample, output, len(steps))
        return output

    def _greedy_bans(
        self, plan: StepPlan, to_sample: list[tuple[Sequence, int]], prompt_rows: list[tuple[Sequence, int, int, int]]
    ) -> list[bool] | None:
        """Each batch row's end-of-generation ban where llama.cpp may run this plan's steps itself
        (greedy_steps.py: every row a decoding sequence taking the plain argmax); else None."""
        if self._steps is None or plan.max_steps < 2 or prompt_rows or len(to_sample) != plan.num_tokens:
            return None
        bans = []
        for seq, _ in to_sample:  # one row per chunk: row i is the i-th
            sampler = self._samplers[seq.request_id]
            if not sampler.plain_argmax:
                return None
            bans.append(sampler.bans)
        return bans

    def _sample(self, to_sample: list[tuple[Sequence, int]], output: StepOutput, taken: int) -> None:
        """Sample each row with its request's sampler; `taken`: tokens of this output already sampled per row."""
        for seq, row in to_sample:
            try:
                sampler = self._samplers[seq.request_id]
                output.sampled.append((seq, sampler.sample(row)))
                if sampler.scores is not None:
                    output.sampled_scores[seq.request_id] = sampler.scores
            except NonFiniteLogits:
                named = tuple((use.name, use.scale) for use in seq.adapters_used)
                logger.warning("request %d: non-finite logits (adapters %s)", seq.request_id, named)
                output.failed.append((seq, _non_finite(named, len(seq.completion_tokens) + taken)))
            except EngineError as exc:  # the request's own (its constraint could not go on)
                logger.info("request %d failed while sampling: %s", seq.request_id, exc)
                output.failed.append((seq, exc))
            except Exception:
                logger.exception("sampling failed for request %d", seq.request_id)
                output.failed.append(
                    (seq, EngineFailure("sampling failed for this request (the server log has details); retry it"))
                )

    def _prompt_scores(self, seq: Sequence, first_row: int, start_pos: int, count: int) -> list[TokenScores]:
        """The prompt tokens this chunk's rows predict (each row the next token; the prompt's last row
        predicts the first generated one, which sampling scores), each scored by the row before it."""
        prompt = seq.prompt_tokens
        end = min(start_pos + count, len(prompt) - 1)
        k = seq.logprobs or 0
        return [
            RowScores(logits_row(self.ctx, first_row + pos - start_pos, self.vocab.n_tokens)).scores(prompt[pos + 1], k)
            for pos in range(start_pos, end)
        ]

    def _follow_cpu_share(self) -> None:
        if self._governor is not None and (threads := self._governor.update()) != self._threads:
            logger.debug("llama.cpp threads %d -> %d (other processes' CPU use)", self._threads, threads)
            llama_cpp.llama_set_n_threads(self.ctx, threads, threads)
            self._threads = threads

    def kv_cells_used(self, seq_ids: Iterable[int] | None = None) -> int:
        used = 0
        for seq_id in range(self.max_sequences) if seq_ids is None else seq_ids:
            top = llama_cpp.llama_memory_seq_pos_max(self.memory, seq_id)
            if top >= 0:
                used += top - llama_cpp.llama_memory_seq_pos_min(self.memory, seq_id) + 1
        return used

    # -- LoRA adapters ----------------------------------------------------------------------------------

    def adapter_base(self) -> AdapterBase:
        return AdapterBase.from_model_file(self.model_path)

    def load_adapter(self, file: AdapterFileBytes) -> Any:
        """Load the validated bytes from memory (fmemopen): no file I/O here, and no swap since validation."""
        fp = _libc.fmemopen(file.data, len(file.data), b"rb")
        if not fp:
            raise OSError(ctypes.get_errno(), "fmemopen failed")
        try:
            adapter = llama_cpp.llama_adapter_lora_init_from_file_ptr(self.model, fp)
        finally:
            _libc.fclose(fp)
        if not adapter:  # a failed load is a NULL pointer, which is falsy but not None
            raise AdapterFileError(f"llama.cpp refused the adapter {file.path.name} (see the server log)")
        return adapter

    def free_adapter(self, handle: Any) -> None:
        if self._adapters.holds(handle):  # the context holds raw pointers to its adapters: detach first
            self._adapters.clear()
        llama_cpp.llama_adapter_lora_free(handle)

    # -- metadata ---------------------------------------------------------------------------------------

    def _meta_str(self, key: str) -> str | None:
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    def _model_desc(self) -> str:
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.model, buf, 256)
        return buf.value.decode("utf-8", "replace")

    def close(self) -> None:
        for sampler in self._samplers.values():
            sampler.close()
        self._samplers.clear()
        self._batch.close()
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


def _non_finite(adapter_key: AdapterKey, position: int) -> EngineError:
    """The error of a request whose logits were NaN or infinite. Each sequence's rows are computed from its
    own tokens and adapters alone, so the cause is its adapter set; without adapters, the model's."""
    where = f"at output token {position + 1}"
    if adapter_key:
        names = ", ".join(f"{name} x{scale:g}" for name, scale in adapter_key)
        return NonFiniteOutput(
            f"the model's scores became NaN or infinite {where} with this request's adapters ({names}): "
            "an adapter is numerically broken at this scale; retry with a smaller scale or without it"
        )
    return EngineFailure(f"the model's scores became NaN or infinite {where} (the server log has details)")


def _gpu_layers(asked: int | None, offload: bool) -> int:
    """llama.cpp's n_gpu_layers for the option: unset = all (-1) where the build can offload, else 0."""
    if asked is None:
        return -1 if offload else 0
    if asked > 0 and not offload:
        raise EngineFailure(
            f"--gpu-layers {asked} asks for GPU offload, but this llama.cpp build has no GPU backend or sees no "
            "GPU: build it for your GPU (README: GPU offload, LORAMUX_LLAMA_CMAKE_ARGS) or use --gpu-layers 0"
        )
    return asked


def _placement(model: llama_cpp.llama_model_p, n_gpu_layers: int, offload: bool) -> dict[str, Any]:
    """Where the model's layers went, as llama.cpp places them: the last n_gpu_layers on the GPU."""
    layers = llama_cpp.llama_model_n_layer(model) + 1  # llama.cpp counts the output layer too
    offloaded = layers if n_gpu_layers < 0 else min(n_gpu_layers, layers)
    if not offload or offloaded == 0:
        return {"backend": "CPU", "layers": layers, "gpu_layers": 0}
    return {"backend": ", ".join(gpu_names()), "layers": layers, "gpu_layers": offloaded}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
