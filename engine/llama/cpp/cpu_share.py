"""How many llama.cpp threads to use now, given what the rest of the machine is doing.

llama.cpp's threads meet at a spinning barrier several times per decode step, so one of them taken off
its core by another process stalls all of them: on 2 cores with one busy neighbour, 2 threads ran a
128-token call 2.9-3.6x slower than on an idle machine, while 1 thread ran it at the same speed
(docs/reliability.md). So the thread count follows the cores other processes leave free: every
SAMPLE_S of decoding the governor reads the machine's busy CPU time (/proc/stat) minus this process's own
(os.times), and uses about that many free cores, between 1 and the configured maximum. An idle
machine gets every configured thread. Fewer threads only once DROP_AFTER samples in a row ask for it: a
client's quarter-second burst (8 requests arriving at once) is not a neighbour, and dropping to one
thread for it doubled the time to first token p99 at 8 clients (553 vs 319 ms with fixed threads). More
threads apply at once. Where /proc/stat is missing (not Linux), the count stays fixed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

SAMPLE_S = 0.25  # how often the neighbours' load is measured (reading /proc/stat costs microseconds)
STALE_S = 1.0  # a window longer than this (the engine was idle) says nothing about now: start afresh
DROP_AFTER = 2  # consecutive samples that must ask for fewer threads before the count drops
PROC_STAT = Path("/proc/stat")


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy (not idle or waiting for I/O), or None if unknown."""
    try:
        with PROC_STAT.open() as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    ticks = [int(v) for v in fields[1:]]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def own_busy_seconds() -> float:
    t = os.times()
    return t.user + t.system


class ThreadGovernor:
    def __init__(
        self,
        max_threads: int,
        *,
        cores: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        machine_busy: Callable[[], float | None] = machine_busy_seconds,
        own_busy: Callable[[], float] = own_busy_seconds,
    ) -> None:
        self.max_threads = max_threads
        self.threads = max_threads
        self._cores = cores or os.cpu_count() or 1
        self._clock, self._machine_busy, self._own_busy = clock, machine_busy, own_busy
        self._last = self._sample()
        self._asks_fewer: list[int] = []  # consecutive samples' counts below the current one

    def _sample(self) -> tuple[float, float, float] | None:
        machine = self._machine_busy()
        return None if machine is None else (self._clock(), machine, self._own_busy())

    def update(self) -> int:
        """The thread count to use for the next step (re-measured at most every SAMPLE_S)."""
        if self._last is None or self._clock() - self._last[0] < SAMPLE_S:
            return self.threads
        now = self._sample()
        assert now is not None
        elapsed = now[0] - self._last[0]
        if elapsed > STALE_S:  # back from idle: assume a free machine until the next sample says otherwise
            self._last, self.threads, self._asks_fewer = now, self.max_threads, []
            return self.threads
        others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / elapsed
        self._last = now
        free = self._cores - others
        # Nearest whole core: a client's or a shell's half core does not cost a thread; a neighbour that
        # fights our threads for a core (and so gets less than all of it) does.
        wanted = max(1, min(self.max_threads, math.floor(free + 0.5)))
        if wanted >= self.threads:
            self.threads, self._asks_fewer = wanted, []
        else:
            self._asks_fewer.append(wanted)
            if len(self._asks_fewer) >= DROP_AFTER:  # a lasting neighbour: the milder of the recent asks
                self.threads, self._asks_fewer = max(self._asks_fewer), []
        return self.threads
