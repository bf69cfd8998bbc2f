"""Forms each decode step from the running requests: the scheduler's decisions are plain data.

A step serves one adapter group (llama.cpp applies one adapter set per decode). Within it, every
running sequence that is past its prompt contributes its last sampled token, then prompts of newly
admitted sequences fill the prompt-token budget (long prompts are prefilled in chunks over several
steps, so running sequences keep generating). A request arriving while others generate is admitted
at the next step: there is no draining and no time window.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from engine.request import AdapterKey
from engine.sequence import SeqStatus, Sequence


@dataclass(slots=True)
class Chunk:
    """Tokens of one sequence in one step, at positions start_pos, start_pos+1, …"""

    seq: Sequence
    tokens: list[int]
    start_pos: int
    samples: bool  # the step's logits at this chunk's last token are sampled


@dataclass(slots=True)
class StepPlan:
    adapter_key: AdapterKey
    chunks: list[Chunk]  # sorted by seq_id: llama.cpp only co-batches increasing sequence ids
    moves: list[tuple[int, int]] = field(default_factory=list)  # (from, to) seq ids, applied before decoding

    @property
    def num_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)


class Scheduler:
    def __init__(self, *, max_sequences: int, batch_tokens: int, group_quantum: int = 4) -> None:
        self.batch_tokens = batch_tokens
        self.group_quantum = group_quantum  # steps a group keeps the context before another group's turn
        self.waiting: deque[Sequence] = deque()
        self.running: dict[int, Sequence] = {}
        self._free_seq_ids = list(range(max_sequences))  # a heap: lowest id first keeps ids contiguous
        self._group_order: list[AdapterKey] = []  # round-robin order of adapter groups
        self._current_group: AdapterKey | None = None
        self._steps_on_group = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a finished or aborted sequence out; its seq id is free for the next admission."""
        if seq.status is SeqStatus.WAITING or seq.seq_id < 0:
            self.waiting.remove(seq)
            return
        del self.running[seq.seq_id]
        heapq.heappush(self._free_seq_ids, seq.seq_id)

    def schedule(self, now: float) -> StepPlan | None:
        self._admit(now)
        if not self.running:
            return None
        moves = self._compact()
        key = self._choose_group()
        members = sorted((s for s in self.running.values() if s.adapter_key == key), key=lambda s: s.seq_id)
        chunks: list[Chunk] = []
        for seq in members:
            if not seq.is_prefilling:
                chunks.append(Chunk(seq, [seq.completion_tokens[-1]], seq.next_decode_position, True))
        budget = self.batch_tokens  # for prompt tokens; decode tokens always fit (one per sequence)
        for seq in members:
            if seq.is_prefilling and budget > 0:
                start = seq.num_prefilled
                n = min(budget, seq.num_prompt_tokens - start)
                chunks.append(
                    Chunk(seq, seq.prompt_tokens[start : start + n], start, start + n == seq.num_prompt_tokens)
                )
                budget -= n
        chunks.sort(key=lambda c: c.seq.seq_id)
        return StepPlan(key, chunks, moves)

    def _admit(self, now: float) -> None:
        while self.waiting and self._free_seq_ids:
            seq = self.waiting.popleft()
            seq.seq_id = heapq.heappop(self._free_seq_ids)
            seq.status = SeqStatus.RUNNING
            seq.admitted_at = now
            self.running[seq.seq_id] = seq

    def _compact(self) -> list[tuple[int, int]]:
        """Keep running seq ids contiguous from 0 by moving the highest ones into holes.

        With one KV stream per sequence, llama.cpp puts a sequence in the same micro-batch as the
        previous one only if its id is exactly one higher: running ids {0, 2, 3, 5} would cost three
        passes over the weights per step instead of one. Admissions fill holes first (free); a move
        copies one sequence's KV stream (a few ms) and is paid once, the split would be paid every step.
        """
        moves = []
        while self._free_seq_ids and self.running:
            hole, top = self._free_seq_ids[0], max(self.running)
            if hole > top:
                break
            heapq.heapreplace(self._free_seq_ids, top)
            seq = self.running.pop(top)
            seq.seq_id = hole
            self.running[hole] = seq
            moves.append((top, hole))
        return moves

    def _choose_group(self) -> AdapterKey:
        """Which adapter group this step serves.

        Groups take turns, `group_quantum` steps each, so none starves and the cost of changing the
        context's adapter set (llama.cpp re-reserves its graph, ~5 ms) is paid once per turn. A group
        with a request still waiting for its first token gets the next step out of turn: time to first
        token is what an agent waits on, and such a request needs one step (its prefill).
        """
        running = self.running.values()
        live = {s.adapter_key for s in running}
        self._group_order = [k for k in self._group_order if k in live]
        self._group_order += sorted(live.difference(self._group_order))
        current = self._current_group
        if current in live:
            waiting_first = {s.adapter_key for s in running if not s.has_first_token}
            if current not in waiting_first:
                for key in self._group_order:
                    if key in waiting_first:
                        return key  # one step out of turn; the rotation resumes where it was
            if self._steps_on_group < self.group_quantum or len(live) == 1:
                self._steps_on_group += 1
                return current  # type: ignore[return-value]
            i = self._group_order.index(current)  # type: ignore[arg-type]
            return self._switch_to(self._group_order[(i + 1) % len(self._group_order)])
        return self._switch_to(self._group_order[0])

    def _switch_to(self, key: AdapterKey) -> AdapterKey:
        self._current_group = key
        self._steps_on_group = 1
        return key
