from __future__ import annotations

from engine.request import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from tests.fake_backend import FakeSampler


def make_seq(rid: int, n_prompt: int = 4, key: tuple = ()) -> Sequence:
    return Sequence(
        request_id=rid,
        prompt_tokens=list(range(n_prompt)),
        sampling=SamplingParams(),
        adapter_key=key,
        sampler=FakeSampler(b"x"),
        max_new_tokens=10,
        submitted_at=0.0,
        deadline=1e9,
    )


def test_new_request_joins_running_ones_at_the_next_step() -> None:
    s = Scheduler(max_sequences=4, batch_tokens=64)
    a = make_seq(1)
    s.add(a)
    plan = s.schedule(0.0)
    assert plan is not None and [(c.seq, len(c.tokens), c.samples) for c in plan.chunks] == [(a, 4, True)]
    a.num_prefilled = 4
    a.completion_tokens.append(7)
    b = make_seq(2, n_prompt=3)
    s.add(b)
    plan = s.schedule(0.0)
    assert plan is not None
    # a's next token and b's whole prompt in one step
    assert [(c.seq.request_id, c.tokens, c.start_pos) for c in plan.chunks] == [(1, [7], 4), (2, [0, 1, 2], 0)]


def test_long_prompts_are_chunked_by_the_token_budget() -> None:
    s = Scheduler(max_sequences=2, batch_tokens=16)
    a = make_seq(1, n_prompt=40)
    s.add(a)
    sizes = []
    for _ in range(3):
        plan = s.schedule(0.0)
        assert plan is not None
        (chunk,) = plan.chunks
        sizes.append((len(chunk.tokens), chunk.start_pos, chunk.samples))
        a.num_prefilled += len(chunk.tokens)
    assert sizes == [(16, 0, False), (16, 16, False), (8, 32, True)]


def test_waiting_requests_are_admitted_when_a_slot_frees_with_lowest_seq_id() -> None:
    s = Scheduler(max_sequences=2, batch_tokens=64)
    seqs = [make_seq(i) for i in range(1, 4)]
    for q in seqs:
        s.add(q)
    s.schedule(0.0)
    assert [q.seq_id for q in seqs] == [0, 1, -1] and len(s.waiting) == 1
    s.remove(seqs[0])
    s.schedule(1.0)
    assert seqs[2].seq_id == 0 and seqs[2].admitted_at == 1.0


def test_chunks_are_sorted_by_seq_id() -> None:
    s = Scheduler(max_sequences=4, batch_tokens=64)
    seqs = [make_seq(i) for i in range(1, 5)]
    for q in seqs:
        s.add(q)
    plan = s.schedule(0.0)
    assert plan is not None
    assert [c.seq.seq_id for c in plan.chunks] == [0, 1, 2, 3]


def run_steps(s: Scheduler, n: int) -> list[tuple]:
    """Schedule n steps, pretending each sampled sequence got a token."""
    keys = []
    for _ in range(n):
        plan = s.schedule(0.0)
        assert plan is not None
        assert all(c.seq.adapter_key == plan.adapter_key for c in plan.chunks)
        keys.append(plan.adapter_key)
        for c in plan.chunks:
            if c.seq.is_prefilling:
                c.seq.num_prefilled += len(c.tokens)
            if c.samples:
                c.seq.completion_tokens.append(1)
    return keys


A = (("a", 1.0),)
B = (("b", 1.0),)


def test_adapter_groups_take_turns_by_quantum() -> None:
    s = Scheduler(max_sequences=4, batch_tokens=64, group_quantum=2)
    s.add(make_seq(1, key=()))
    s.add(make_seq(2, key=A))
    # the second group gets one step at once for its first token; then turns of two steps
    assert run_steps(s, 7) == [(), A, (), A, A, (), ()]


def test_a_group_waiting_for_its_first_token_is_served_next() -> None:
    s = Scheduler(max_sequences=4, batch_tokens=64, group_quantum=8)
    s.add(make_seq(1, key=()))
    assert run_steps(s, 3) == [(), (), ()]
    s.add(make_seq(2, key=A))
    s.add(make_seq(3, key=B))
    assert run_steps(s, 4) == [A, B, (), ()]


def test_holes_left_by_finished_sequences_are_closed_by_moving_the_highest() -> None:
    s = Scheduler(max_sequences=4, batch_tokens=64)
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
    s = Scheduler(max_sequences=3, batch_tokens=64)
    seqs = [make_seq(i) for i in range(1, 4)]
    for q in seqs:
        s.add(q)
    s.schedule(0.0)
    s.remove(seqs[0])
    plan = s.schedule(0.0)
    assert plan is not None and plan.moves == []  # ids 1, 2 are consecutive already


def test_a_waiting_request_fills_a_hole_without_a_move() -> None:
    s = Scheduler(max_sequences=3, batch_tokens=64)
    seqs = [make_seq(i) for i in range(1, 5)]
    for q in seqs:
        s.add(q)
    s.schedule(0.0)
    s.remove(seqs[0])
    plan = s.schedule(0.0)
    assert plan is not None and plan.moves == [] and seqs[3].seq_id == 0


def test_admitted_requests_get_consecutive_seq_ids_per_adapter_group() -> None:
    s = Scheduler(max_sequences=6, batch_tokens=64)
    for i, key in enumerate([A, B, A, B], start=1):
        s.add(make_seq(i, key=key))
    s.schedule(0.0)
    ids = {key: sorted(i for i, q in s.running.items() if q.adapter_key == key) for key in (A, B)}
    assert ids == {A: [0, 1], B: [2, 3]}


def test_a_newcomer_takes_a_free_id_next_to_its_group() -> None:
    s = Scheduler(max_sequences=6, batch_tokens=64)
    seqs = [make_seq(i, key=key) for i, key in enumerate([A, A, B, B, B], start=1)]
    for q in seqs:
        s.add(q)
    s.schedule(0.0)  # A: 0, 1; B: 2, 3, 4; free: 5
    s.remove(seqs[0])  # free: 0, 5
    s.add(make_seq(9, key=B))
    s.schedule(0.0)
    assert s.running[5].request_id == 9  # next to B's 4, not the lowest free id 0
