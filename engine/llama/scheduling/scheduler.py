"""Forms each decode step from the running requests, and takes back what the step produced.

`schedule()` returns a StepPlan (plain data): one group of sequences (all of them where the runner
gives each sequence its own adapter set; else one adapter set per step, taking turns); every member past
its prompt contributes its last sampled token, then prompts of newly admitted sequences fill the
prompt-token budget (long prompts are prefilled in chunks over several steps, so running sequences keep
generating). A request arriving while others generate is admitted at the next step: there is no
draining and no time window.

`update_from_output()` applies the runner's StepOutput (prefill progress, accepted tokens and the text
they make, finishes, the slots they free) and returns what the core publishes: a RequestOutput per new
text, a RequestFinished or RequestFailed per request that ended.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque

from engine.info import ModelInfo
from engine.llama.commands import Event, RequestFailed, RequestFinished, RequestOutput
from engine.llama.scheduling.prefix_cache import PrefixCache, Reuse
from engine.llama.scheduling.sequence import SeqStatus, Sequence
from engine.llama.scheduling.step import MAX_STEPS, Chunk, StepOutput, StepPlan
from engine.llama.vocab import Vocab
from engine.request import AdapterKey
from engine.result import TextDelta


class Scheduler:
    def __init__(
        self,
        vocab: Vocab,
        model: ModelInfo,
        *,
        max_sequences: int,
        batch_tokens: int,
        group_quantum: int = 8,
        prefix_cache_cells: int = 0,
        mixed_adapters: bool = False,
    ) -> None:
        self._vocab = vocab
        self._model = model  # what results' receipts name
        self.prompt_tokens_read = 0  # prompt tokens added to the context, over all steps
        self.preemptions = 0  # batch members that gave their slot back to requests from outside the batch
        self.tokens_generated = 0  # sampled tokens accepted, over all steps (not those after a request ended)
        self.prefix_cache = PrefixCache(prefix_cache_cells)
        self.max_sequences = max_sequences
        self.batch_tokens = batch_tokens
        self.group_quantum = group_quantum  # steps a group keeps the context before another group's turn
        self.mixed_adapters = mixed_adapters  # one decode serves every adapter set: a single group
        self.waiting: deque[Sequence] = deque()
        self.running: dict[int, Sequence] = {}  # seq id → sequence
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
        if seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
            return
        del self.running[seq.seq_id]
        heapq.heappush(self._free_seq_ids, seq.seq_id)

    # -- one step ---------------------------------------------------------------------------------------

    def schedule(self, now: float) -> StepPlan | None:
        reuses = self._admit(now)
        if not self.running:
            return None
        moves = self._compact()
        key = self._choose_group()
        members = [s for s in self.running.values() if self._group(s) == key]
        if any(self._first_read(s) for s in members):
            # Batch members sit this step out: another caller's prompt is read alone with the other
            # callers' decoding, so its first token comes as soon as on an idle engine would allow (a
            # CPU step costs in proportion to its rows). Skipping a step changes no member's output.
            members = [s for s in members if s.batch_id is None]
        chunks: list[Chunk] = []
        for seq in members:
            if not seq.is_prefilling:
                chunks.append(Chunk(seq, [seq.completion_tokens[-1]], seq.next_decode_position, True))
        budget = self.batch_tokens  # for prompt tokens; decode tokens always fit (one per sequence)
        for seq in members:
            if seq.is_prefilling and budget > 0:
                start = seq.num_prefilled
                tokens = seq.prefill_tokens
                n = min(budget, len(tokens) - start)
                samples = start + n == len(tokens) and seq.samples_after_prefill
                chunks.append(Chunk(seq, tokens[start : start + n], start, samples))
                budget -= n
        chunks.sort(key=lambda c: c.seq.seq_id)
        return StepPlan(chunks, moves, reuses, self._max_steps(members))

    def _max_steps(self, members: list[Sequence]) -> int:
        """Steps the runner may take without the scheduler: while every running sequence is decoding
        and nobody waits, the next plans would be this one again, each token fed back; no member may
        pass its max_tokens (or its context: max_new_tokens is clamped to it)."""
        if self.waiting or len(members) != len(self.running) or any(s.is_prefilling for s in members):
            return 1
        return min(MAX_STEPS, *(s.max_new_tokens - len(s.completion_tokens) for s in members))

    def update_from_output(self, plan: StepPlan, output: StepOutput, now: float) -> list[Event]:
        """Apply the step's output; return the events the core publishes, in order (a request's text
        before its end). Ended requests have left the scheduler; the core frees what they hold."""
        events: list[Event] = []
        failed = {seq.request_id for seq, _ in output.failed}
        for chunk in plan.chunks:
            seq = chunk.seq
            if seq.request_id not in failed and seq.is_prefilling:
                seq.num_prefilled += len(chunk.tokens)
                self.prompt_tokens_read += len(chunk.tokens)
        for seq, scores in output.prompt_scores:
            seq.add_prompt_scores(scores, self._vocab)
        for seq, token in output.sampled:
            if seq.is_finished:  # a later step's token (StepPlan.max_steps) after it ended: never emitted
                continue
            text = seq.accept(token, self._vocab, now)
            self.tokens_generated += 1
            logprob = seq.add_scores(output.sampled_scores.get(seq.request_id), self._vocab)
            # the prompt's scores (complete: its last chunk and the first sample share a step) go with the first delta
            prompt = tuple(seq.prompt_token_logprobs) if len(seq.completion_tokens) == 1 else ()
            if text or logprob or prompt:
                logprobs = (logprob,) if logprob else ()
                delta = TextDelta(text, len(seq.completion_tokens), now, (), logprobs, prompt)
                events.append(RequestOutput(seq.request_id, delta))
            if seq.is_finished:
                self.remove(seq)
                events.append(RequestFinished(seq.request_id, seq.result(self._model)))
        for seq, error in output.failed:
            if seq.is_finished:  # it ended at an earlier step of this output
                continue
            self.remove(seq)
            events.append(RequestFailed(seq.request_id, error))
        return events

    # -- admission and sequence ids ---------------------------------------------------------------------

    def _admit(self, now: float) -> list[Reuse]:
        reuses = self._preempt_for_others()
        admitted = self._admissible() if self._free_seq_ids else []
        if not admitted:
            return reuses
        for seq in admitted:
            self.waiting.remove(seq)
        # Seq ids of one group should be consecutive, since a step serves one group and llama.cpp
        # co-batches only consecutive ids (see _compact): hand out ids group by group. Within a group,
        # sequences with the same adapter set go next to each other where they can: when sets mix, the
        # patched llama.cpp computes an adapter on only its own tokens' rows if they form one or two runs.
        turn = {key: i for i, key in enumerate(self._group_order)}
        admitted.sort(key=lambda s: (turn.get(self._group(s), len(turn)), self._group(s), s.adapter_key))
        for seq in admitted:
            seq.seq_id = self._take_seq_id(self._group(seq), seq.adapter_key)
            seq.status = SeqStatus.RUNNING
            if seq.admitted_at is None:  # a resumed sequence keeps its first admission (queue time, age)
                seq.admitted_at = now
            self.running[seq.seq_id] = seq
            # a request scoring its prompt reads all of it: every row's logits are wanted
            reuse = self.prefix_cache.admit(
                seq.seq_id, seq.adapter_key, seq.prefill_tokens, reuse=not seq.prompt_logprobs
            )
            seq.num_prefilled = reuse.keep  # its prefill starts after the shared prefix
            reuses.append(reuse)
        return reuses

    # -- batches: at most half the slots while others wait --------------------------------------------------

    def _first_read(self, seq: Sequence) -> bool:
        """A request from outside any batch that reads all (the rest of) its prompt this step: its first token."""
        return (
            seq.batch_id is None
            and not seq.has_first_token
            and 0 < len(seq.prefill_tokens) - seq.num_prefilled <= self.batch_tokens
        )

    def _admissible(self) -> list[Sequence]:
        """Who takes the free slots: requests outside batches first, then batch members (oldest first),
        each batch up to its share."""
        free = len(self._free_seq_ids)
        held = Counter(s.batch_id for s in self.running.values() if s.batch_id is not None)
        shares = {b: self._share(b) for b in {s.batch_id for s in self.waiting if s.batch_id is not None}}
        chosen: list[Sequence] = []
        for seq in sorted(self.waiting, key=lambda s: s.batch_id is not None):  # stable: FIFO within each
            if len(chosen) == free:
                break
            if seq.batch_id is not None:
                if held[seq.batch_id] >= shares[seq.batch_id]:
                    continue
                held[seq.batch_id] += 1
            chosen.append(seq)
        return chosen

    def _share(self, batch_id: str) -> int:
        """The slots a batch may hold: all of them, or half while requests from outside it wait."""
        if any(s.batch_id != batch_id for s in self.waiting):
            return max(1, self.max_sequences // 2)
        return self.max_sequences

    def _preempt_for_others(self) -> list[Reuse]:
        """A batch holding more than its share while others wait and find no free slot gives back as many
        slots as they need, down to its share (half the slots) at most: one caller does not make half the
        batch read its output again. Its members in the highest slots give them back (the others stay
        contiguous, so nothing moves, and newcomers take the lowest free ids) and wait first among the
        batch. Their KV stays in the prefix cache where the budget allows it, so a newcomer with the same
        start (a chat template's system prompt) reuses it, and a member resuming in the slot that kept
        its KV reads only its last token; what cannot be kept is cleared (the returned reuses). Exact: the
        member's sampler lives on, and reading tokens again gives the KV that decoding them gave (the
        kernels are batch-invariant)."""
        clears: list[Reuse] = []
        if not self.waiting:  # the common case, every step: nobody waits
            return clears
        for batch_id in sorted({s.batch_id for s in self.running.values() if s.batch_id is not None}):
            short = sum(s.batch_id != batch_id for s in self.waiting) - len(self._free_seq_ids)
            if short <= 0:
                continue  # they all find a slot as it is
            members = [s for s in self.running.values() if s.batch_id == batch_id and not s.prompt_logprobs]
            members.sort(key=lambda s: s.seq_id, reverse=True)
            for seq in members[: min(short, len(members) - self._share(batch_id))]:
                if not self.prefix_cache.keep(seq.seq_id, seq.adapter_key, seq.held_tokens()):
                    clears.append(Reuse(None, seq.seq_id, 0))
                self._preempt(seq)
        return clears

    def _preempt(self, seq: Sequence) -> None:
        slot = seq.seq_id
        del self.running[slot]
        heapq.heappush(self._free_seq_ids, slot)
        seq.preempt()
        self.waiting.appendleft(seq)  # first among its batch's members when slots free up
        self.preemptions += 1

    def _take_seq_id(self, key: AdapterKey, adapter_key: AdapterKey) -> int:
        """A free id next to a running member of the same group if there is one (one with the same
        adapter set first), else the lowest free id."""
        free = self._free_seq_ids
        members = sorted(self._ids_of(key), key=lambda i: self.running[i].adapter_key != adapter_key)
        for member in members:
            for candidate in (member + 1, member - 1):
                if candidate in free:
                    free.remove(candidate)
                    heapq.heapify(free)
                    return candidate
        return heapq.heappop(free)

    def _group(self, seq: Sequence) -> AdapterKey:
        """The group a sequence decodes with: its adapter set, or one for all when sets mix."""
        return () if self.mixed_adapters else seq.adapter_key

    def _ids_of(self, key: AdapterKey) -> list[int]:
        return sorted(i for i, s in self.running.items() if self._group(s) == key)

    def _compact(self) -> list[tuple[int, int]]:
        """Keep each adapter group's seq ids consecutive, moving sequences' state where needed.

        With one KV stream per sequence, llama.cpp puts a sequence in the same micro-batch as the
        previous one only if its id is exactly one higher, and a step serves one group: a group at ids
        {0, 2, 3, 5} costs three passes over the weights per step instead of one. Only gaps inside a
        group's range matter (ids need not start at 0). A gap is either a free id, which the group's
        highest member moves into, or another group's member, which first moves out to a free id
        (next to its own group when possible). Each move shrinks the group's range, so this ends; a move
        copies one sequence's state once (a few ms), where a split group would cost every step.
        """
        moves: list[tuple[int, int]] = []
        for _ in range(self.max_sequences):  # passes: an eviction may split the evicted member's group
            moved = len(moves)
            keys = {self._group(s) for s in self.running.values()}
            for key in sorted(keys, key=lambda k: self._ids_of(k)[0]):
                while True:
                    ids = self._ids_of(key)
                    if ids[-1] - ids[0] + 1 == len(ids):
                        break
                    inside = range(ids[0] + 1, ids[-1])
                    hole = next((i for i in inside if i not in self.running), None)
                    if hole is None:
                        outsider = next(i for i in inside if self._group(self.running[i]) != key)
                        target = self._eviction_target(self._group(self.running[outsider]))
                        if target is None:
                            break  # every slot is taken: wait for a request to finish
                        self._move(outsider, target, moves)
                        hole = outsider
                    self._move(ids[-1], hole, moves)
            if len(moves) == moved:
                break
        return moves

    def _eviction_target(self, key: AdapterKey) -> int | None:
        free = self._free_seq_ids
        if not free:
            return None
        for member in self._ids_of(key):
            for candidate in (member + 1, member - 1):
                if candidate in free:
                    return candidate
        return min(free)

    def _move(self, src: int, dst: int, moves: list[tuple[int, int]]) -> None:
        self.prefix_cache.forget(dst)  # a warm free slot: the move overwrites it
        self._free_seq_ids.remove(dst)
        self._free_seq_ids.append(src)
        heapq.heapify(self._free_seq_ids)
        seq = self.running.pop(src)
        seq.seq_id = dst
        self.running[dst] = seq
        moves.append((src, dst))

    # -- adapter group turns ----------------------------------------------------------------------------

    def _choose_group(self) -> AdapterKey:
        """Which adapter group this step serves.

        Groups take turns, `group_quantum` steps each, so none starves and the cost of changing the
        context's adapter set (llama.cpp re-reserves its graph, ~5 ms) is paid once per turn. A group
        with a request still waiting for its first token gets the next step out of turn: time to first
        token is what an agent waits on, and such a request needs one step (its prefill).
        """
        running = self.running.values()
        live = {self._group(s) for s in running}
        self._group_order = [k for k in self._group_order if k in live]
        self._group_order += sorted(live.difference(self._group_order))
        current = self._current_group
        if current in live:
            waiting_first = {self._group(s) for s in running if not s.has_first_token}
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
