"""The llama.cpp runner alone, on the real model: a sequence's KV moves are never dropped; per-sequence
adapters (loramux's llama.cpp patch) are set only when they change."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp
import numpy as np
import pytest

from engine.config import EngineConfig
from engine.llama.cpp.runner import LlamaRunner
from engine.llama.scheduling.sequence import SeqStatus, Sequence
from engine.llama.scheduling.step import Chunk, StepPlan
from engine.request import AdapterKey, SamplingParams
from tests import ROOT

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)
ADAPTERS = ROOT / "adapters"


@pytest.fixture(scope="module")
def runner() -> Iterator[LlamaRunner]:
    r = LlamaRunner(EngineConfig(max_sequences=4, context_per_sequence=256))
    yield r
    r.close()


@pytest.fixture
def demo_adapters(runner: LlamaRunner) -> Iterator[Callable[[AdapterKey], list[tuple[Any, float]]]]:
    """caps and short loaded; yields what maps an adapter key such as (("caps", 1.0),) to its handles."""
    from engine.llama.adapters.files import read_adapter_file

    loaded = {n: runner.load_adapter(read_adapter_file(ADAPTERS / f"{n}.gguf", f"{n}.gguf")) for n in ("caps", "short")}
    yield lambda key: [(loaded[name], scale) for name, scale in key]
    runner._adapters.clear()  # the context holds raw pointers to them
    for handle in loaded.values():
        runner.free_adapter(handle)


def start(runner: LlamaRunner, request_id: int, seq_id: int, tokens: list[int]) -> Sequence:
    seq = Sequence(request_id, tokens, GREEDY, (), 32, 0.0, 1e9, status=SeqStatus.RUNNING, seq_id=seq_id)
    runner.add_sequence(request_id, GREEDY)
    return seq


def next_chunks(seqs: list[Sequence]) -> list[Chunk]:
    """Each sequence's prompt if it has no token yet, else its last token."""
    return [
        Chunk(s, [s.completion_tokens[-1]], s.next_decode_position, True)
        if s.completion_tokens
        else Chunk(s, s.prompt_tokens, 0, True)
        for s in sorted(seqs, key=lambda s: s.seq_id)
    ]


def decode(runner: LlamaRunner, seqs: list[Sequence], moves: list[tuple[int, int]] | None = None) -> list[int]:
    """One step of next_chunks; returns the sampled tokens."""
    output = runner.execute(StepPlan(next_chunks(seqs), moves or []))
    assert not output.failed
    for seq, token in output.sampled:
        seq.completion_tokens.append(token)
    return [token for _, token in output.sampled]


def positions(runner: LlamaRunner) -> list[int]:
    return [llama_cpp.llama_memory_seq_pos_max(runner.memory, i) for i in range(4)]


