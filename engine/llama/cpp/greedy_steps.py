"""Greedy decode steps run inside llama.cpp (scripts/llama_cpp_patches/steps.patch), several per call.

Between two decodes the core's Python (plan, batch, sampling, hand-over) takes ~0.2 ms at one sequence
while llama.cpp's threads spin: ~2-3% of a step on 2 cores, the gap to stock llama-server
(docs/throughput_vs_llama_server.md). When every chunk of a step is a sequence decoding one token and
every one of them takes the plain argmax (no constraint, penalties, log-probabilities or draw), the next
steps need nothing from Python: llama.cpp decodes, takes each row's first maximum (numpy's argmax),
bans or stops at end-of-generation tokens as the sampler would, and feeds the tokens back. Same decodes,
same tokens; the scheduler then takes them step by step (StepOutput.sampled).

The loop returns after `budget_s` (text reaches clients in bursts of that length at most), at a row's
end-of-generation token, at the plan's `max_steps` (no sequence passes its max_tokens) or as soon as a
command waits: `interrupt()` (from the thread that queues commands) is read between steps, so arrivals
and aborts wait one step at most, as they do without the loop.
"""

from __future__ import annotations

import ctypes
from collections.abc import Collection, Sequence

import llama_cpp

from engine.llama.cpp import patch as llama_patch
from engine.llama.scheduling.step import MAX_STEPS


def available() -> bool:
    return llama_patch.decode_argmax_steps is not None


class GreedySteps:
    def __init__(self, rows: int, eog_tokens: Collection[int], budget_s: float) -> None:
        self._out = (ctypes.c_int32 * (rows * MAX_STEPS))()  # [step][row]
        eog = sorted(eog_tokens)
        self._eog = (ctypes.c_int32 * max(1, len(eog)))(*eog)
        self._n_eog = len(eog)
        self._ban = (ctypes.c_int8 * rows)()
        self._interrupt = ctypes.c_int32(0)
        self._decoded = ctypes.c_int32(0)
        self._sampled = ctypes.c_int32(0)
        self._budget_us = round(budget_s * 1e6)

    def interrupt(self) -> None:
        """Any thread: a loop under way returns after its current step (the next one, if none is)."""
        self._interrupt.value = 1

    def run(
        self, ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch, bans: Sequence[bool], max_steps: int
    ) -> tuple[int, int, list[list[int]]]:
        """Decode `batch` (row r: a decoding sequence's token, logits wanted; `bans[r]`: it never takes an
        end-of-generation token) and up to `max_steps - 1` more steps. Returns llama_decode's error (or
        0), the decodes done, and each sampled step's tokens by row: one step fewer than decoded when a
        row's last logits had no finite maximum (then still in place for the row's own sampler)."""
        n = len(bans)
        for row, ban in enumerate(bans):
            self._ban[row] = ban
        rc = llama_patch.decode_argmax_steps(
            ctx, batch, min(max_steps, MAX_STEPS), self._budget_us, self._eog, self._n_eog, self._ban,
            ctypes.byref(self._interrupt), self._out, ctypes.byref(self._decoded), ctypes.byref(self._sampled),
        )  # fmt: skip
        # Cleared after the loop, not before: a command queued since is handled before the next step
        # anyway, and one queued during the loop has stopped it.
        self._interrupt.value = 0
        out = self._out
        return rc, self._decoded.value, [out[s * n : (s + 1) * n] for s in range(self._sampled.value)]
