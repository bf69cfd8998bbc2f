"""The scheduler alone: plans as data, outputs fed back through update_from_output. No threads, no model."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import EngineFailure
from engine.info import ModelInfo
from engine.llama.commands import Event, RequestFailed, RequestFinished, RequestOutput
from engine.llama.scheduling.scheduler import Scheduler
from engine.llama.scheduling.sequence import Sequence
from engine.llama.scheduling.step import StepOutput, StepPlan
from engine.request import SamplingParams
from tests.fake_runner import EOS, FakeVocab


def make_seq(rid: int, n_prompt: int = 4, key: tuple = (), max_new_tokens: int = 10) -> Sequence:
    return Sequence(
        request_id=rid,
        prompt_tokens=list(range(n_prompt)),
        sampling=SamplingParams(),
        adapter_key=key,
        max_new_tokens=max_new_tokens,
        submitted_at=0.0,
        deadline=1e9,
    )


def scheduler(max_sequences: int, batch_tokens: int = 64, group_quantum: int = 8, mixed: bool = False) -> Scheduler:
    return Scheduler(
        FakeVocab(),
        MODEL,
        max_sequences=max_sequences,
        batch_tokens=batch_tokens,
        group_quantum=group_quantum,
        mixed_adapters=mixed,
    )


MODEL = ModelInfo(
    name="fake.gguf", description="fake", architecture="fake", parameters=0, size_bytes=0,
    context_per_request=4096, max_running_requests=8,
)  # fmt: skip


def texts(events: list[Event]) -> list[tuple[int, str]]:
    return [(e.request_id, e.delta.text) for e in events if isinstance(e, RequestOutput)]


def finished(events: list[Event]) -> list[int]:
    return [e.request_id for e in events if isinstance(e, RequestFinished)]


def failed(events: list[Event]) -> list[tuple[int, object]]:
    return [(e.request_id, e.error) for e in events if isinstance(e, RequestFailed)]


def sample_all(plan: StepPlan, token: int = ord("x")) -> StepOutput:
    """The output of a step in which every sampling chunk produced `token`."""
    return StepOutput(sampled=[(c.seq, token) for c in plan.chunks if c.samples])


def test_new_request_joins_running_ones_at_the_next_step() -> None:
    s = scheduler(max_sequences=4, batch_tokens=64)
    a = make_seq(1)
    s.add(a)
    plan = s.schedule(0.0)
    assert plan is not None and [(c.seq, len(c.tokens), c.samples) for c in plan.chunks] == [(a, 4, True)]
    s.update_from_output(plan, sample_all(plan, 7), 0.0)
    b = make_seq(2, n_prompt=3)
    s.add(b)
    plan = s.schedule(0.0)
    assert plan is not None
    # a's next token and b's whole prompt in one step
    assert [(c.seq.request_id, c.tokens, c.start_pos) for c in plan.chunks] == [(1, [7], 4), (2, [0, 1, 2], 0)]


def test_long_prompts_are_chunked_by_the_token_budget() -> None:
    s = scheduler(max_sequences=2, batch_tokens=16)
    a = make_seq(1, n_prompt=40)
    s.add(a)
    sizes = []
    for _ in range(3):
        plan = s.schedule(0.0)
        assert plan is not None
        (chunk,) = plan.chunks
        sizes.append((len(chunk.tokens), chunk.start_pos, chunk.samples))
        read = s.prompt_tokens_read
        s.update_from_output(plan, sample_all(plan), 0.0)
        assert s.prompt_tokens_read - read == len(chunk.tokens)
    assert a.num_prefilled == 40 and a.completion_tokens == [ord("x")]
    assert sizes == [(16, 0, False), (16, 16, False), (8, 32, True)]


def test_waiting_requests_are_admitted_when_a_slot_frees_with_lowest_seq_id() -> None:
    s = scheduler(max_sequences=2, batch_tokens=64)
    seqs = [make_seq(i) for i in range(1, 4)]
    for q in seqs:
        s.add(q)
    s.schedule(0.0)
    assert [q.seq_id for q in seqs] == [0, 1, -1] and len(s.waiting) == 1
    s.remove(seqs[0])
    s.schedule(1.0)
    assert seqs[2].seq_id == 0 and seqs[2].admitted_at == 1.0


def test_chunks_are_sorted_by_seq_id() -> None:
    """A newcomer admitted below running sequences prefills in the same step as their decodes."""
    s = scheduler(max_sequences=4)
    seqs = [make_seq(i) for i in range(1, 4)]
    for q in seqs:
        s.add(q)
    plan = s.schedule(0.0)
    assert plan is not None
    s.update_from_output(plan, sample_all(plan), 0.0)
    s.remove(seqs[0])  # frees id 0, below the running 1 and 2: no move needed
    s.add(make_seq(9))
    plan = s.schedule(0.0)
    assert plan is not None and plan.moves == []
    assert [(c.seq.request_id, c.samples and len(c.tokens) == 1) for c in plan.chunks] == [
        (9, False),
        (2, True),
        (3, True),
    ]
    assert [c.seq.seq_id for c in plan.chunks] == [0, 1, 2]


def run_steps(s: Scheduler, n: int) -> list[tuple]:
    """Schedule n steps, pretending each sampled sequence got a token."""
    keys = []
    for _ in range(n):
        plan = s.schedule(0.0)
        assert plan is not None
        (key,) = plan.adapter_keys  # without mixing, a step serves one adapter set
        keys.append(key)
        s.update_from_output(plan, sample_all(plan), 0.0)
    return keys


A = (("a", 1.0),)
B = (("b", 1.0),)


def test_adapter_groups_take_turns_by_quantum() -> None:
    s = scheduler(max_sequences=4, batch_tokens=64, group_quantum=2)
    s.add(make_seq(1, key=()))
    s.add(make_seq(2, key=A))
    # the second group gets one step at once for its first token; then turns of two steps
    assert run_steps(s, 7) == [(), A, (), A, A, (), ()]


def test_a_group_waiting_for_its_first_token_is_served_next() -> None:
    s = scheduler(max_sequences=4, batch_tokens=64, group_quantum=8)
    s.add(make_seq(1, key=()))
    assert run_steps(s, 3) == [(), (), ()]
    s.add(make_seq(2, key=A))
    s.add(make_seq(3, key=B))
    assert run_steps(s, 4) == [A, B, (), ()]


def test_holes_left_by_finished_sequences_are_closed_by_moving_the_highest() -> None:
    s = scheduler(max_sequences=4, batch_tokens=64)
    seqs = [make_seq(i) for i in range(1, 5)]
    for q in seqs:
        s.add(q)
    s.schedule(0.0)
    s.remove(seqs[1])  # frees seq id 1
    plan = s.schedule(0.0)
    assert plan is not None and plan.moves == [(3, 1)]
    assert sorted(s.running) == [0, 1, 2] and seqs[3].seq_id == 1
    assert [c.seq.seq_id for c in plan.chunks] == [0, 1, 2]


def test_a_hole_below_every_running_id_needs_no_move() -> None:
    s = scheduler(max_sequences=3, batch_tokens=64)
    seqs = [make_seq(i) for i in range(1, 4)]
    for q in seqs:
        s.add(q)
    s.schedule(0.0)
    s.remove(seqs[0])
    plan = s.schedule(0.0)
    assert plan is not None and plan.moves == []  # ids 1, 2 are consecutive already


def test_a_waiting_request_fills_a_hole_without_a_move() -> None:
    s = scheduler(max_sequences=3, batch_tokens=64)
    seqs = [make_seq(i) for i in range(1, 5)]
    for q in seqs:
        s.add(q)
    s.schedule(0.0)
    s.remove(seqs[0])
    plan = s.schedule(0.0)
    assert plan is not None and plan.moves == [] and seqs[3].seq_id == 0


def test_admitted_requests_get_consecutive_seq_ids_per_adapter_group() -> None:
    s = scheduler(max_sequences=6, batch_tokens=64)
    for i, key in enumerate([A, B, A, B], start=1):
        s.add(make_seq(i, key=key))
    s.schedule(0.0)
    ids = {key: sorted(i for i, q in s.running.items() if q.adapter_key == key) for key in (A, B)}
    assert ids == {A: [0, 1], B: [2, 3]}


def test_a_newcomer_takes_a_free_id_next_to_its_group() -> None:
    s = scheduler(max_sequences=6, batch_tokens=64)
    seqs = [make_seq(i, key=key) for i, key in enumerate([A, A, B, B, B], start=1)]
    for q in seqs:
        s.add(q)
    s.schedule(0.0)  # A: 0, 1; B: 2, 3, 4; free: 5
    s.remove(seqs[0])  # free: 0, 5
    s.add(make_seq(9, key=B))
    s.schedule(0.0)
    assert s.running[5].request_id == 9  # next to B's 4, not the lowest free id 0


def test_interleaved_groups_are_made_contiguous() -> None:
    """A at ids {0, 2} and B at {1}: A's step would cost two passes until B's member moves out of the way."""
    s = scheduler(max_sequences=4)
    seqs = [make_seq(1, key=A), make_seq(2, key=B), make_seq(3, key=A)]
    for q in seqs:
        s.add(q)
    s._admit(0.0)
    # force the interleaving that admissions over time can leave behind
    for q, seq_id in zip(seqs, [0, 1, 2], strict=True):
        del s.running[q.seq_id]
        q.seq_id = seq_id
    s.running = {q.seq_id: q for q in seqs}
    s._free_seq_ids = [3]
    plan = s.schedule(0.0)
    assert plan is not None
    ids = {key: sorted(i for i, q in s.running.items() if q.adapter_key == key) for key in (A, B)}
    assert ids[A] == [0, 1] and len(ids[B]) == 1
    assert plan.moves == [(1, 3), (2, 1)]  # B moves out to a free id, then A's top member fills its place
    again = s.schedule(0.0)
    assert again is not None and again.moves == []


def contiguous(s: Scheduler) -> bool:
    groups: dict[tuple, list[int]] = {}
    for i, q in s.running.items():
        groups.setdefault(q.adapter_key, []).append(i)
    return all(max(ids) - min(ids) + 1 == len(ids) for ids in groups.values())


@settings(max_examples=300, deadline=None)
@given(
    n_slots=st.integers(2, 12),
    layout=st.lists(st.sampled_from([None, (), A, B, (("c", 1.0),)]), min_size=2, max_size=12),
)
def test_compaction_reaches_contiguous_groups_and_then_stays_still(n_slots: int, layout: list) -> None:
    layout = (layout + [None] * n_slots)[:n_slots]
    if None not in layout:
        layout[-1] = None  # at least one free slot, as moves need one
    s = scheduler(max_sequences=n_slots)
    for seq_id, key in enumerate(layout):
        if key is not None:
            q = make_seq(seq_id + 1, key=key)
            q.seq_id, q.status = seq_id, q.status.RUNNING
            s.running[seq_id] = q
    s._free_seq_ids = [i for i, key in enumerate(layout) if key is None]
    members = {q.request_id: q.adapter_key for q in s.running.values()}
    moves = s._compact()
    assert contiguous(s)
    assert {q.request_id: q.adapter_key for q in s.running.values()} == members  # nobody lost or duplicated
    assert sorted(s._free_seq_ids + list(s.running)) == list(range(n_slots))
    assert len(moves) <= 2 * n_slots
    assert s._compact() == []  # stable: no moves once every group is contiguous


def test_a_finished_sequence_frees_its_slot_in_update_from_output() -> None:
    s = scheduler(max_sequences=2)
    a, b = make_seq(1, max_new_tokens=1), make_seq(2, max_new_tokens=3)
    s.add(a)
    s.add(b)
    plan = s.schedule(0.0)
    assert plan is not None
    events = s.update_from_output(plan, sample_all(plan), 1.0)
    assert finished(events) == [a.request_id] and a.finish_reason == "length" and a.finished_at == 1.0
    assert texts(events) == [(a.request_id, "x"), (b.request_id, "x")]
    assert events.index(next(e for e in events if isinstance(e, RequestFinished))) == 1  # after a's text
    assert list(s.running) == [1] and s._free_seq_ids == [0]


def test_a_failed_chunk_makes_no_progress_and_frees_its_slot() -> None:
    s = scheduler(max_sequences=2, batch_tokens=2)
    a = make_seq(1, n_prompt=4)
    s.add(a)
    plan = s.schedule(0.0)
    assert plan is not None
    error = EngineFailure("boom")
    events = s.update_from_output(plan, StepOutput(failed=[(a, error)]), 0.0)
    assert a.num_prefilled == 0 and s.prompt_tokens_read == 0
    assert failed(events) == [(a.request_id, error)] and not s.running and not s.has_work


def test_eos_finishes_with_stop() -> None:
    s = scheduler(max_sequences=1)
    a = make_seq(1)
    s.add(a)
    plan = s.schedule(0.0)
    assert plan is not None
    events = s.update_from_output(plan, sample_all(plan, EOS), 0.0)
    assert finished(events) == [a.request_id] and a.finish_reason == "stop" and texts(events) == []


def test_random_traffic_keeps_invariants() -> None:
    """Admissions, finishes and group turns at random: slots are never shared or lost."""
    rng = random.Random(7)
    s = scheduler(max_sequences=6, batch_tokens=16, group_quantum=3)
    keys = [(), A, B]
    rid = 0
    for _ in range(400):
        if rng.random() < 0.3:
            rid += 1
            s.add(make_seq(rid, n_prompt=rng.randint(1, 40), key=rng.choice(keys), max_new_tokens=rng.randint(1, 8)))
        plan = s.schedule(0.0)
        if plan is None:
            continue
        assert [c.seq.seq_id for c in plan.chunks] == sorted(c.seq.seq_id for c in plan.chunks)
        assert len(plan.adapter_keys) <= 1
        s.update_from_output(plan, sample_all(plan), 0.0)
        assert sorted(s._free_seq_ids + list(s.running)) == list(range(6))
        assert all(i == q.seq_id for i, q in s.running.items())


def test_mixed_adapters_put_every_set_in_one_step() -> None:
    """With per-sequence adapters, each step carries every running sequence, whatever its adapter set."""
    s = scheduler(max_sequences=6, batch_tokens=64, group_quantum=2, mixed=True)
    for rid, key in enumerate([(), A, B, A, ()], start=1):
        s.add(make_seq(rid, key=key))
    for _ in range(4):
        plan = s.schedule(0.0)
        assert plan is not None
        assert sorted(c.seq.request_id for c in plan.chunks) == sorted(q.request_id for q in s.running.values())
        assert plan.adapter_keys == {(), A, B}
        s.update_from_output(plan, sample_all(plan), 0.0)
    assert sorted(s.running) == [0, 1, 2, 3, 4]  # one contiguous range: one micro-batch in llama.cpp


def test_mixed_adapters_keep_all_seq_ids_contiguous_after_finishes() -> None:
    """A finish in the middle leaves a hole; with one group for all sets, the highest id moves into it."""
    s = scheduler(max_sequences=4, batch_tokens=64, mixed=True)
    seqs = [make_seq(rid, key=key, max_new_tokens=10) for rid, key in enumerate([A, B, (), A], start=1)]
    seqs[0].max_new_tokens = 1
    for q in seqs:
        s.add(q)
    plan = s.schedule(0.0)
    assert plan is not None
    s.update_from_output(plan, sample_all(plan), 0.0)  # request 1 (seq id 1: ids go () A A B) finishes
    plan = s.schedule(0.0)
    assert plan is not None and plan.moves == [(3, 1)]
    assert [c.seq.seq_id for c in plan.chunks] == [0, 1, 2]


def test_mixed_adapters_seat_the_same_adapter_set_side_by_side() -> None:
    """With sets mixing, sequences with the same set get neighbouring ids (the patch then computes each
    adapter on one run of rows), on arrival together and on a later arrival next to its set."""
    s = scheduler(max_sequences=8, batch_tokens=64, mixed=True)
    for rid, key in enumerate([A, B, A, B, ()], start=1):
        s.add(make_seq(rid, key=key))
    s.schedule(0.0)
    ids = {key: sorted(i for i, q in s.running.items() if q.adapter_key == key) for key in ((), A, B)}
    assert ids == {(): [0], A: [1, 2], B: [3, 4]}
    s.remove(s.running[0])  # a free id at 0, next to A's run...
    s.add(make_seq(9, key=B))
    s.schedule(0.0)
    assert s.running[5].request_id == 9  # ...but B's run ends at 4: the newcomer goes to 5


def test_random_mixed_traffic_keeps_invariants() -> None:
    rng = random.Random(11)
    s = scheduler(max_sequences=6, batch_tokens=16, mixed=True)
    rid = 0
    for _ in range(400):
        if rng.random() < 0.3:
            rid += 1
            key = rng.choice([(), A, B, (("a", 0.5), ("b", 1.0))])
            s.add(make_seq(rid, n_prompt=rng.randint(1, 40), key=key, max_new_tokens=rng.randint(1, 8)))
        plan = s.schedule(0.0)
        if plan is None:
            continue
        ids = [c.seq.seq_id for c in plan.chunks]
        assert ids == sorted(ids)
        decoding = {q.request_id for q in s.running.values() if not q.is_prefilling}
        assert decoding <= {c.seq.request_id for c in plan.chunks}  # nobody waits for a turn
        s.update_from_output(plan, sample_all(plan), 0.0)
        assert sorted(s._free_seq_ids + list(s.running)) == list(range(6))
        assert all(i == q.seq_id for i, q in s.running.items())


# -- batches: at most half the slots while others wait ------------------------------------------------------


def batch_seq(rid: int, batch: str = "b", n_prompt: int = 4) -> Sequence:
    seq = make_seq(rid, n_prompt, max_new_tokens=50)
    seq.batch_id = batch
    return seq


def test_a_batch_alone_takes_every_slot_and_gives_back_all_but_half_when_others_come() -> None:
    s = scheduler(4)
    for rid in range(6):
        s.add(batch_seq(rid))
    plan = s.schedule(0.0)
    assert plan is not None and sorted(c.seq.request_id for c in plan.chunks) == [0, 1, 2, 3]
    for _ in range(3):  # every member generates a few tokens
        s.update_from_output(plan, sample_all(plan), 0.0)
        plan = s.schedule(0.0)
        assert plan is not None
    s.update_from_output(plan, sample_all(plan), 0.0)
    caller_a, caller_b, caller_c = make_seq(10), make_seq(11), make_seq(12)
    for caller in (caller_a, caller_b, caller_c):
        s.add(caller)
    plan = s.schedule(0.0)
    assert plan is not None
    running = {seq.request_id for seq in s.running.values()}
    assert {10, 11} <= running and sum(seq.batch_id == "b" for seq in s.running.values()) == 2  # half
    # the newest members gave their slots back, cleared for the callers; they wait first among the batch
    assert {r.slot for r in plan.reuses if r.keep == 0} >= {caller_a.seq_id, caller_b.seq_id}
    assert [seq.request_id for seq in s.waiting] == [2, 3, 4, 5, 12]  # 12 goes first: it is outside the batch
    assert s.preemptions == 2


def test_a_preempted_member_reads_its_output_again_and_resumes_without_sampling_twice() -> None:
    s = scheduler(2)
    s.add(batch_seq(1))
    member = batch_seq(5, n_prompt=3)  # the newest member: the one to give its slot back
    s.add(member)
    plan = s.schedule(0.0)
    assert plan is not None
    for token in (ord("a"), ord("b"), ord("c")):
        s.update_from_output(plan, sample_all(plan, token), 0.0)
        plan = s.schedule(0.0)
        assert plan is not None
    s.update_from_output(plan, sample_all(plan, ord("d")), 0.0)
    # the member holds prompt + "abc" in KV and "d" waits to be fed; now an outside caller comes
    caller = make_seq(10)
    s.add(caller)
    s.schedule(0.0)
    assert member.status.value == "waiting" and member.completion_tokens == [ord(c) for c in "abcd"]
    assert caller.status.value == "running"
    assert member.prefill_tokens == [0, 1, 2, *map(ord, "abc")]
    # the caller finishes; the member resumes: it reads prompt + "abc" without sampling, then feeds "d"
    s.remove(caller)
    plan = s.schedule(0.0)
    assert plan is not None
    chunk = next(c for c in plan.chunks if c.seq is member)
    assert chunk.tokens == member.prefill_tokens and chunk.start_pos == 0 and not chunk.samples
    s.update_from_output(plan, sample_all(plan), 0.0)
    plan = s.schedule(0.0)
    assert plan is not None
    chunk = next(c for c in plan.chunks if c.seq is member)
    assert chunk.tokens == [ord("d")] and chunk.start_pos == 3 + 3 and chunk.samples


def test_two_batches_share_the_slots_half_each() -> None:
    s = scheduler(4)
    for rid in range(4):
        s.add(batch_seq(rid, "a"))
    s.schedule(0.0)
    for rid in range(10, 14):
        s.add(batch_seq(rid, "b"))
    s.schedule(0.0)
    held = [seq.batch_id for seq in s.running.values()]
    assert held.count("a") == 2 and held.count("b") == 2


def test_batch_members_sit_out_the_step_that_reads_another_callers_prompt() -> None:
    s = scheduler(4, batch_tokens=8)
    for rid in range(2):
        s.add(batch_seq(rid))
    plan = s.schedule(0.0)
    assert plan is not None
    s.update_from_output(plan, sample_all(plan), 0.0)
    s.add(make_seq(10, n_prompt=6))
    plan = s.schedule(0.0)
    assert plan is not None and [c.seq.request_id for c in plan.chunks] == [10]  # read alone: its first token
    s.update_from_output(plan, sample_all(plan), 0.0)
    plan = s.schedule(0.0)
    assert plan is not None and sorted(c.seq.request_id for c in plan.chunks) == [0, 1, 10]
    s.add(make_seq(11, n_prompt=20))  # longer than a step's budget: no one sits out for it
    plan = s.schedule(0.0)
    assert plan is not None and {0, 1} <= {c.seq.request_id for c in plan.chunks}


def test_one_caller_takes_one_slot_from_a_batch_not_half() -> None:
    s = scheduler(8)
    for rid in range(8):
        s.add(batch_seq(rid))
    plan = s.schedule(0.0)
    assert plan is not None
    s.update_from_output(plan, sample_all(plan), 0.0)
    caller = make_seq(10)
    s.add(caller)
    s.schedule(0.0)
    assert caller.status.value == "running"
    assert sum(seq.batch_id == "b" for seq in s.running.values()) == 7  # the highest member alone gave way
    assert [seq.request_id for seq in s.waiting] == [7] and s.preemptions == 1


# -- several steps per plan (StepPlan.max_steps: llama.cpp's greedy loop) ------------------------------


def test_max_steps_is_above_one_only_while_every_running_sequence_decodes_and_nobody_waits() -> None:
    s = scheduler(max_sequences=2, batch_tokens=64, mixed=True)
    a, b = make_seq(1, max_new_tokens=10), make_seq(2, max_new_tokens=6)
    s.add(a)
    plan = s.schedule(0.0)
    assert plan is not None and plan.max_steps == 1  # reading its prompt
    s.update_from_output(plan, sample_all(plan), 0.0)
    plan = s.schedule(0.0)
    assert plan is not None and plan.max_steps == 9  # its max_tokens left: 10 - 1
    s.update_from_output(plan, sample_all(plan), 0.0)
    s.add(b)
    plan = s.schedule(0.0)
    assert plan is not None and plan.max_steps == 1  # b's prompt shares the step
    s.update_from_output(plan, sample_all(plan), 0.0)
    plan = s.schedule(0.0)
    assert plan is not None and plan.max_steps == 5  # the fewest left: b's 6 - 1
    s.update_from_output(plan, sample_all(plan), 0.0)
    s.add(make_seq(3))  # no free slot: it waits, so each step goes back to the scheduler
    plan = s.schedule(0.0)
    assert plan is not None and plan.max_steps == 1


def test_tokens_of_later_steps_are_taken_in_order_and_dropped_after_a_finish() -> None:
    """One output holding three steps' tokens: the sequence that meets EOS at the second step finishes
    there (its third token is dropped, uncounted); the other takes all three."""
    s = scheduler(max_sequences=2, batch_tokens=64, mixed=True)
    a, b = make_seq(1), make_seq(2)
    s.add(a)
    s.add(b)
    plan = s.schedule(0.0)
    assert plan is not None
    s.update_from_output(plan, sample_all(plan), 0.0)
    plan = s.schedule(0.0)
    assert plan is not None and plan.max_steps > 3
    steps = [(ord("a"), ord("b")), (EOS, ord("c")), (ord("z"), ord("d"))]
    output = StepOutput(sampled=[(seq, t) for tokens in steps for seq, t in zip((a, b), tokens, strict=True)], steps=3)
    events = s.update_from_output(plan, output, 0.0)
    assert texts(events) == [(1, "a"), (2, "b"), (2, "c"), (2, "d")]
    assert finished(events) == [1] and a.completion_tokens == [ord("x"), ord("a"), EOS]
    assert b.completion_tokens == [ord("x"), ord("b"), ord("c"), ord("d")]
    assert s.tokens_generated == 2 + 2 + 3 and list(s.running.values()) == [b]


def test_a_failure_at_a_later_step_after_a_finish_is_not_reported_twice() -> None:
    s = scheduler(max_sequences=1, batch_tokens=64, mixed=True)
    a = make_seq(1)
    s.add(a)
    plan = s.schedule(0.0)
    assert plan is not None
    s.update_from_output(plan, sample_all(plan), 0.0)
    plan = s.schedule(0.0)
    assert plan is not None
    output = StepOutput(sampled=[(a, EOS)], failed=[(a, EngineFailure("non-finite"))], steps=2)
    events = s.update_from_output(plan, output, 0.0)
    assert finished(events) == [1] and failed(events) == [] and not s.running