def test_moves_apply_on_a_step_without_chunks_and_on_a_failed_decode(
    runner: LlamaRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = runner.vocab.tokenize("The history of the river is", add_special=True, parse_special=False)
    reference = start(runner, 1, 0, tokens)
    moved = start(runner, 2, 2, tokens)
    decode(runner, [reference, moved])
    for _ in range(3):
        decode(runner, [reference, moved])

    # a plan with a move and no chunks: the move must still happen
    runner.execute(StepPlan([], [(2, 1)]))
    moved.seq_id = 1
    assert positions(runner)[1:3] == [len(tokens) + 2, -1]

    # a move in a step whose decode fails: the move must still happen too
    real_decode = llama_cpp.llama_decode
    monkeypatch.setattr(llama_cpp, "llama_decode", lambda ctx, batch: 1)
    chunk = Chunk(reference, [reference.completion_tokens[-1]], reference.next_decode_position, True)
    output = runner.execute(StepPlan([chunk], [(1, 3)]))
    monkeypatch.setattr(llama_cpp, "llama_decode", real_decode)
    assert [seq for seq, _ in output.failed] == [reference] and not output.sampled
    moved.seq_id = 3
    assert positions(runner)[1] == -1

    # the twice-moved sequence continues exactly like the one that never moved
    for _ in range(6):
        decode(runner, [reference, moved])
    assert moved.completion_tokens == reference.completion_tokens
    for seq in (reference, moved):
        runner.remove_sequence(seq.request_id, seq.seq_id)
    assert runner.kv_cells_used() == 0


def test_per_sequence_adapters_change_the_graph_only_when_the_adapter_list_changes(runner: LlamaRunner) -> None:
    """loramux's patch: a new list of adapters is a new graph (llama.cpp re-reserves); new scales for the
    same list are graph inputs. Each sequence's logits follow its own adapters."""
    from engine.llama.adapters.files import read_adapter_file

    assert runner.info.capabilities.mixed_adapter_sets
    caps = runner.load_adapter(read_adapter_file(ADAPTERS / "caps.gguf", "caps.gguf"))
    short = runner.load_adapter(read_adapter_file(ADAPTERS / "short.gguf", "short.gguf"))
    try:
        context_adapters = runner._adapters
        assert context_adapters.apply({0: [(caps, 1.0)]}) is True
        assert context_adapters.apply({0: [(caps, 1.0)]}) is False  # nothing to do
        assert context_adapters.apply({0: [(caps, 0.5)], 1: [(caps, 1.0)]}) is False  # scales only
        assert context_adapters.apply({0: [(caps, 1.0)], 1: [(short, 1.0)]}) is True
        assert context_adapters.holds(short) and context_adapters.holds(caps)
        runner.free_adapter(short)  # detaches the context's list first: it holds raw pointers
        short = None
        assert not context_adapters.holds(caps)
        assert context_adapters.apply({}) is False  # already cleared
    finally:
        for handle in (caps, short):
            if handle is not None:
                runner.free_adapter(handle)


def test_a_mixed_adapter_step_gives_each_sequence_bitwise_its_solo_logits(
    runner: LlamaRunner, demo_adapters: Callable[[AdapterKey], list[tuple[Any, float]]]
) -> None:
    """Four sequences over two adapters in one decode (caps on the first and last, short on the second,
    none on the third), a prompt step then a decode step: each sequence's logits are exactly those it
    gets alone. The patch computes an adapter on only its own tokens' rows where it covers few of them,
    and on every row at zero scale for the others where it covers most (as it does alone)."""
    keys = [(("caps", 1.0),), (("short", 1.0),), (), (("caps", 1.0),)]
    prompt = runner.vocab.tokenize("The history of the river is", add_special=True, parse_special=False)

    def logits(slots: list[int]) -> dict[int, list[np.ndarray]]:
        """Each slot's logits after its prompt step and after one decode step, those slots sharing both."""
        seqs = []
        for slot in slots:
            seq = Sequence(50 + slot, prompt, GREEDY, keys[slot], 32, 0.0, 1e9, status=SeqStatus.RUNNING, seq_id=slot)
            seq.adapter_handles = demo_adapters(seq.adapter_key)
            runner.add_sequence(seq.request_id, GREEDY)
            seqs.append(seq)
        seen: dict[int, list[np.ndarray]] = {slot: [] for slot in slots}
        try:
            for _ in range(2):
                plan = StepPlan(next_chunks(seqs))
                output = runner.execute(plan)
                assert not output.failed
                for seq, row in runner._batch.fill(plan)[0]:
                    pointer = llama_cpp.llama_get_logits_ith(runner.ctx, row)
                    seen[seq.seq_id].append(np.ctypeslib.as_array(pointer, shape=(runner.vocab.n_tokens,)).copy())
                for seq, token in output.sampled:
                    seq.completion_tokens.append(token)
        finally:
            for seq in seqs:
                runner.remove_sequence(seq.request_id, seq.seq_id)
        return seen

    together = logits([0, 1, 2, 3])
    for slot in range(4):
        alone = logits([slot])[slot]
        assert all(np.array_equal(a, b) for a, b in zip(together[slot], alone, strict=True)), slot
    assert not np.array_equal(together[0][0], together[2][0])  # the adapters do change the logits
    assert not np.array_equal(together[1][0], together[2][0])


@pytest.mark.parametrize("name", ["caps.gguf", "short.gguf"])
def test_per_sequence_adapters_compute_what_stock_llama_cpp_computes(runner: LlamaRunner, name: str) -> None:
    """The patch's LoRA (each token's scale on the rank-r intermediate, B transposed in F32 on the CPU)
    against stock llama_set_adapters_lora, on one prompt in a context of their own. Not bit for bit: the
    sums run in another order, and this model's logits move by ~0.5 even under an exact rewrite of stock
    LoRA (the adapter twice at half scale), since every matmul quantizes its activations. So the patch's
    logits must be as close to stock's as that rewrite is, while the adapter moves them far more."""
    from engine.llama.cpp import patch as llama_patch

    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified, params.n_threads = 512, 2, False, 2
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = llama_cpp.llama_init_from_model(runner.model, params)
    path = str(ADAPTERS / name).encode()
    adapters = [llama_cpp.llama_adapter_lora_init(runner.model, path) for _ in range(2)]
    prompt = runner.vocab.tokenize("The history of the river is", add_special=True, parse_special=False)
    tokens = (llama_cpp.llama_token * len(prompt))(*prompt)

    def logits() -> np.ndarray:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, len(prompt))) == 0
        row = llama_cpp.llama_get_logits_ith(ctx, -1)
        return np.ctypeslib.as_array(row, shape=(runner.vocab.n_tokens,)).copy().astype(np.float64)

    def stock(pairs: list[tuple[object, float]]) -> np.ndarray:
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * len(pairs))(*(h for h, _ in pairs))
        scales = (ctypes.c_float * len(pairs))(*(s for _, s in pairs))
        llama_cpp.llama_set_adapters_lora(ctx, handles, len(pairs), scales)
        return logits()

    try:
        base = stock([])
        reference = stock([(adapters[0], 1.0)])
        halves = stock([(adapters[0], 0.5), (adapters[1], 0.5)])
        handle = (ctypes.c_void_p * 1)(ctypes.cast(adapters[0], ctypes.c_void_p).value)
        assert llama_patch.set_adapters_lora_seq(ctx, handle, 1, (ctypes.c_float * 2)(1.0, 1.0), 2) == 0
        patched = logits()
        llama_patch.set_adapters_lora_seq(ctx, None, 0, None, 0)
    finally:
        for adapter in adapters:
            llama_cpp.llama_adapter_lora_free(adapter)
        llama_cpp.llama_free(ctx)

    rewrite = np.abs(halves - reference).max()
    effect = np.abs(reference - base).max()
    assert effect > 2 * rewrite  # the adapter moves the logits well beyond the rewrite's noise
    assert np.abs(patched - reference).max() <= 1.5 * rewrite
    assert np.corrcoef(patched - base, reference - base)[0, 1] > 0.95


def test_the_compute_buffer_reserved_for_an_adapter_list_does_not_depend_on_the_scales(
    runner: LlamaRunner, demo_adapters: Callable[[AdapterKey], list[tuple[Any, float]]]
) -> None:
    """Scales change without a re-reserve, and a graph bigger than the reserved one grows the compute buffer
    in the middle of serving (on a GPU, a new device allocation between two steps). So the reserve for a list
    of adapters must cover any scales: the same size whether one sequence applies each adapter (computed on
    its rows alone) or every sequence applies both (on every row). Read from llama.cpp's reserve log line."""
    from engine.llama.cpp.log import quiet_llama_logs

    prompt = runner.vocab.tokenize("The history of the river is", add_special=True, parse_special=False)
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(_level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
        if text and b"compute buffer size" in text:
            lines.append(text.decode())

    def reserved(keys: list[tuple]) -> list[str]:
        """The sizes logged by the reserve of a prompt step of one sequence per key (the list changed)."""
        seqs = [Sequence(70 + i, prompt, GREEDY, key, 32, 0.0, 1e9, status=SeqStatus.RUNNING, seq_id=i)
                for i, key in enumerate(keys)]  # fmt: skip
        for seq in seqs:
            seq.adapter_handles = demo_adapters(seq.adapter_key)
            runner.add_sequence(seq.request_id, GREEDY)
        lines.clear()
        try:
            plan = StepPlan(next_chunks(seqs))
            assert not runner.execute(plan).failed
        finally:
            for seq in seqs:
                runner.remove_sequence(seq.request_id, seq.seq_id)
        return list(lines)

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        one_each = reserved([(("caps", 1.0),), (("short", 1.0),)])
        assert reserved([()]) and one_each  # clearing the list reserves too: the next one is a new reserve
        both = (("caps", 1.0), ("short", 1.0))
        assert reserved([both] * 4) == one_each
    finally:
        quiet_llama_logs()


def test_ignore_eos_never_samples_an_end_of_generation_token(runner: LlamaRunner) -> None:
    """As llama-server does: the end-of-generation tokens are banned, so the text goes on as the model's most
    likely non-ending continuation (vLLM instead samples them and goes on, which gives invisible special
    tokens and a new chat turn). On the argmax path and on llama.cpp's chain, greedy and sampled."""
    eog = set(runner.vocab.eog_tokens)
    assert runner.vocab.eos_token in eog
    chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"  # greedy, it ends within 40 tokens
    prompt = runner.vocab.tokenize(chat, add_special=True, parse_special=True)

    def generate(sampling: SamplingParams, n: int = 40) -> list[int]:
        seq = Sequence(90, prompt, sampling, (), n, 0.0, 1e9, status=SeqStatus.RUNNING, seq_id=0)
        runner.add_sequence(seq.request_id, sampling)
        try:
            for _ in range(n):
                (token,) = decode(runner, [seq])
                if token in eog and not sampling.ignore_eos:
                    break
        finally:
            runner.remove_sequence(seq.request_id, seq.seq_id)
        return seq.completion_tokens

    for sampling in (GREEDY, SamplingParams(temperature=0.0, repeat_penalty=1.1)):
        ends = generate(sampling)
        assert ends[-1] in eog and len(ends) < 40  # the model does end here
        goes_on = generate(sampling.model_copy(update={"ignore_eos": True}))
        assert len(goes_on) == 40 and not eog.intersection(goes_on)
        assert goes_on[: len(ends) - 1] == ends[:-1]  # the same text up to where it would have ended
    sampled = generate(SamplingParams(temperature=1.0, seed=7, ignore_eos=True), 64)
    assert len(sampled) == 64 and not eog.intersection(sampled)


def llama_cpp_penalties(n_vocab: int, p: SamplingParams) -> Any:
    """llama.cpp's own penalties sampler (loramux applies the penalties itself, engine/llama/cpp/penalties.py)."""
    return llama_cpp.llama_sampler_init_penalties(
        n_vocab, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
    )


def llama_cpp_chain(n_vocab: int, params: SamplingParams) -> Any:
    """llama.cpp's own chain for `params`, its penalties sampler included."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = llama_cpp.llama_sampler_chain_add
    p = params
    add(chain, llama_cpp_penalties(n_vocab, p))
    if p.temperature == 0.0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
    else:
        add(chain, llama_cpp.llama_sampler_init_top_k(p.top_k))
        add(chain, llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
        add(chain, llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(p.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(p.seed))
    return chain


TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


def penalised_by_llama_cpp(logits: np.ndarray, penalties: Any) -> np.ndarray:
    """`logits` as llama.cpp's penalties sampler leaves them (it works on a candidate array: a copy)."""
    data = np.zeros(len(logits), TOKEN_DATA)
    data["id"], data["logit"] = np.arange(len(logits)), logits
    pointer = data.ctypes.data_as(llama_cpp.llama_token_data_p)
    candidates = llama_cpp.llama_token_data_array(pointer, len(data), -1, False)
    llama_cpp.llama_sampler_apply(penalties, ctypes.byref(candidates))
    return data["logit"]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, repeat_penalty=1.3, repeat_last_n=8),  # the window fills, then slides
        SamplingParams(temperature=0.0, repeat_penalty=0.8),  # below 1: repeats are favoured
        SamplingParams(temperature=0.0, repeat_penalty=1.0, frequency_penalty=0.7, presence_penalty=-0.3),
        SamplingParams(seed=11),  # the defaults: temperature 0.7, top-k/top-p/min-p, repeat_penalty 1.1 over 64
        SamplingParams(
            temperature=1.0, seed=5, repeat_penalty=1.2, frequency_penalty=0.4, presence_penalty=0.3, repeat_last_n=16
        ),
    ],
    ids=["greedy-window-8", "greedy-favour-repeats", "greedy-frequency-presence", "defaults", "sampled-all"],
)
def test_penalties_give_llama_cpps_logits_and_tokens(runner: LlamaRunner, params: SamplingParams) -> None:
    """The penalties are applied to the logits in place instead of by llama.cpp's sampler, which copies all
    49k logits first. Step by step: every logit is what llama.cpp's penalties sampler makes of it, to the
    bit, and the token is the one llama.cpp's chain with its own penalties sampler draws."""
    from engine.llama.cpp.sampler import LlamaSampler

    n_vocab = runner.vocab.n_tokens
    tokens = runner.vocab.tokenize("1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2,", add_special=True, parse_special=False)
    seq = start(runner, 40, 0, tokens)  # the runner's own sampler: plain greedy, which leaves the logits as they are
    ours = LlamaSampler(runner.ctx, n_vocab, params)
    reference = llama_cpp_chain(n_vocab, params)
    penalties = llama_cpp_penalties(n_vocab, params)
    penalised = 0  # steps where the penalties changed the greedy choice: the test must exercise them
    try:
        for _ in range(48):
            chunks = next_chunks([seq])
            output = runner.execute(StepPlan(chunks))
            [(_, row)], _ = runner._batch.fill(StepPlan(chunks))
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(runner.ctx, row), shape=(n_vocab,))
            expected_logits = penalised_by_llama_cpp(logits.copy(), penalties)
            expected = llama_cpp.llama_sampler_sample(reference, runner.ctx, row)  # reads the logits untouched
            token = ours.sample(row)  # penalises them in place
            assert logits.tobytes() == expected_logits.tobytes()
            assert token == expected
            llama_cpp.llama_sampler_accept(penalties, token)
            penalised += token != output.sampled[0][1]
            seq.completion_tokens.append(token)
    finally:
        ours.close()
        llama_cpp.llama_sampler_free(reference)
        llama_cpp.llama_sampler_free(penalties)
        runner.remove_sequence(seq.request_id, seq.seq_id)
    if params.temperature == 0.0:
        assert penalised > 0


def test_the_greedy_argmax_picks_what_llama_cpps_greedy_sampler_picks(runner: LlamaRunner) -> None:
    """Greedy requests skip llama.cpp's sampler chain (an argmax over the logits): same tokens."""
    prompts = ["The history of the river is", "List three colours:", "def fibonacci(n):", "Paris is"]
    seqs = [start(runner, 10 + i, i, runner.vocab.tokenize(p, add_special=True, parse_special=False))
            for i, p in enumerate(prompts)]  # fmt: skip
    chains = [llama_cpp_chain(runner.vocab.n_tokens, GREEDY) for _ in seqs]  # llama.cpp's own greedy sampler
    try:
        assert all(runner._samplers[s.request_id].argmax for s in seqs)
        for _ in range(12):
            chunks = next_chunks(seqs)
            output = runner.execute(StepPlan(chunks))
            rows = {seq.request_id: row for seq, row in runner._batch.fill(StepPlan(chunks))[0]}
            for (seq, token), chain in zip(output.sampled, chains, strict=True):
                assert token == llama_cpp.llama_sampler_sample(chain, runner.ctx, rows[seq.request_id])
                seq.completion_tokens.append(token)
    finally:
        for chain in chains:
            llama_cpp.llama_sampler_free(chain)
        for s in seqs:
            runner.remove_sequence(s.request_id, s.seq_id)


def test_attention_rows_are_bitwise_the_same_however_a_prompt_is_chunked_or_batched(runner: LlamaRunner) -> None:
    """The patch's batch-invariant flash attention sends every row down llama.cpp's tiled path: a
    150-token prompt read in one chunk, in uneven chunks (37 rows, 1 row: stock would take its one-row
    path for those) beside another sequence's decoding, or one token per step as decoding reads tokens,
    gives the same logits bit for bit at its last row and at three decode steps after it. Chunks of up to
    21 rows (1 and 12 here, and decoding) share a tile with the other heads of their KV head; longer ones
    take a tile per head: both tile shapes are compared. And they are
    stock llama.cpp's own for a 150-row chunk (its tiled path), from a plain context of the same model."""
    prompt = runner.vocab.tokenize("The river runs to the sea. " * 30, add_special=True, parse_special=False)[:150]
    other_prompt = runner.vocab.tokenize("Count to ten:", add_special=True, parse_special=False)

    def row_logits(plan: StepPlan, seq: Sequence) -> np.ndarray:
        row = next(r for s, r in runner._batch.fill(plan)[0] if s is seq)
        pointer = llama_cpp.llama_get_logits_ith(runner.ctx, row)
        return np.ctypeslib.as_array(pointer, shape=(runner.vocab.n_tokens,)).copy()

    def read(chunk_sizes: list[int], company: bool) -> list[np.ndarray]:
        seq = Sequence(70, prompt, GREEDY, (), 32, 0.0, 1e9, status=SeqStatus.RUNNING, seq_id=1)
        runner.add_sequence(seq.request_id, GREEDY)
        others = [start(runner, 71, 0, other_prompt)] if company else []
        seen: list[np.ndarray] = []
        try:
            if others:
                decode(runner, others)  # its prompt; it decodes beside every chunk from here on
            begin = 0
            for size in chunk_sizes:
                last = begin + size == len(prompt)
                plan = StepPlan([*next_chunks(others), Chunk(seq, prompt[begin : begin + size], begin, last)])
                output = runner.execute(plan)
                assert not output.failed
                if last:
                    seen.append(row_logits(plan, seq))
                for s, token in output.sampled:
                    s.completion_tokens.append(token)
                begin += size
            for _ in range(3):
                plan = StepPlan(next_chunks([*others, seq]))
                output = runner.execute(plan)
                assert not output.failed
                seen.append(row_logits(plan, seq))
                for s, token in output.sampled:
                    s.completion_tokens.append(token)
        finally:
            runner.remove_sequence(seq.request_id, seq.seq_id)
            for other in others:
                runner.remove_sequence(other.request_id, other.seq_id)
        return seen

    whole = read([150], company=False)
    for chunk_sizes, company in (([100, 37, 1, 12], True), ([1] * 150, False)):
        again = read(chunk_sizes, company)
        assert all(np.array_equal(a, b) for a, b in zip(whole, again, strict=True)), chunk_sizes

    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified, params.n_threads = 256, 1, False, 2
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(runner.model, params)
    try:
        tokens = (llama_cpp.llama_token * len(prompt))(*prompt)
        assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, len(prompt))) == 0
        row = llama_cpp.llama_get_logits_ith(ctx, -1)
        stock = np.ctypeslib.as_array(row, shape=(runner.vocab.n_tokens,)).copy()
    finally:
        llama_cpp.llama_free(ctx)
    assert np.array_equal(whole[0], stock)
